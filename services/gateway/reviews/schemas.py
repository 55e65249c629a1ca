"""Review request and response bodies: decisions, feedback, review links."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from shared.db.models import FeedbackStatus, ResultDecision, ReviewState
from shared.review import Reason

Comment = Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)]
ReviewerName = Annotated[
    str | None,
    Field(None, max_length=200, description="Who is deciding, recorded next to the API key's prefix."),
]
Reasons = Annotated[list[Reason], Field(default_factory=list, max_length=len(Reason))]


class ApproveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    comment: Comment = ""
    reviewer: ReviewerName = None


class RejectBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reasons: Reasons
    comment: Comment = ""
    reviewer: ReviewerName = None


class DecisionRead(BaseModel):
    """One approve or reject (the history keeps every one; the result shows the latest)."""

    id: uuid.UUID
    campaign_id: uuid.UUID
    result_id: uuid.UUID
    rank: int | None
    review_round: int
    decision: ResultDecision
    reasons: list[Reason]
    comment: str
    reviewer: str
    created_at: datetime


class DecisionMade(DecisionRead):
    review_state: ReviewState | None = Field(description="The campaign's review state now.")


class FeedbackCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: Annotated[str, StringConstraints(strip_whitespace=True, max_length=2000)] = ""
    reasons: Reasons
    reviewer: ReviewerName = None
    brief: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)] | None = Field(
        None,
        description="A new brief that replaces the campaign's (its request's or the inferred one): the next review "
        "round starts at decompose. Screened by the input guardrails like a campaign's brief. Free text never "
        "changes the brief; only this field does.",
        exclude_if=lambda value: value is None,  # a body without it hashes as before (stored Idempotency-Keys)
    )


class FeedbackLinks(BaseModel):
    self: str
    campaign: str


class FeedbackRead(BaseModel):
    """A request for a new review round and what the router made of it."""

    id: uuid.UUID
    campaign_id: uuid.UUID
    review_round: int = Field(description="The review round it starts.")
    text: str
    reasons: list[Reason]
    reviewer: str
    status: FeedbackStatus
    change: dict[str, Any] = Field(
        description="The routed change (shared.review.Change); until routed, only the structured brief if one was sent."
    )
    not_understood: list[Any] = Field(description="What the router could not route, said instead of guessed.")
    notes: list[Any] = Field(description="What each routed sentence or reason became, one line each.")
    router: str | None
    entry_stage: str | None = Field(description="The stage the new review round starts at.")
    first_round: int | None
    error: str | None
    created_at: datetime
    routed_at: datetime | None
    links: FeedbackLinks


class ReviewLinkCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reviewer: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    expires_in_hours: int = Field(72, ge=1, le=720, strict=True)


class ReviewLinkRead(BaseModel):
    id: uuid.UUID
    campaign_id: uuid.UUID
    reviewer: str
    status: Literal["active", "expired", "revoked"]
    expires_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None
    created_at: datetime


class ReviewLinkCreated(ReviewLinkRead):
    url: str = Field(description="The review page; open it in a browser. Shown once.")
    token: str = Field(description="Shown once, never stored.")
