"""Delivery target request and response bodies: a brand's S3-compatible bucket/prefix."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr, StringConstraints

from services.gateway.webhook_targets import WebhookUrl


def _clean_prefix(value: str) -> str:
    """A relative key prefix: no leading slash, no empty, "." or ".." segment (keys stay inside it)."""
    if value.startswith("/"):
        raise ValueError("must not start with a slash")
    trimmed = value.rstrip("/")
    if trimmed and any(part in ("", ".", "..") for part in trimmed.split("/")):
        raise ValueError('must not contain empty, "." or ".." segments')
    return trimmed


# S3's bucket naming rules (lower case, digits, dots, hyphens; 3-63 characters).
Bucket = Annotated[str, StringConstraints(pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")]
Prefix = Annotated[str, StringConstraints(max_length=500, pattern=r"^[^\x00-\x1f\\]*$"), AfterValidator(_clean_prefix)]
Region = Annotated[str, StringConstraints(pattern=r"^[a-z0-9-]{1,50}$")]
KeyId = Annotated[str, StringConstraints(min_length=1, max_length=200, pattern=r"^\S+$")]


class DeliveryTargetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["s3"] = "s3"
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    bucket: Bucket
    prefix: Prefix = Field(default="", description="Objects go to <prefix>/<campaign id>/rank-<n>.png and .json.")
    region: Region = "us-east-1"
    endpoint_url: WebhookUrl | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, R2...); AWS if unset."
    )
    access_key_id: KeyId
    secret_access_key: SecretStr = Field(min_length=1, max_length=200)
    session_token: SecretStr | None = Field(default=None, min_length=1, max_length=4096)


class S3Config(BaseModel):
    bucket: str
    prefix: str
    region: str
    endpoint_url: str | None


class DeliveryTargetRead(BaseModel):
    id: uuid.UUID
    brand_id: uuid.UUID
    kind: str
    name: str
    config: S3Config
    access_key_id: str = Field(description="Masked: only its last 4 characters. The secret is never returned.")
    enabled: bool
    created_at: datetime
