"""route_feedback (llm queue): a reviewer's feedback routed to a typed change, then applied.

The router (workers.language.feedback) runs with no transaction open (a hosted call takes seconds); the
outcome is written in one transaction with the campaign row locked: a change starts the next review round
(workers.engine.review), an empty one marks the feedback not understood and the campaign back to pending.
Idempotent: a redelivered message for a feedback already applied only re-sends its review round's first
task when that never started (the previous delivery may have died between commit and send).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from shared import metrics
from shared.config import get_settings
from shared.db.models import (
    TERMINAL_STATUSES,
    Campaign,
    Feedback,
    FeedbackStatus,
    LlmCall,
    ReviewState,
    StageRunStatus,
)
from shared.db.session import session_scope
from shared.stages import stage
from workers.engine import review
from workers.engine.context import Task, now
from workers.engine.records import get_run, lock_campaign
from workers.engine.runner import send_all

if TYPE_CHECKING:
    from workers.language.feedback import Routed


@dataclass(frozen=True)
class Pending:
    """What the router needs of a feedback still routing (read in a short transaction)."""

    text: str
    reasons: list[str]
    background_asset_ids: list[str]
    sizes: list[dict[str, Any]]
    qc_policy: str
    brief: str | None = None  # the structured replacement brief, stored by the gateway in feedback.change


def route(feedback_id: str) -> str:
    """Route and apply one feedback; returns what happened (applied, not_understood, skipped, resent)."""
    ident = uuid.UUID(feedback_id)
    pending, redelivered = _load(ident)
    if pending is None:
        send_all(redelivered)
        return "resent" if redelivered else "skipped"
    try:
        routed = _route(pending)
    except Exception as exc:  # noqa: BLE001 - recorded, then raised: the sweep re-sends feedback left routing
        record_error(feedback_id, f"{type(exc).__name__}: {exc}")
        raise
    outcome, tasks = _apply(ident, routed)
    send_all(tasks)
    return outcome


def _load(ident: uuid.UUID) -> tuple[Pending | None, list[Task]]:
    with session_scope() as session:
        feedback = session.get(Feedback, ident)
        if feedback is None:
            return None, []
        if feedback.status != FeedbackStatus.ROUTING:
            return None, _unsent_entry(session, feedback)
        campaign = session.get(Campaign, feedback.campaign_id)
        if campaign is None:
            return None, []
        return Pending(
            text=feedback.text or "",
            reasons=[str(r) for r in feedback.reasons or []],
            background_asset_ids=shown_backgrounds(campaign),
            sizes=list(campaign.sizes or []),
            qc_policy=campaign.qc_policy,
            brief=(feedback.change or {}).get("brief") or None,
        ), []


def shown_backgrounds(campaign: Campaign) -> list[str]:
    """The backgrounds the reviewed results were composed on (the primary one, and any a canvas's aspect
    chose instead): "another background" excludes them."""
    retrieved = (campaign.state or {}).get("retrieve") or {}
    found = [retrieved.get("background_asset_id"), *(retrieved.get("backgrounds_by_size") or {}).values()]
    return list(dict.fromkeys(str(b) for b in found if b))


def _unsent_entry(session: Session, feedback: Feedback) -> list[Task]:
    """An applied feedback whose review round's entry stage never started: its task again."""
    if feedback.status != FeedbackStatus.APPLIED or feedback.entry_stage is None or feedback.first_round is None:
        return []
    campaign = lock_campaign(session, feedback.campaign_id)
    if campaign is None or campaign.review_round != feedback.review_round:
        return []  # a later review round superseded it
    run = get_run(session, campaign, feedback.entry_stage, feedback.first_round, 0)
    if run.status != StageRunStatus.PENDING:
        return []
    return [(stage(feedback.entry_stage).task, str(campaign.id), feedback.first_round, 0)]


def _route(pending: Pending) -> Routed:
    from workers.language import feedback as router

    context = router.RouteContext(
        background_asset_ids=pending.background_asset_ids, sizes=pending.sizes, qc_policy=pending.qc_policy
    )
    routed = router.route(pending.text, pending.reasons, context, get_settings())
    return with_brief(routed, pending.brief)


def with_brief(routed: Routed, brief: str | None) -> Routed:
    """The routed change with the reviewer's structured brief, the only source of a brief change: a brief
    a router read into free text is dropped (a sentence about the background must not rewrite the brief)."""
    change = routed.change.model_copy(update={"brief": brief})
    notes = [*routed.notes, "brief: replaced by the reviewer's brief"] if brief else routed.notes
    return routed.model_copy(update={"change": change, "notes": notes})


def _apply(ident: uuid.UUID, routed: Routed) -> tuple[str, list[Task]]:
    with session_scope() as session:
        feedback = session.get(Feedback, ident)
        campaign = lock_campaign(session, feedback.campaign_id) if feedback else None
        if feedback is None or campaign is None:
            return "skipped", []
        session.refresh(feedback)  # read again under the campaign lock: another delivery may have applied it
        if feedback.status != FeedbackStatus.ROUTING:
            return "skipped", []
        if campaign.status not in TERMINAL_STATUSES or feedback.review_round != campaign.review_round + 1:
            # the gateway accepts feedback only on a finished campaign, for its next review round
            feedback.status, feedback.error = FeedbackStatus.FAILED, "the campaign moved on before it was routed"
            return FeedbackStatus.FAILED.value, []
        for row in _call_rows(campaign, feedback, routed):
            session.merge(row)
        if routed.change.is_empty():
            _not_understood(campaign, feedback, routed)
            return FeedbackStatus.NOT_UNDERSTOOD.value, []
        tasks = review.start_round(session, campaign, feedback, routed)
        return FeedbackStatus.APPLIED.value, tasks


def _call_rows(campaign: Campaign, feedback: Feedback, routed: Routed) -> list[LlmCall]:
    """The hosted router's completions in the campaign's llm_calls (its cost shows with the stages'); ids
    from (feedback, index), so a redelivered route rewrites them instead of counting twice."""
    rows = []
    for index, call in enumerate(routed.calls):
        row = LlmCall(
            id=uuid.uuid5(feedback.id, f"llm:feedback:{index}"),
            tenant_id=campaign.tenant_id,
            campaign_id=campaign.id,
            stage="feedback",
            round=campaign.round,  # the last round before the review round it starts
            backend=str(call.get("backend") or routed.router),
            model=str(call.get("model") or routed.model),
            prompt_version=routed.prompt_version,
            attempt=str(call.get("attempt") or "first"),
            latency_ms=float(call.get("latency_ms") or 0.0),
            tokens_in=int(call.get("tokens_in") or 0),
            tokens_out=int(call.get("tokens_out") or 0),
            cost_usd=call.get("cost_usd"),
        )
        metrics.observe_llm_call(row.backend, row.model, row.tokens_in, row.tokens_out, row.cost_usd)
        rows.append(row)
    return rows


def _not_understood(campaign: Campaign, feedback: Feedback, routed: Routed) -> None:
    """Nothing routable: no round starts; the reviewer sees which sentences were not understood."""
    feedback.status, feedback.router, feedback.routed_at = FeedbackStatus.NOT_UNDERSTOOD, routed.router, now()
    feedback.change = routed.change.model_dump(mode="json")
    feedback.not_understood, feedback.notes = list(routed.not_understood), list(routed.notes)
    campaign.review_state = ReviewState.PENDING


def record_error(feedback_id: str, error: str) -> None:
    """The router's last error, visible on the feedback while it is retried."""
    with session_scope() as session:
        feedback = session.get(Feedback, uuid.UUID(feedback_id))
        if feedback is not None and feedback.status == FeedbackStatus.ROUTING:
            feedback.error = error[:2000]
