"""Review rounds: a routed feedback starts the campaign's next review round at the stage that must change.

The campaign keeps the cumulative change of every review round so far in campaign.state["review"]
(`ReviewRecord`): the stage readers (retrieve, caption, plan) apply it, and flow.fan_out records the
stages the latest change cannot affect as reused instead of running them. Runs inside the routing
transaction with the campaign row locked; returns the tasks to send after commit.
"""

from __future__ import annotations

from typing import Protocol

from pydantic import BaseModel
from sqlalchemy.orm import Session

from shared.db.models import Campaign, CampaignStatus, Feedback, FeedbackStatus
from shared.review import Change
from workers.engine import flow
from workers.engine.context import Task, now

STATE_KEY = "review"
# QC change -> the campaign's qc_policy (shared.qc: strict relaxes nothing, flexible may relax what the brand allows)
QC_POLICIES = {1: "strict", -1: "flexible"}


class RoutedChange(Protocol):
    """What the feedback router answered (workers.language.feedback.Routed has this shape)."""

    change: Change
    not_understood: list[str]
    router: str
    notes: list[str]


class ReviewRecord(BaseModel):
    """campaign.state["review"]: the current review round and what it changed (visible in the campaign)."""

    review_round: int
    feedback_id: str
    change: Change  # cumulative over every review round: the readers apply all of it
    latest: Change  # this review round's own change: where it started and what it reused
    entry_stage: str
    first_round: int  # the first stage-run round of this review round
    reused: list[str]  # stages carried over from the review round before, never run in this one
    from_review_round: int

    @classmethod
    def of(cls, campaign: Campaign) -> ReviewRecord | None:
        value = (campaign.state or {}).get(STATE_KEY)
        return cls.model_validate(value) if value else None


def current_change(campaign: Campaign) -> Change | None:
    """The cumulative change the stages of this campaign apply (None before any feedback was applied)."""
    record = ReviewRecord.of(campaign)
    return record.change if record else None


def start_round(session: Session, campaign: Campaign, feedback: Feedback, routed: RoutedChange) -> list[Task]:
    """Start feedback's review round: the cumulative change recorded, the campaign running again from the
    change's entry stage in a new stage-run round, the loop reset, the feedback marked applied."""
    latest: Change = routed.change
    previous = current_change(campaign) or Change()
    cumulative = previous.merged(latest)
    entry, first_round = latest.entry_stage(), campaign.round + 1
    record = ReviewRecord(
        review_round=feedback.review_round,
        feedback_id=str(feedback.id),
        change=cumulative,
        latest=latest,
        entry_stage=entry,
        first_round=first_round,
        reused=sorted(latest.reused_stages()),
        from_review_round=campaign.review_round,
    )
    _restart(campaign, record, cumulative)
    _applied(feedback, routed, entry, first_round)
    return flow.fan_out(session, campaign, entry, first_round)


def _restart(campaign: Campaign, record: ReviewRecord, cumulative: Change) -> None:
    campaign.state = {**(campaign.state or {}), STATE_KEY: record.model_dump(mode="json")}
    campaign.review_round = record.review_round
    campaign.status, campaign.current_stage = CampaignStatus.RUNNING, record.entry_stage
    campaign.completed_at, campaign.error, campaign.round = None, None, record.first_round
    loop = flow.LoopState.of(campaign)
    loop.attempt = loop.revision = 0
    if record.entry_stage != "rank":  # a QC-only change re-ranks the pool the reviewer saw; others regenerate
        loop.pool_from_round = record.first_round
    loop.save(campaign)
    if cumulative.qc:
        campaign.qc_policy = QC_POLICIES[cumulative.qc]
    if cumulative.sizes:
        campaign.sizes = [size.model_dump() for size in cumulative.sizes]


def _applied(feedback: Feedback, routed: RoutedChange, entry: str, first_round: int) -> None:
    feedback.status = FeedbackStatus.APPLIED
    feedback.change = routed.change.model_dump(mode="json")
    feedback.not_understood, feedback.notes = list(routed.not_understood), list(routed.notes)
    feedback.router = routed.router
    feedback.entry_stage, feedback.first_round = entry, first_round
    feedback.routed_at, feedback.error = now(), None
