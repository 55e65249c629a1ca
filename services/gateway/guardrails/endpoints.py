"""/v1/guardrails: the tenant's blocked terms and what screens its inputs."""

from __future__ import annotations

from fastapi import APIRouter
from sqlalchemy import update

from services.gateway.deps import SessionDep, SettingsDep, TenantDep
from services.gateway.guardrails import screen
from services.gateway.guardrails.schemas import BlockedTerms, GuardrailsRead
from shared import guardrails, key_cache
from shared.config import Settings
from shared.db.models import Tenant

router = APIRouter(prefix="/v1/guardrails", tags=["guardrails"])


def _read(terms: list[str], settings: Settings) -> GuardrailsRead:
    return GuardrailsRead(
        blocked_terms=terms,
        global_terms=len(guardrails.terms_for(settings, ())),
        text_backend=settings.guardrails_text_backend,
        image_backend=settings.guardrails_image_backend,
        on_error={"text": settings.guardrails_text_on_error, "images": settings.guardrails_image_on_error},
    )


@router.get("", response_model=GuardrailsRead)
def get_guardrails(session: SessionDep, tenant_id: TenantDep, settings: SettingsDep) -> GuardrailsRead:
    return _read(screen.tenant_terms(session, tenant_id), settings)


@router.put("/blocked-terms", response_model=GuardrailsRead)
def put_blocked_terms(
    body: BlockedTerms, session: SessionDep, tenant_id: TenantDep, settings: SettingsDep
) -> GuardrailsRead:
    """Replace the tenant's blocked terms (they apply from the next request on; stored inputs are not re-screened)."""
    terms = list(dict.fromkeys(body.blocked_terms))
    session.execute(update(Tenant).where(Tenant.id == tenant_id).values(blocked_terms=terms))
    key_cache.announce_change(session)  # gateways cache the terms (campaigns/tenant_config.py): re-read them
    return _read(terms, settings)
