"""The gateway's side of the input guardrails: the tenant's terms, the refusal as problem+json, the log line."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.gateway.errors import ProblemError
from shared import guardrails
from shared.config import Settings, get_settings
from shared.db.models import Tenant
from shared.schemas import AssetMetadata

log = logging.getLogger(__name__)
T = TypeVar("T")


def tenant_terms(session: Session, tenant_id: uuid.UUID) -> list[str]:
    terms = session.scalar(select(Tenant.blocked_terms).where(Tenant.id == tenant_id))
    return [str(t) for t in terms or []]


def refused(tenant_id: uuid.UUID, resource: str, finding: guardrails.Finding) -> ProblemError:
    # Logged with what matched, so an operator can review refusals; the input itself is not logged.
    log.warning(
        "input refused",
        extra={
            "tenant_id": str(tenant_id),
            "resource": resource,
            "field": finding.field,
            "category": finding.category,
            "source": finding.source,
        },
    )
    extra: dict[str, Any] = {"category": finding.category, "field": finding.field, "source": finding.source}
    if finding.term is not None:
        extra["term"] = finding.term
    return ProblemError(
        422,
        "input_refused",
        "Input refused",
        f"The {resource}'s {finding.field} was refused by the input guardrails ({finding.category}).",
        extra=extra,
    )


def unavailable(exc: guardrails.ModerationUnavailable) -> ProblemError:
    log.warning("moderation unavailable, failing closed", extra={"backend": exc.backend, "reason": exc.reason})
    return ProblemError(
        503,
        "moderation_unavailable",
        "Moderation unavailable",
        f"The content moderation service ({exc.backend}) did not answer ({exc.reason}); nothing was stored, retry.",
        headers={"Retry-After": "10"},
        extra={"backend": exc.backend},
    )


def _guarded(tenant_id: uuid.UUID, resource: str, screen: Callable[[], T]) -> T:
    try:
        return screen()
    except guardrails.InputRefused as exc:
        raise refused(tenant_id, resource, exc.finding) from None
    except guardrails.ModerationUnavailable as exc:
        raise unavailable(exc) from None


def text(
    session: Session,
    settings: Settings,
    tenant_id: uuid.UUID,
    resource: str,
    fields: Mapping[str, str],
    terms: Sequence[str] | None = None,
) -> str:
    """Screen the fields (422 input_refused, or 503 when a closed backend fails); what screened them. terms: the
    tenant's blocked terms when the caller has them (else read here)."""
    blocked = list(terms) if terms is not None else tenant_terms(session, tenant_id)
    return _guarded(tenant_id, resource, lambda: guardrails.screen_text(fields, settings, blocked))


def image(settings: Settings, tenant_id: uuid.UUID, data: bytes) -> str:
    return _guarded(tenant_id, "asset", lambda: guardrails.screen_image(data, settings))


def record(text_screen: str, image_screen: str) -> dict[str, str]:
    """The `screening` stored on a campaign or asset and shown in the API."""
    return {"text": text_screen, "images": image_screen}


# A campaign's images are its product and library assets, each screened when it was uploaded.
CAMPAIGN_IMAGES = "screened at upload: see each asset's screening"


def with_settings(settings: Settings | None) -> Settings:
    """The request's settings, or the process's for callers outside a request."""
    return settings or get_settings()


def campaign(
    settings: Settings,
    tenant_id: uuid.UUID,
    brief: str,
    labels: list[str],
    copy: Mapping[str, str] | None,
    terms: Sequence[str],
) -> dict[str, str]:
    """A new campaign's brief, safe-zone labels (the copy it reserves room for) and copy (headline, cta, legal),
    against the global blocked terms and the tenant's (`terms`). It blocks on the hosted backend, when one is
    configured (settings.guardrails_text_backend)."""
    fields = {"brief": brief, **{f"safe_zones[{i}].label": label for i, label in enumerate(labels)}}
    fields |= {f"copy.{name}": value for name, value in (copy or {}).items()}
    screened = _guarded(tenant_id, "campaign", lambda: guardrails.screen_text(fields, settings, terms))
    return record(screened, CAMPAIGN_IMAGES)


def brand(session: Session, settings: Settings, tenant_id: uuid.UUID, name: str | None, guidelines: list[str]) -> str:
    """A brand's name and guideline texts (forbidden_terms are not screened: they list what must not appear)."""
    fields = {"name": name or "", **{f"guidelines[{i}].text": g for i, g in enumerate(guidelines)}}
    return text(session, settings, tenant_id, "brand", fields)


def asset_text(session: Session, settings: Settings, tenant_id: uuid.UUID, meta: AssetMetadata) -> str:
    """An asset's title, description, tags and string attributes."""
    fields = {"title": meta.title, "description": meta.description}
    fields |= {f"tags[{i}]": tag for i, tag in enumerate(meta.tags)}
    fields |= {f"attributes.{k}": v for k, v in (meta.attributes or {}).items() if isinstance(v, str)}
    return text(session, settings, tenant_id, "asset", fields)
