"""GET /v1/limits"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field


class RateLimitRead(BaseModel):
    policy: str = Field(description="`default`: every request; `writes`: every request but GET, HEAD, OPTIONS.")
    per_second: float = Field(description="Tokens added per second.")
    burst: int = Field(description="Requests at once (the bucket's size, `q` in RateLimit-Policy).")
    window_seconds: int = Field(description="Seconds an empty bucket takes to fill (`w`).")
    remaining: int | None = Field(description="Requests left now for the calling key; null when not measured.")
    reset_seconds: int | None = Field(description="Seconds until the bucket is full again.")


class ConcurrentRead(BaseModel):
    limit: int
    used: int = Field(description="Campaigns not yet completed, partial, failed or cancelled.")
    remaining: int


class ImagesRead(BaseModel):
    period: Literal["day", "month"] = Field(description="UTC calendar day or month.")
    limit: int
    used: int = Field(description="Candidates generated, or reserved by campaigns still running.")
    remaining: int
    reset: datetime = Field(description="When the period ends and its count starts again.")


class LimitsRead(BaseModel):
    enforced: bool = Field(description="false when this deployment runs without limits.")
    rate_limits: list[RateLimitRead]
    concurrent_campaigns: ConcurrentRead
    images: list[ImagesRead]
    gpu_share: float = Field(
        description="This tenant's weight in the fair share of the GPU workers: with others waiting, its share of "
        "GPU slots is gpu_share over the sum of the waiting tenants' shares."
    )
