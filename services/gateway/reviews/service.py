"""Human review: decisions on results, feedback that starts a new review round, review links.

Used by the review API (endpoints.py) and the review page (services/gateway/review_page). Like every
service it never commits: tasks and webhook sends are registered with unit_of_work.enqueue and go out
after the request's transaction commits.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, cast, func, select
from sqlalchemy.orm import Session

from services.gateway import review_links
from services.gateway.campaigns import service as campaigns
from services.gateway.errors import ProblemError, not_found
from services.gateway.guardrails import screen as guard
from services.gateway.pagination import SortKey, created_keys, paginate
from services.gateway.unit_of_work import enqueue
from shared import pushes, webhooks
from shared.config import Settings
from shared.db.models import (
    Campaign,
    CampaignStatus,
    DamPushPolicy,
    Feedback,
    FeedbackStatus,
    Result,
    ResultDecision,
    ResultDecisionRecord,
    ReviewLink,
    ReviewState,
)
from shared.review import Reason

MAX_COMMENT = 2000
MAX_FEEDBACK_TEXT = 2000
MAX_REVIEWER = 300
# A campaign with results waits for a person in these states; changes_requested waits for the router.
DECIDABLE_STATES = frozenset({ReviewState.PENDING, ReviewState.APPROVED, ReviewState.REJECTED})
REVIEWABLE_STATUSES = frozenset({CampaignStatus.COMPLETED, CampaignStatus.PARTIAL})
# Feedback the router could not turn into a change may be sent again for the same review round.
RETRYABLE_FEEDBACK = frozenset({FeedbackStatus.NOT_UNDERSTOOD, FeedbackStatus.FAILED})

LEARN_TASK = "onbrand.learn_ranking"
ROUTE_TASK = "onbrand.route_feedback"
WEBHOOK_TASK = "onbrand.send_webhook"


# --- problems -----------------------------------------------------------------------------------------


def review_not_open(detail: str) -> ProblemError:
    return ProblemError(409, "review_not_open", "Review not open", detail)


def _invalid(code: str, title: str, detail: str, field: str) -> ProblemError:
    return ProblemError(422, code, title, detail, extra={"field": field})


def _check_text(value: str, limit: int, field: str) -> None:
    if len(value) > limit:
        raise _invalid("validation_error", "Validation error", f"{field} is longer than {limit} characters.", field)


# --- shared look-ups ----------------------------------------------------------------------------------


def _open_campaign(session: Session, tenant_id: uuid.UUID, campaign_id: uuid.UUID) -> Campaign:
    """The campaign, row-locked (decisions and feedback on one campaign serialise), open for review.
    populate_existing: the request may have loaded the row before the lock (the review page resolves its
    link first); what a concurrent decision committed meanwhile must be read, not the stale copy."""
    campaign = session.scalar(
        select(Campaign)
        .where(Campaign.id == campaign_id, Campaign.tenant_id == tenant_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if campaign is None:
        raise not_found("Campaign")
    if campaign.status not in REVIEWABLE_STATUSES or campaign.review_state is None:
        raise review_not_open(f"The campaign is {campaign.status} and has no results waiting for review.")
    return campaign


def round_results(session: Session, campaign: Campaign) -> list[Result]:
    """The results of the campaign's current review round, best rank first."""
    return list(
        session.scalars(
            select(Result)
            .where(Result.of_current_round(campaign))
            .order_by(Result.rank)
            .execution_options(populate_existing=True)
        )
    )


def _emit(session: Session, campaign: Campaign, event_type: str, data: dict[str, Any]) -> None:
    for delivery_id in webhooks.emit(session, campaign, event_type, data):
        enqueue(session, WEBHOOK_TASK, delivery_id)


# --- decisions ----------------------------------------------------------------------------------------


def decide(
    session: Session,
    tenant_id: uuid.UUID,
    campaign_id: uuid.UUID,
    result_id: uuid.UUID,
    decision: ResultDecision,
    reasons: list[Reason],
    comment: str,
    reviewer: str,
) -> Result:
    """Approve or reject one result of the current review round; the latest decision wins, the history
    keeps every one. Recomputes the campaign's review state (and pushes on approval, by brand policy)."""
    comment = comment.strip()
    _check_text(comment, MAX_COMMENT, "comment")
    if decision == ResultDecision.REJECTED and not reasons and not comment:
        raise _invalid("reasons_required", "Reasons required", "Give a reason or a comment for a rejection.", "reasons")
    campaign = _open_campaign(session, tenant_id, campaign_id)
    result = session.scalar(
        select(Result)
        .where(Result.id == result_id, Result.tenant_id == tenant_id, Result.campaign_id == campaign.id)
        .execution_options(populate_existing=True)
    )
    if result is None:
        raise not_found("Result")
    if result.review_round != campaign.review_round:
        raise review_not_open(f"The result belongs to review round {result.review_round}, not the current one.")
    if campaign.review_state not in DECIDABLE_STATES:
        raise review_not_open(f"The campaign's review is {campaign.review_state}: a new review round is on its way.")
    record = _record(session, campaign, result, decision, list(dict.fromkeys(reasons)), comment, reviewer)
    _emit(session, campaign, f"result.{decision}", _decision_data(result, record))
    _settle(session, campaign)
    enqueue(session, LEARN_TASK, campaign.brand_id)
    return result


def _record(
    session: Session,
    campaign: Campaign,
    result: Result,
    decision: ResultDecision,
    reasons: list[Reason],
    comment: str,
    reviewer: str,
) -> ResultDecisionRecord:
    at = datetime.now(UTC)
    result.decision, result.decided_by, result.decided_at = decision, reviewer[:MAX_REVIEWER], at
    record = ResultDecisionRecord(
        id=uuid.uuid4(),
        tenant_id=campaign.tenant_id,
        campaign_id=campaign.id,
        result_id=result.id,
        review_round=result.review_round,
        decision=decision,
        reasons=[str(r) for r in reasons],
        comment=comment,
        reviewer=reviewer[:MAX_REVIEWER],
        created_at=at,
    )
    session.add(record)
    session.flush()
    return record


def _decision_data(result: Result, record: ResultDecisionRecord) -> dict[str, Any]:
    return {
        "result_id": str(result.id),
        "rank": result.rank,
        "review_round": result.review_round,
        "reasons": list(record.reasons),
        "comment": record.comment,
        "reviewer": record.reviewer,
    }


def review_state_of(decisions: Sequence[ResultDecision | None]) -> ReviewState:
    """All decided: approved with at least one approval, else rejected; anything undecided: pending."""
    if not decisions or any(d is None for d in decisions):
        return ReviewState.PENDING
    return ReviewState.APPROVED if ResultDecision.APPROVED in decisions else ReviewState.REJECTED


def _settle(session: Session, campaign: Campaign) -> None:
    results = round_results(session, campaign)
    campaign.review_state = review_state_of([r.decision for r in results])
    if campaign.review_state != ReviewState.APPROVED or _approved_before(session, campaign, len(results)):
        return
    approved = [str(r.id) for r in results if r.decision == ResultDecision.APPROVED]
    _emit(session, campaign, "campaign.approved", {"review_round": campaign.review_round, "approved": approved})
    if pushes.policy(session, campaign) == DamPushPolicy.ON_APPROVAL:
        for push_id in pushes.queue_pushes(session, campaign, approved_only=True):
            enqueue(session, pushes.TASK, push_id)


def _approved_before(session: Session, campaign: Campaign, result_count: int) -> bool:
    """Whether the review round was already approved before its latest decision: replays the round's
    history, so campaign.approved (and an on-approval push) happens once per review round."""
    history = session.execute(
        select(ResultDecisionRecord.result_id, ResultDecisionRecord.decision)
        .where(
            ResultDecisionRecord.tenant_id == campaign.tenant_id,
            ResultDecisionRecord.campaign_id == campaign.id,
            ResultDecisionRecord.review_round == campaign.review_round,
        )
        .order_by(ResultDecisionRecord.created_at, ResultDecisionRecord.id)
    ).all()
    latest: dict[uuid.UUID, ResultDecision] = {}
    for result_id, decision in history[:-1]:  # the last one is the decision being made now
        latest[result_id] = decision
        if len(latest) == result_count and ResultDecision.APPROVED in latest.values():
            return True
    return False


def _newest_first(model: Any) -> list[SortKey[Any]]:
    """created_at descending as an ascending key: minus its exact epoch microseconds."""
    micros = -cast(func.extract("epoch", model.created_at) * 1_000_000, BigInteger)
    return [SortKey(micros, lambda o: -_epoch_micros(o.created_at), int), *created_keys(model)[1:]]


def _epoch_micros(at: datetime) -> int:
    return (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def decisions_page(
    session: Session, tenant_id: uuid.UUID, campaign_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[ResultDecisionRecord], str | None]:
    """The campaign's decision history, newest first, every review round."""
    campaigns.get(session, tenant_id, campaign_id)  # 404 for another tenant's campaign
    stmt = select(ResultDecisionRecord).where(
        ResultDecisionRecord.tenant_id == tenant_id, ResultDecisionRecord.campaign_id == campaign_id
    )
    return paginate(session, stmt, _newest_first(ResultDecisionRecord), limit, cursor)


def decision_record(session: Session, tenant_id: uuid.UUID, record_id: uuid.UUID) -> ResultDecisionRecord:
    record = session.scalar(
        select(ResultDecisionRecord).where(
            ResultDecisionRecord.id == record_id, ResultDecisionRecord.tenant_id == tenant_id
        )
    )
    if record is None:
        raise not_found("Decision")
    return record


def latest_record(session: Session, result: Result) -> ResultDecisionRecord:
    """The history row of the result's latest decision."""
    record = session.scalar(
        select(ResultDecisionRecord)
        .where(ResultDecisionRecord.tenant_id == result.tenant_id, ResultDecisionRecord.result_id == result.id)
        .order_by(ResultDecisionRecord.created_at.desc(), ResultDecisionRecord.id.desc())
        .limit(1)
    )
    if record is None:
        raise not_found("Decision")
    return record


# --- feedback -----------------------------------------------------------------------------------------


def submit_feedback(
    session: Session,
    tenant_id: uuid.UUID,
    campaign_id: uuid.UUID,
    text: str,
    reasons: list[Reason],
    reviewer: str,
    brief: str | None = None,
    settings: Settings | None = None,
) -> Feedback:
    """Ask for a new review round: a Feedback row (routed by the worker after commit), the campaign's
    review state changes_requested. A structured `brief` is screened as a campaign's and stored as the
    change's known part (the router adds what the text asks)."""
    text = text.strip()
    _check_text(text, MAX_FEEDBACK_TEXT, "text")
    if not text and not reasons and not brief:
        raise _invalid("feedback_empty", "Feedback empty", "Send a text, reasons, a brief, or any of them.", "text")
    if brief:
        guard.text(session, guard.with_settings(settings), tenant_id, "feedback", {"brief": brief})
    campaign = _open_campaign(session, tenant_id, campaign_id)
    if not round_results(session, campaign):
        raise review_not_open("The campaign's current review round has no results.")
    feedback = _feedback_row(session, campaign)
    feedback.text, feedback.reasons = text, [str(r) for r in dict.fromkeys(reasons)]
    feedback.change = {"brief": brief} if brief else {}
    feedback.reviewer = reviewer[:MAX_REVIEWER]
    session.flush()
    campaign.review_state = ReviewState.CHANGES_REQUESTED
    data = {
        "feedback_id": str(feedback.id),
        "review_round": feedback.review_round,
        "text": feedback.text,
        "reasons": list(feedback.reasons),
        "reviewer": feedback.reviewer,
    }
    _emit(session, campaign, "campaign.changes_requested", data)
    enqueue(session, ROUTE_TASK, feedback.id)
    return feedback


def _feedback_row(session: Session, campaign: Campaign) -> Feedback:
    """A new Feedback for the next review round; or the round's earlier one that the router could not
    use (not understood, failed), reset for the new text; 409 feedback_exists otherwise."""
    review_round = campaign.review_round + 1
    existing = session.scalar(
        select(Feedback).where(
            Feedback.tenant_id == campaign.tenant_id,
            Feedback.campaign_id == campaign.id,
            Feedback.review_round == review_round,
        )
    )
    if existing is None:
        feedback = Feedback(id=uuid.uuid4(), tenant_id=campaign.tenant_id, campaign_id=campaign.id)
        feedback.review_round = review_round
        session.add(feedback)
        return feedback
    if existing.status not in RETRYABLE_FEEDBACK:
        raise ProblemError(
            409, "feedback_exists", "Feedback exists", f"Review round {review_round} already has feedback."
        )
    existing.status, existing.change, existing.not_understood, existing.notes = FeedbackStatus.ROUTING, {}, [], []
    existing.router = existing.entry_stage = existing.error = None
    existing.first_round = None
    existing.routed_at = None
    return existing


def feedback_page(
    session: Session, tenant_id: uuid.UUID, campaign_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[Feedback], str | None]:
    campaigns.get(session, tenant_id, campaign_id)
    stmt = select(Feedback).where(Feedback.tenant_id == tenant_id, Feedback.campaign_id == campaign_id)
    return paginate(session, stmt, created_keys(Feedback), limit, cursor)


def get_feedback(session: Session, tenant_id: uuid.UUID, campaign_id: uuid.UUID, feedback_id: uuid.UUID) -> Feedback:
    found = session.scalar(
        select(Feedback).where(
            Feedback.id == feedback_id, Feedback.tenant_id == tenant_id, Feedback.campaign_id == campaign_id
        )
    )
    if found is None:
        raise not_found("Feedback")
    return found


# --- review links -------------------------------------------------------------------------------------


def create_review_link(
    session: Session,
    tenant_id: uuid.UUID,
    campaign_id: uuid.UUID,
    reviewer: str,
    ttl: timedelta,
    settings: Settings,
) -> tuple[ReviewLink, str]:
    """A review page link for one of the tenant's campaigns, and its token (shown once, never stored)."""
    reviewer = reviewer.strip()
    if not 1 <= len(reviewer) <= 200:
        raise _invalid("validation_error", "Validation error", "reviewer must be 1 to 200 characters.", "reviewer")
    campaign = campaigns.get(session, tenant_id, campaign_id)
    try:
        return review_links.create(session, campaign, reviewer, ttl, settings)
    except ValueError as exc:
        raise _invalid("validation_error", "Validation error", str(exc), "expires_in_hours") from None


def get_review_link(session: Session, tenant_id: uuid.UUID, campaign_id: uuid.UUID, link_id: uuid.UUID) -> ReviewLink:
    link = session.scalar(
        select(ReviewLink).where(
            ReviewLink.id == link_id, ReviewLink.tenant_id == tenant_id, ReviewLink.campaign_id == campaign_id
        )
    )
    if link is None:
        raise not_found("Review link")
    return link


def revoke_review_link(
    session: Session, tenant_id: uuid.UUID, campaign_id: uuid.UUID, link_id: uuid.UUID
) -> ReviewLink:
    """Revoke a link (again: no-op); its page refuses the token from the next request on."""
    link = get_review_link(session, tenant_id, campaign_id, link_id)
    review_links.revoke(link)
    session.flush()
    return link


def review_links_page(
    session: Session, tenant_id: uuid.UUID, campaign_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[ReviewLink], str | None]:
    campaigns.get(session, tenant_id, campaign_id)
    stmt = select(ReviewLink).where(ReviewLink.tenant_id == tenant_id, ReviewLink.campaign_id == campaign_id)
    return paginate(session, stmt, created_keys(ReviewLink), limit, cursor)
