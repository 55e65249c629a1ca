"""Webhook endpoint request and response bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from services.gateway.webhook_targets import WebhookUrl
from shared.db.models import OutboxStatus
from shared.webhooks import EVENT_TYPES


def _known_pattern(pattern: str) -> str:
    # A typo ("campaign.complete") would silently never fire; reject patterns matching no event.
    if not any(fnmatchcase(event, pattern) for event in EVENT_TYPES):
        raise ValueError(f"matches no event type; known: {', '.join(EVENT_TYPES)}")
    return pattern


EventPattern = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100), AfterValidator(_known_pattern)
]


class WebhookEndpointCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: WebhookUrl
    event_types: list[EventPattern] = Field(
        default_factory=lambda: ["*"],
        min_length=1,
        max_length=50,
        description='Event types or wildcards such as "campaign.*".',
    )
    description: str = Field(default="", max_length=500)
    v1a: bool = Field(
        default=False,
        strict=True,
        description="Also sign with ed25519 (Standard Webhooks `v1a`): receivers verify "
        "with the endpoint's public_key and hold no secret that could forge events.",
    )


class WebhookEndpointUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: WebhookUrl | None = None
    event_types: list[EventPattern] | None = Field(default=None, min_length=1, max_length=50)
    description: str | None = Field(default=None, max_length=500)
    enabled: bool | None = Field(
        default=None,
        strict=True,
        description="true re-enables a disabled endpoint (and clears its failure record); false pauses it.",
    )


class RotateSecret(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_period_seconds: int | None = Field(
        default=None,
        strict=True,
        ge=0,
        le=7 * 86400,
        description="How long the old secret keeps signing next to the new one "
        "(default ONBRAND_WEBHOOK_ROTATION_GRACE_SECONDS, one day); 0 ends it at once.",
    )


class WebhookEndpointRead(BaseModel):
    id: uuid.UUID
    url: str
    event_types: list[str]
    description: str
    enabled: bool
    disabled_at: datetime | None = Field(
        description="When the endpoint was disabled (410 Gone, or failing "
        "for ONBRAND_WEBHOOK_DISABLE_AFTER_SECONDS), if it was."
    )
    disabled_reason: str | None
    failing_since: datetime | None = Field(description="First failed delivery since the last success.")
    public_key: str | None = Field(description="whpk_... ed25519 public key of v1a signatures, if enabled.")
    previous_secret_expires_at: datetime | None = Field(
        description="Until then the previous secret also signs (after a rotation)."
    )
    created_at: datetime


class WebhookEndpointCreated(WebhookEndpointRead):
    secret: str = Field(description="whsec_... signing secret (Standard Webhooks); shown only here.")


class AttemptRead(BaseModel):
    attempt: int
    outcome: Literal["delivered", "retry", "failed"]
    status_code: int | None
    latency_ms: float
    error: str | None = Field(description="A stable code and a sentence; never internal network detail.")
    response_body: str | None = Field(description="The first 2 kB of the receiver's response.")
    retry_in_seconds: int | None
    created_at: datetime


class DeliveryRead(BaseModel):
    id: uuid.UUID
    event_id: str = Field(description="webhook-id: the same across retries and replays (deduplicate on it).")
    event_type: str
    campaign_id: uuid.UUID | None
    status: OutboxStatus
    attempts: int
    next_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    replay_of: uuid.UUID | None
    created_at: datetime
    delivered_at: datetime | None
    attempt_log: list[AttemptRead]


DeliveryStatusQuery = Literal["pending", "delivered", "failed"]
