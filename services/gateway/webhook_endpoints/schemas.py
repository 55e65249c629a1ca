"""Webhook endpoint request and response bodies."""
from __future__ import annotations

import uuid
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from services.gateway.webhook_targets import WebhookUrl
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
    event_types: list[EventPattern] = Field(default_factory=lambda: ["*"], min_length=1, max_length=50,
                                            description='Event types or wildcards such as "campaign.*".')
    description: str = Field("", max_length=500)


class WebhookEndpointRead(BaseModel):
    id: uuid.UUID
    url: str
    event_types: list[str]
    description: str
    enabled: bool
    created_at: datetime


class WebhookEndpointCreated(WebhookEndpointRead):
    secret: str = Field(description="whsec_... signing secret (Standard Webhooks); shown only here.")
