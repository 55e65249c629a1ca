"""/v1/campaigns"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from services.gateway.campaigns import create, reads, service, views
from services.gateway.campaigns.schemas import (
    CampaignCreate,
    CampaignCreated,
    CampaignRead,
    CampaignReport,
    CandidateRead,
    PushRead,
    ResultRead,
)
from services.gateway.deps import CallerDep, IdempotencyKeyHeader, SessionDep, SettingsDep, StorageDep, TenantDep
from services.gateway.errors import not_found
from services.gateway.pagination import CursorQuery, LimitQuery, Page
from services.gateway.webhook_targets import check_target
from shared import limits
from shared.db.models import CampaignStatus

router = APIRouter(prefix="/v1/campaigns", tags=["campaigns"])


@router.post("", status_code=status.HTTP_202_ACCEPTED, response_model=CampaignCreated)
async def create_campaign(
    body: CampaignCreate,
    request: Request,
    caller: CallerDep,
    storage: StorageDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """On the event loop (campaigns/create.py). The response is serialised here from the model create() built and
    validated: FastAPI would validate it once more against response_model, which still documents it."""
    if body.webhook_url is not None:
        check_target(body.webhook_url, "webhook_url", settings)
    for i, urls in enumerate(body.push_urls or []):  # literal private addresses: 422 now, names at push time
        check_target(urls.image, ("push_urls", i, "image"), settings, "Push URL")
        check_target(urls.sidecar, ("push_urls", i, "sidecar"), settings, "Push URL")
        if urls.creative is not None:
            check_target(urls.creative, ("push_urls", i, "creative"), settings, "Push URL")
    own = limits.effective(settings, caller.limit_overrides)  # read with the key: no query
    epoch = request.app.state.key_cache.epoch  # the newest key epoch this process has seen (deps.get_caller)
    created = await create.create(settings, storage, caller.tenant_id, body, idempotency_key, own, epoch)
    headers = {"Location": created.campaign.links.self}
    if created.replayed:
        headers["Idempotent-Replayed"] = "true"
    return Response(
        created.campaign.model_dump_json(by_alias=True),
        status.HTTP_202_ACCEPTED,
        headers,
        media_type="application/json",
    )


@router.get("/{campaign_id}", response_model=CampaignRead)
async def get_campaign(
    campaign_id: uuid.UUID, tenant_id: TenantDep, storage: StorageDep, settings: SettingsDep
) -> CampaignRead:
    return await reads.read_campaign(settings, storage, tenant_id, campaign_id)


@router.get("", response_model=Page[CampaignRead])
def list_campaigns(
    session: SessionDep,
    tenant_id: TenantDep,
    storage: StorageDep,
    settings: SettingsDep,
    status_filter: Annotated[CampaignStatus | None, Query(alias="status")] = None,
    limit: LimitQuery = 20,
    cursor: CursorQuery = None,
) -> Page[CampaignRead]:
    campaigns, next_cursor = service.list_page(session, tenant_id, limit, cursor, status_filter)
    return Page[CampaignRead](
        items=views.campaign_views(session, storage, settings, campaigns), next_cursor=next_cursor
    )


@router.post(
    "/{campaign_id}/cancel",
    response_model=CampaignRead,
    responses={409: {"description": "The campaign already reached a terminal status."}},
)
def cancel_campaign(
    campaign_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep, storage: StorageDep, settings: SettingsDep
) -> CampaignRead:
    campaign = service.cancel(session, tenant_id, campaign_id)
    return views.campaign_views(session, storage, settings, [campaign])[0]


@router.get("/{campaign_id}/candidates", response_model=Page[CandidateRead])
def list_candidates(
    campaign_id: uuid.UUID,
    session: SessionDep,
    tenant_id: TenantDep,
    storage: StorageDep,
    limit: LimitQuery = 20,
    cursor: CursorQuery = None,
) -> Page[CandidateRead]:
    rows, next_cursor = service.candidates_page(session, tenant_id, campaign_id, limit, cursor)
    return Page[CandidateRead](items=[views.candidate_view(c, storage) for c in rows], next_cursor=next_cursor)


@router.get("/{campaign_id}/results", response_model=Page[ResultRead])
def list_results(
    campaign_id: uuid.UUID,
    session: SessionDep,
    tenant_id: TenantDep,
    storage: StorageDep,
    review_round: Annotated[
        int | None, Query(ge=0, description="Which review round (default: the current one, as on the campaign).")
    ] = None,
) -> Page[ResultRead]:
    """One review round's results with their decisions: earlier rounds stay readable after feedback."""
    campaign = service.get(session, tenant_id, campaign_id)
    wanted = campaign.review_round if review_round is None else review_round
    if wanted > campaign.review_round:
        raise not_found(f"Review round {wanted}")
    return Page[ResultRead](items=views.round_results(session, storage, campaign, wanted), next_cursor=None)


@router.get("/{campaign_id}/report", response_model=CampaignReport)
def campaign_report(
    campaign_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep, settings: SettingsDep
) -> CampaignReport:
    """Pass rates per QC check, outcomes per round, what was relaxed and what kept candidates out, and the GPU
    time and dollars per delivered image."""
    return CampaignReport.model_validate(service.report(session, tenant_id, campaign_id, settings))


@router.get("/{campaign_id}/pushes", response_model=Page[PushRead])
def list_pushes(
    campaign_id: uuid.UUID,
    session: SessionDep,
    tenant_id: TenantDep,
    limit: LimitQuery = 20,
    cursor: CursorQuery = None,
) -> Page[PushRead]:
    """The pushes of the campaign's results to DAMs: status, attempts, last error and the objects uploaded."""
    rows, next_cursor = service.pushes_page(session, tenant_id, campaign_id, limit, cursor)
    return Page[PushRead](items=[views.push_view(r) for r in rows], next_cursor=next_cursor)


@router.delete(
    "/{campaign_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={409: {"description": "campaign_running: cancel the campaign first."}},
)
def delete_campaign(campaign_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep) -> Response:
    service.delete(session, tenant_id, campaign_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
