"""/v1/campaigns/{id}/results/{result_id}/approve|reject, /decisions, /feedback, /review-links"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Literal

from fastapi import APIRouter, Request, Response, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from services.gateway import review_links
from services.gateway.campaigns import service as campaigns
from services.gateway.deps import IdempotencyKeyHeader, KeyPrefixDep, SessionDep, SettingsDep, TenantDep
from services.gateway.pagination import CursorQuery, LimitQuery, Page
from services.gateway.reviews import idempotency, service
from services.gateway.reviews.schemas import (
    ApproveBody,
    DecisionMade,
    DecisionRead,
    FeedbackCreate,
    FeedbackLinks,
    FeedbackRead,
    RejectBody,
    ReviewLinkCreate,
    ReviewLinkCreated,
    ReviewLinkRead,
)
from shared.config import Settings
from shared.db.models import Feedback, Result, ResultDecision, ResultDecisionRecord, ReviewLink
from shared.review import Reason, reviewer_for_key

router = APIRouter(prefix="/v1/campaigns", tags=["reviews"])

REPLAYED = "Idempotent-Replayed"


def _mark(response: Response, outcome: idempotency.Outcome) -> None:
    if outcome.replayed:
        response.headers[REPLAYED] = "true"


# --- views --------------------------------------------------------------------------------------------


def _decision_view(record: ResultDecisionRecord, rank: int | None) -> DecisionRead:
    return DecisionRead(
        id=record.id,
        campaign_id=record.campaign_id,
        result_id=record.result_id,
        rank=rank,
        review_round=record.review_round,
        decision=record.decision,
        reasons=[Reason(r) for r in record.reasons],
        comment=record.comment,
        reviewer=record.reviewer,
        created_at=record.created_at,
    )


def _ranks(session: Session, records: list[ResultDecisionRecord]) -> dict[uuid.UUID, int]:
    ids = {r.result_id for r in records}
    if not ids:
        return {}
    rows = session.execute(select(Result.id, Result.rank).where(Result.id.in_(ids)))
    return {result_id: rank for result_id, rank in rows}


def _campaign_url(settings: Settings, campaign_id: uuid.UUID) -> str:
    return f"{settings.public_url.rstrip('/')}/v1/campaigns/{campaign_id}"


def feedback_view(feedback: Feedback, settings: Settings) -> FeedbackRead:
    campaign = _campaign_url(settings, feedback.campaign_id)
    return FeedbackRead(
        id=feedback.id,
        campaign_id=feedback.campaign_id,
        review_round=feedback.review_round,
        text=feedback.text,
        reasons=[Reason(r) for r in feedback.reasons],
        reviewer=feedback.reviewer,
        status=feedback.status,
        change=feedback.change or {},
        not_understood=list(feedback.not_understood or []),
        notes=list(feedback.notes or []),
        router=feedback.router,
        entry_stage=feedback.entry_stage,
        first_round=feedback.first_round,
        error=feedback.error,
        created_at=feedback.created_at,
        routed_at=feedback.routed_at,
        links=FeedbackLinks(self=f"{campaign}/feedback/{feedback.id}", campaign=campaign),
    )


def _link_status(link: ReviewLink) -> Literal["active", "expired", "revoked"]:
    if link.revoked_at is not None:
        return "revoked"
    return "expired" if link.expires_at <= datetime.now(UTC) else "active"


def link_view(link: ReviewLink) -> ReviewLinkRead:
    return ReviewLinkRead(
        id=link.id,
        campaign_id=link.campaign_id,
        reviewer=link.reviewer,
        status=_link_status(link),
        expires_at=link.expires_at,
        revoked_at=link.revoked_at,
        last_used_at=link.last_used_at,
        created_at=link.created_at,
    )


# --- decisions ----------------------------------------------------------------------------------------


def _decide(
    request: Request,
    session: Session,
    tenant_id: uuid.UUID,
    ids: tuple[uuid.UUID, uuid.UUID],
    body: ApproveBody | RejectBody,
    decision: ResultDecision,
    reviewer: str,
    key: str | None,
) -> tuple[DecisionMade, idempotency.Outcome]:
    campaign_id, result_id = ids
    campaigns.get(session, tenant_id, campaign_id)
    reasons = list(body.reasons) if isinstance(body, RejectBody) else []

    def write() -> uuid.UUID:
        result = service.decide(session, tenant_id, campaign_id, result_id, decision, reasons, body.comment, reviewer)
        return service.latest_record(session, result).id

    outcome = idempotency.run(session, request, tenant_id, campaign_id, key, body, write)
    record = service.decision_record(session, tenant_id, outcome.resource_id)
    campaign = campaigns.get(session, tenant_id, campaign_id)
    view = _decision_view(record, _ranks(session, [record]).get(record.result_id))
    return DecisionMade(**view.model_dump(), review_state=campaign.review_state), outcome


_DECISION_ERRORS: dict[int | str, dict[str, str]] = {
    404: {"description": "No such campaign or result."},
    409: {
        "description": "review_not_open: the campaign is not waiting for a review, or the result is of "
        "an earlier review round."
    },
}


@router.post("/{campaign_id}/results/{result_id}/approve", response_model=DecisionMade, responses=_DECISION_ERRORS)
def approve_result(
    campaign_id: uuid.UUID,
    result_id: uuid.UUID,
    body: ApproveBody,
    request: Request,
    response: Response,
    session: SessionDep,
    tenant_id: TenantDep,
    prefix: KeyPrefixDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> DecisionMade:
    """Approve one result of the current review round (deciding again is allowed: the latest wins)."""
    reviewer = reviewer_for_key(prefix, body.reviewer)
    ids = (campaign_id, result_id)
    view, outcome = _decide(request, session, tenant_id, ids, body, ResultDecision.APPROVED, reviewer, idempotency_key)
    _mark(response, outcome)
    return view


@router.post("/{campaign_id}/results/{result_id}/reject", response_model=DecisionMade, responses=_DECISION_ERRORS)
def reject_result(
    campaign_id: uuid.UUID,
    result_id: uuid.UUID,
    body: RejectBody,
    request: Request,
    response: Response,
    session: SessionDep,
    tenant_id: TenantDep,
    prefix: KeyPrefixDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> DecisionMade:
    """Reject one result with structured reasons and/or a comment (422 reasons_required with neither)."""
    reviewer = reviewer_for_key(prefix, body.reviewer)
    ids = (campaign_id, result_id)
    view, outcome = _decide(request, session, tenant_id, ids, body, ResultDecision.REJECTED, reviewer, idempotency_key)
    _mark(response, outcome)
    return view


@router.get("/{campaign_id}/decisions", response_model=Page[DecisionRead])
def list_decisions(
    campaign_id: uuid.UUID,
    session: SessionDep,
    tenant_id: TenantDep,
    limit: LimitQuery = 20,
    cursor: CursorQuery = None,
) -> Page[DecisionRead]:
    """Every approve and reject of the campaign, newest first, over all review rounds."""
    rows, next_cursor = service.decisions_page(session, tenant_id, campaign_id, limit, cursor)
    ranks = _ranks(session, rows)
    return Page[DecisionRead](items=[_decision_view(r, ranks.get(r.result_id)) for r in rows], next_cursor=next_cursor)


# --- feedback -----------------------------------------------------------------------------------------


@router.post(
    "/{campaign_id}/feedback",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=FeedbackRead,
    responses={
        409: {"description": "review_not_open (running, no results) or feedback_exists (this round has one)."},
        422: {"description": "feedback_empty: neither text, reasons nor brief; input_refused: the brief."},
    },
)
def create_feedback(
    campaign_id: uuid.UUID,
    body: FeedbackCreate,
    request: Request,
    response: Response,
    session: SessionDep,
    tenant_id: TenantDep,
    prefix: KeyPrefixDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> FeedbackRead:
    """Ask for a new review round: the feedback is routed to a change (status routing → applied or
    not_understood) and the campaign runs again from the stage that must change."""
    campaigns.get(session, tenant_id, campaign_id)
    reviewer = reviewer_for_key(prefix, body.reviewer)

    def write() -> uuid.UUID:
        return service.submit_feedback(
            session, tenant_id, campaign_id, body.text, list(body.reasons), reviewer, body.brief, settings
        ).id

    outcome = idempotency.run(session, request, tenant_id, campaign_id, idempotency_key, body, write)
    view = feedback_view(service.get_feedback(session, tenant_id, campaign_id, outcome.resource_id), settings)
    response.headers["Location"] = view.links.self
    _mark(response, outcome)
    return view


@router.get("/{campaign_id}/feedback", response_model=Page[FeedbackRead])
def list_feedback(
    campaign_id: uuid.UUID,
    session: SessionDep,
    tenant_id: TenantDep,
    settings: SettingsDep,
    limit: LimitQuery = 20,
    cursor: CursorQuery = None,
) -> Page[FeedbackRead]:
    rows, next_cursor = service.feedback_page(session, tenant_id, campaign_id, limit, cursor)
    return Page[FeedbackRead](items=[feedback_view(f, settings) for f in rows], next_cursor=next_cursor)


@router.get("/{campaign_id}/feedback/{feedback_id}", response_model=FeedbackRead)
def get_feedback(
    campaign_id: uuid.UUID, feedback_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep, settings: SettingsDep
) -> FeedbackRead:
    return feedback_view(service.get_feedback(session, tenant_id, campaign_id, feedback_id), settings)


# --- review links -------------------------------------------------------------------------------------


@router.post("/{campaign_id}/review-links", status_code=status.HTTP_201_CREATED, response_model=ReviewLinkCreated)
def create_review_link(
    campaign_id: uuid.UUID,
    body: ReviewLinkCreate,
    request: Request,
    response: Response,
    session: SessionDep,
    tenant_id: TenantDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> ReviewLinkCreated:
    """A signed, expiring link to the campaign's review page, for a reviewer without an API key.
    The token is shown once (and to a replay of this request)."""
    campaigns.get(session, tenant_id, campaign_id)
    ttl = timedelta(hours=body.expires_in_hours)

    def write() -> uuid.UUID:
        return service.create_review_link(session, tenant_id, campaign_id, body.reviewer, ttl, settings)[0].id

    outcome = idempotency.run(session, request, tenant_id, campaign_id, idempotency_key, body, write)
    link = service.get_review_link(session, tenant_id, campaign_id, outcome.resource_id)
    token = review_links.token_for(link, settings)  # deterministic: a replay gets the same token
    url = f"{settings.public_url.rstrip('/')}/review/{token}"
    _mark(response, outcome)
    return ReviewLinkCreated(**link_view(link).model_dump(), url=url, token=token)


@router.get("/{campaign_id}/review-links", response_model=Page[ReviewLinkRead])
def list_review_links(
    campaign_id: uuid.UUID,
    session: SessionDep,
    tenant_id: TenantDep,
    limit: LimitQuery = 20,
    cursor: CursorQuery = None,
) -> Page[ReviewLinkRead]:
    """The campaign's review links (never their tokens)."""
    rows, next_cursor = service.review_links_page(session, tenant_id, campaign_id, limit, cursor)
    return Page[ReviewLinkRead](items=[link_view(r) for r in rows], next_cursor=next_cursor)


@router.post("/{campaign_id}/review-links/{link_id}/revoke", response_model=ReviewLinkRead)
def revoke_review_link(
    campaign_id: uuid.UUID,
    link_id: uuid.UUID,
    request: Request,
    response: Response,
    session: SessionDep,
    tenant_id: TenantDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> ReviewLinkRead:
    """Revoke a review link: its page refuses the token from the next request on."""
    campaigns.get(session, tenant_id, campaign_id)

    def write() -> uuid.UUID:
        return service.revoke_review_link(session, tenant_id, campaign_id, link_id).id

    outcome = idempotency.run(session, request, tenant_id, campaign_id, idempotency_key, None, write)
    _mark(response, outcome)
    return link_view(service.get_review_link(session, tenant_id, campaign_id, outcome.resource_id))
