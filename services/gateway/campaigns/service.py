"""Campaigns: accept a brief, queue the pipeline, report progress, cancel."""

from __future__ import annotations

import uuid
from functools import partial
from typing import Any

from sqlalchemy import Float, cast, func, literal, select
from sqlalchemy.orm import Session

from services.gateway.errors import ProblemError, conflict, not_found
from services.gateway.pagination import SortKey, created_keys, paginate
from services.gateway.unit_of_work import after_commit, enqueue
from shared import costs, limits, metrics, queue, webhooks
from shared import qc as qc_report
from shared.config import Settings, get_settings
from shared.db.models import (
    TERMINAL_STATUSES,
    Campaign,
    CampaignStatus,
    Candidate,
    DamPush,
    StageRun,
    StageRunStatus,
)
from shared.deletions import CLEANUP_TASK
from shared.deletions import schedule as schedule_deletion
from shared.stages import stage

_INT_MAX = 2**31 - 1


def get(session: Session, tenant_id: uuid.UUID, campaign_id: uuid.UUID, *, for_update: bool = False) -> Campaign:
    stmt = select(Campaign).where(Campaign.id == campaign_id, Campaign.tenant_id == tenant_id)
    campaign = session.scalar(stmt.with_for_update() if for_update else stmt)
    if campaign is None:
        raise not_found("Campaign")
    return campaign


def cancel(session: Session, tenant_id: uuid.UUID, campaign_id: uuid.UUID) -> Campaign:
    # Row lock: a worker finishing the campaign at this moment either commits first (409 here)
    # or sees "cancelled" after us; never both terminal states.
    campaign = get(session, tenant_id, campaign_id, for_update=True)
    if campaign.status in TERMINAL_STATUSES:
        raise conflict(f"The campaign is already {campaign.status}.")
    previous = campaign.status
    campaign.status, campaign.completed_at = CampaignStatus.CANCELLED, func.now()
    session.flush()
    deliveries = webhooks.emit(
        session, campaign, "campaign.cancelled", {"status": campaign.status, "previous_status": previous}
    )
    for delivery_id in deliveries:
        enqueue(session, "onbrand.send_webhook", delivery_id)
    created_at = campaign.created_at
    after_commit(session, lambda: metrics.campaign_finished(CampaignStatus.CANCELLED, created_at))
    limits.settle_campaign(session, campaign.id)  # what it made so far, its reservation given back
    _revoke_work(session, campaign)
    return campaign


def _revoke_work(session: Session, campaign: Campaign) -> None:
    """After the commit, revoke the campaign's queued and running stage tasks (their ids derive from the run,
    shared.queue.stage_task_id): queued ones are dropped when a worker receives them, running GPU work is
    killed at once instead of computing for nothing. A worker started later never learns of it: its claim
    skips the campaign (terminal)."""
    runs = session.execute(
        select(StageRun.stage, StageRun.round, StageRun.item, StageRun.status).where(
            StageRun.tenant_id == campaign.tenant_id,
            StageRun.campaign_id == campaign.id,
            StageRun.status.in_([StageRunStatus.PENDING, StageRunStatus.RUNNING]),
        )
    ).all()
    queued: list[str] = []
    killed: list[str] = []
    for name, rnd, item, status in runs:
        row = stage(name)
        task_id = queue.stage_task_id(row.task, campaign.id, rnd, item) or ""
        running_gpu = status == StageRunStatus.RUNNING and row.queue in queue.GPU_QUEUES
        (killed if running_gpu else queued).append(task_id)
    if queued:
        after_commit(session, partial(_revoke, queued, terminate=False))
    if killed:
        after_commit(session, partial(_revoke, killed, terminate=True))


def _revoke(task_ids: list[str], *, terminate: bool) -> None:
    # Looked up on the module at call time so tests can watch it.
    queue.revoke(task_ids, terminate=terminate)


def list_page(
    session: Session, tenant_id: uuid.UUID, limit: int, cursor: str | None, status: str | None = None
) -> tuple[list[Campaign], str | None]:
    stmt = select(Campaign).where(Campaign.tenant_id == tenant_id)
    if status is not None:
        stmt = stmt.where(Campaign.status == status)
    return paginate(session, stmt, created_keys(Campaign), limit, cursor)


def _candidate_keys() -> list[SortKey[Any]]:
    """rank (nulls last), aesthetic descending (nulls last), then creation: all as ascending keys."""
    rank = func.coalesce(Candidate.rank, _INT_MAX)
    neg_aesthetic = func.coalesce(-Candidate.aesthetic, cast(literal("Infinity"), Float))
    return [
        SortKey(rank, lambda c: c.rank if c.rank is not None else _INT_MAX, int),
        SortKey(neg_aesthetic, lambda c: -c.aesthetic if c.aesthetic is not None else "Infinity", float),
        *created_keys(Candidate),
    ]


def candidates_page(
    session: Session, tenant_id: uuid.UUID, campaign_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[Candidate], str | None]:
    get(session, tenant_id, campaign_id)  # 404 for another tenant's campaign, not an empty list
    stmt = select(Candidate).where(Candidate.tenant_id == tenant_id, Candidate.campaign_id == campaign_id)
    return paginate(session, stmt, _candidate_keys(), limit, cursor)


def pushes_page(
    session: Session, tenant_id: uuid.UUID, campaign_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[DamPush], str | None]:
    get(session, tenant_id, campaign_id)  # 404 for another tenant's campaign, not an empty list
    stmt = select(DamPush).where(DamPush.tenant_id == tenant_id, DamPush.campaign_id == campaign_id)
    return paginate(session, stmt, created_keys(DamPush), limit, cursor)


def report(
    session: Session, tenant_id: uuid.UUID, campaign_id: uuid.UUID, settings: Settings | None = None
) -> dict[str, Any]:
    """shared.qc.report over the campaign's candidates, with the rank stage's policy record and its GPU cost."""
    campaign = get(session, tenant_id, campaign_id)
    rows = qc_report.candidate_rows(session, tenant_id, campaign_id)
    summary = (campaign.state or {}).get("qc") or {}
    return {
        **qc_report.report(rows, campaign.qc_policy, campaign.top_k),
        "campaign_id": campaign.id,
        "status": campaign.status,
        "relaxed": summary.get("relaxed") or [],
        "clusters": summary.get("clusters"),
        "revisions": (campaign.state or {}).get("revisions") or [],
        "cost": costs.campaign_cost(session, tenant_id, campaign_id, settings or get_settings()).to_json(),
    }


def delete(session: Session, tenant_id: uuid.UUID, campaign_id: uuid.UUID) -> None:
    """A finished campaign and everything derived from it: stage runs, candidates, results, decisions, feedback,
    review links, llm_calls, webhook deliveries, DAM pushes (ON DELETE CASCADE) now, its objects once this
    commits (shared.deletions). A running one is refused (409 campaign_running): cancel it first, so no stage
    starts on a campaign whose rows are gone; the row lock orders this against a worker's finish."""
    campaign = get(session, tenant_id, campaign_id, for_update=True)
    if campaign.status not in TERMINAL_STATUSES:
        raise ProblemError(
            409,
            "campaign_running",
            "Campaign running",
            f"The campaign is {campaign.status}: cancel it (POST /v1/campaigns/{campaign.id}/cancel), then delete it.",
        )
    deletion = schedule_deletion(session, tenant_id, "campaign", campaign.id)
    session.delete(campaign)
    session.flush()
    enqueue(session, CLEANUP_TASK, deletion.id)
