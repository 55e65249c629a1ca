"""The rows of a campaign view as the async read path loads them (services/gateway/campaigns/reads.py): each
named tuple holds the columns services/gateway/campaigns/views.py reads of its ORM model, by the same names."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, NamedTuple


class CampaignRow(NamedTuple):
    id: uuid.UUID
    tenant_id: uuid.UUID
    brand_id: uuid.UUID
    brief: str
    product_asset_ids: list[Any]
    sizes: list[Any]
    safe_zones: list[Any]
    top_k: int
    qc_policy: str
    max_retry_attempts: int
    max_prompt_revisions: int
    webhook_url: str | None
    push_urls: list[Any] | None
    status: str
    priority: str
    current_stage: str | None
    round: int
    review_round: int
    review_state: str | None
    state: dict[str, Any]
    error: dict[str, Any] | None
    screening: dict[str, Any] | None
    copy: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None


class ResultRow(NamedTuple):
    id: uuid.UUID
    campaign_id: uuid.UUID
    candidate_id: uuid.UUID
    review_round: int
    rank: int
    decision: str | None
    decided_by: str | None
    decided_at: datetime | None
    fully_checked: bool
    needs_review: bool
    review: dict[str, Any]


class CandidateRow(NamedTuple):
    id: uuid.UUID
    placement: dict[str, Any]
    integrity: dict[str, Any]
    image_key: str | None
    layer_key: str | None
    aesthetic: float | None
    qc: dict[str, Any]


class FeedbackRow(NamedTuple):
    id: uuid.UUID
    campaign_id: uuid.UUID
    review_round: int
    text: str
    reasons: list[Any]
    reviewer: str
    status: str
    change: dict[str, Any]
    not_understood: list[Any]
    notes: list[Any]
    router: str | None
    entry_stage: str | None
    first_round: int | None
    created_at: datetime
