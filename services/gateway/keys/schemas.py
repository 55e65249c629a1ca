"""API key request and response bodies. No body ever carries a key's hash; only creation and rotation
carry the key itself (shown once)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from shared.tenants import DEFAULT_OVERLAP_S, MAX_OVERLAP_S, Scope

KeyName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: KeyName = Field(description="What the key is for (e.g. the integration using it).")
    scopes: list[Scope] = Field(
        min_length=1,
        max_length=3,
        description="read (GET/HEAD), write (every other method), admin (/v1/keys). Scopes are independent: "
        "a key that manages keys and reads campaigns needs both admin and read.",
    )


class KeyRotate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    overlap_seconds: int = Field(
        default=DEFAULT_OVERLAP_S,
        ge=0,
        le=MAX_OVERLAP_S,
        description="How long the old key keeps working next to the new one (default a day, at most 7).",
    )


class KeyRead(BaseModel):
    id: uuid.UUID
    prefix: str = Field(description="The key's first 12 characters, enough to recognise it.")
    name: str
    scopes: list[Scope]
    created_at: datetime
    last_used_at: datetime | None = Field(description="Updated at most once a minute.")
    expires_at: datetime | None = Field(description="Set when the key was rotated: the end of the overlap.")
    revoked_at: datetime | None


class KeyCreated(KeyRead):
    key: str = Field(description="The API key. Shown only in this response: store it now.")
