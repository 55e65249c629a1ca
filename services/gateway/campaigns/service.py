"""Campaigns: accept a brief, queue the pipeline, report progress, cancel."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

from sqlalchemy import Float, cast, func, literal, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.gateway.assets import service as assets
from services.gateway.brands import service as brands
from services.gateway.campaigns import brief as inferred
from services.gateway.campaigns import insert, tenant_config
from services.gateway.campaigns.schemas import CampaignCreate
from services.gateway.errors import ProblemError, conflict, not_found, unknown_reference
from services.gateway.guardrails import screen as guard
from services.gateway.pagination import SortKey, created_keys, paginate
from services.gateway.unit_of_work import after_commit, enqueue, flush_after_commit
from shared import costs, limits, metrics, outbox, queue, webhooks
from shared import qc as qc_report
from shared.config import Settings, get_settings
from shared.db.models import (
    TERMINAL_STATUSES,
    Campaign,
    CampaignStatus,
    Candidate,
    DamPush,
    IdempotencyKey,
    StageRun,
    StageRunStatus,
)
from shared.deletions import CLEANUP_TASK
from shared.deletions import schedule as schedule_deletion
from shared.stages import stage

_INT_MAX = 2**31 - 1


def request_hash(body: CampaignCreate) -> str:
    """sha256 of the validated body as canonical JSON: key order, spacing and spelled-out defaults don't matter."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def get(session: Session, tenant_id: uuid.UUID, campaign_id: uuid.UUID, *, for_update: bool = False) -> Campaign:
    stmt = select(Campaign).where(Campaign.id == campaign_id, Campaign.tenant_id == tenant_id)
    campaign = session.scalar(stmt.with_for_update() if for_update else stmt)
    if campaign is None:
        raise not_found("Campaign")
    return campaign


def _check_references(session: Session, tenant_id: uuid.UUID, body: CampaignCreate) -> None:
    """The request's other references and rules; the brand is checked by the insert (insert.py), or by
    _brand_first when one of these refuses: an unknown brand is the error a request gets first."""
    inferred.check_inferable(body.brief, body.product_asset_ids)
    owned = assets.products_owned(session, tenant_id, body.product_asset_ids)
    missing = [i for i in body.product_asset_ids if i not in owned]
    if missing:
        raise unknown_reference("product_asset_ids", f"No product asset with id {', '.join(map(str, missing))}.")


def _unknown_brand(body: CampaignCreate) -> ProblemError:
    return unknown_reference("brand_id", f"Brand {body.brand_id} does not exist.")


@contextmanager
def _brand_first(session: Session, tenant_id: uuid.UUID, body: CampaignCreate) -> Iterator[None]:
    """A refusal raised inside, unless the brand is not the tenant's: then that, as when it was checked first."""
    try:
        yield
    except ProblemError:
        if not brands.exists(session, tenant_id, body.brand_id):
            raise _unknown_brand(body) from None
        raise


def _new_campaign(tenant_id: uuid.UUID, body: CampaignCreate) -> Campaign:
    """The campaign as inserted, every column set (it is written by insert.py, never flushed by the ORM)."""
    url = str(body.webhook_url) if body.webhook_url else None
    return Campaign(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        brand_id=body.brand_id,
        brief=body.brief or "",  # none: inferred by the decompose stage, shown as brief_inferred
        product_asset_ids=[str(i) for i in body.product_asset_ids],
        sizes=[s.model_dump(exclude_none=True) for s in body.sizes],
        safe_zones=[z.model_dump() for z in body.safe_zones],
        copy=body.copy_.model_dump(exclude_none=True) if body.copy_ else None,
        top_k=body.top_k,
        qc_policy=body.qc_policy,
        max_retry_attempts=body.max_retry_attempts,
        max_prompt_revisions=body.max_prompt_revisions,
        priority=body.priority,
        webhook_url=url,
        webhook_secret=webhooks.new_secret() if url else None,
        event_sequence=0,
        status=CampaignStatus.QUEUED,
        current_stage=None,
        round=0,
        review_round=0,
        review_state=None,
        state=inferred.pending_state(body.brief),
        loop={},
        error=None,
        completed_at=None,
        push_urls=[
            {"image": str(p.image), "sidecar": str(p.sidecar)} | ({"creative": str(p.creative)} if p.creative else {})
            for p in body.push_urls
        ]
        if body.push_urls
        else None,
    )


def _replay(session: Session, tenant_id: uuid.UUID, key: str, digest: str) -> Campaign | None:
    """The campaign an earlier request with this Idempotency-Key created, if any."""
    row = session.get(IdempotencyKey, (tenant_id, key))
    if row is None:
        return None
    if row.request_hash != digest:
        raise ProblemError(
            422,
            "idempotency_key_reused",
            "Idempotency key reused",
            "This Idempotency-Key was used with a different request body.",
        )
    return get(session, tenant_id, row.campaign_id)


def _queued_event(campaign: Campaign, endpoints: Sequence[tenant_config.Endpoint]) -> insert.Event:
    """The campaign.queued event (the campaign's first: sequence 1) and its receivers: the campaign's webhook_url,
    then the tenant's enabled endpoints that subscribe to it."""
    event_type = "campaign.queued"
    campaign.event_sequence = 1
    targets: list[dict[str, str | None]] = []
    if campaign.webhook_url:
        targets.append({"id": str(uuid.uuid4()), "url": campaign.webhook_url, "endpoint_id": None})
    for endpoint in endpoints:
        if webhooks.subscribes(endpoint.patterns, event_type):
            targets.append({"id": str(uuid.uuid4()), "url": None, "endpoint_id": str(endpoint.id)})
    payload = webhooks.campaign_payload(campaign, event_type, {"status": campaign.status}) if targets else None
    now = outbox.utcnow()
    lease = webhooks.outbox_lease() if targets else now
    return insert.Event(webhooks.new_event_id(), event_type, payload, now, lease, targets)


def _admission(
    session: Session,
    tenant_id: uuid.UUID,
    body: CampaignCreate,
    settings: Settings,
    tenant_limits: limits.Limits | None,
) -> tuple[int, dict[str, Any] | None]:
    """(images reserved in the ledger, the limits the database admits it under at commit, migration 0018; None
    when limits are off: the ledger row is written all the same)."""
    images = limits.expected_images(len(body.product_asset_ids), len(body.sizes), settings)
    if not settings.limits_enabled:
        return images, None
    return images, limits.admitted_under(tenant_limits or limits.tenant_limits(session, tenant_id, settings))


def create(
    session: Session,
    tenant_id: uuid.UUID,
    body: CampaignCreate,
    idempotency_key: str | None,
    settings: Settings | None = None,
    tenant_limits: limits.Limits | None = None,
    key_epoch: int | None = None,
) -> tuple[Campaign, bool]:
    """Create and queue a campaign; return (campaign, replayed). tenant_limits: the caller's (read with its key),
    else read here; enforced as the transaction commits (commit it in quota.refusals()). key_epoch: the newest key
    epoch this process has seen (shared.key_cache), which keeps the tenant's cached settings current."""
    settings = guard.with_settings(settings)
    digest = request_hash(body)
    if idempotency_key and (earlier := _replay(session, tenant_id, idempotency_key, digest)):
        return earlier, True
    config = tenant_config.get(session, tenant_id, key_epoch, settings.auth_cache_ttl_s)
    with _brand_first(session, tenant_id, body):
        _check_references(session, tenant_id, body)
        # Input guardrails: a refused brief is a 422 before anything is written.
        labels = [z.label for z in body.safe_zones]
        copy = body.copy_.model_dump(exclude_none=True) if body.copy_ else {}  # the creative's text, as the brief
        screening = guard.campaign(
            session, settings, tenant_id, body.brief or "", labels, copy, terms=config.blocked_terms
        )
    campaign = _new_campaign(tenant_id, body)
    campaign.screening = screening
    event = _queued_event(campaign, config.endpoints)
    # Quotas (a replay above spends none): checked as the transaction commits, 429 or 402 rolling all of this back.
    reserved, admitted_under = _admission(session, tenant_id, body, settings, tenant_limits)
    claim = insert.Claim(idempotency_key, digest) if idempotency_key else None
    try:
        inserted = insert.insert(session, campaign, reserved, admitted_under, event, claim)
    except IntegrityError as exc:
        if claim is None or _constraint(exc) != insert.IDEMPOTENCY_KEY_TAKEN:
            raise
        # A concurrent request with this key committed first: nothing of ours was written (one statement).
        session.rollback()
        earlier = _replay(session, tenant_id, claim.key, digest)
        if earlier is None:  # the winner's campaign was deleted in between
            raise conflict("A concurrent request with this Idempotency-Key did not complete; retry.") from None
        return earlier, True
    if inserted is None:
        raise _unknown_brand(body)
    campaign.created_at, campaign.updated_at = inserted.created_at, inserted.updated_at
    if admitted_under is not None:
        flush_after_commit(session)  # the statement turned synchronous_commit off for this transaction
    enqueue(session, "onbrand.decompose", campaign.id)
    for delivery_id in inserted.deliveries:
        enqueue(session, "onbrand.send_webhook", delivery_id)
    return campaign, False


def _constraint(exc: IntegrityError) -> str | None:
    diag = getattr(exc.orig, "diag", None)
    return getattr(diag, "constraint_name", None)


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
