"""GET /v1/campaigns/{id} on the event loop: the six reads of a campaign view in one pipeline (shared.db.aio).

The status poll is the gateway's most frequent request. Through the ORM it cost six statements built, executed
and loaded one by one in the thread pool; here the same queries go out together as prepared statements (one
round trip), their rows load as the named tuples below, and services/gateway/campaigns/views.py builds the same
CampaignRead from them as from ORM rows. Each tuple names the columns the view reads, in the order of its SELECT.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, NamedTuple

from psycopg.rows import class_row

from services.gateway.campaigns import views
from services.gateway.campaigns.schemas import CampaignRead
from services.gateway.errors import not_found
from shared.config import Settings
from shared.db import aio
from shared.storage import Storage


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


_CAMPAIGN = """SELECT id, tenant_id, brand_id, brief, product_asset_ids, sizes, safe_zones, top_k, qc_policy,
    max_retry_attempts, max_prompt_revisions, webhook_url, push_urls, status, priority, current_stage, round,
    review_round, review_state, state, error, screening, copy, created_at, updated_at, completed_at
FROM campaigns WHERE id = %(id)s AND tenant_id = %(tenant_id)s"""

_STAGE_RUNS = """SELECT campaign_id, stage, status, round, count(*), min(started_at), max(finished_at)
FROM stage_runs WHERE tenant_id = %(tenant_id)s AND campaign_id = %(id)s
GROUP BY campaign_id, stage, status, round"""

# the current review round's results (ranked) with their candidates, as views._results selects them: ResultRow's
# columns, then CandidateRow's
_RESULTS = """SELECT r.id, r.campaign_id, r.candidate_id, r.review_round, r.rank, r.decision, r.decided_by,
    r.decided_at, r.fully_checked, r.needs_review, r.review,
    k.id, k.placement, k.integrity, k.image_key, k.layer_key, k.aesthetic, k.qc
FROM results r JOIN campaigns c ON c.id = r.campaign_id JOIN candidates k ON k.id = r.candidate_id
WHERE r.tenant_id = %(tenant_id)s AND r.campaign_id = %(id)s AND r.review_round = c.review_round
ORDER BY r.rank"""
_RESULT_COLUMNS = len(ResultRow._fields)

_LLM_USAGE = """SELECT campaign_id, count(*), sum(tokens_in), sum(tokens_out), coalesce(sum(cost_usd), 0.0),
    sum(latency_ms)
FROM llm_calls WHERE tenant_id = %(tenant_id)s AND campaign_id = %(id)s GROUP BY campaign_id"""

_ROUND_COUNTS = """SELECT campaign_id, review_round, count(*), count(*) FILTER (WHERE decision = 'approved'),
    count(*) FILTER (WHERE decision = 'rejected')
FROM results WHERE tenant_id = %(tenant_id)s AND campaign_id = %(id)s GROUP BY campaign_id, review_round"""

_FEEDBACK = """SELECT id, campaign_id, review_round, text, reasons, reviewer, status, change, not_understood, notes,
    router, entry_stage, first_round, created_at
FROM feedback WHERE tenant_id = %(tenant_id)s AND campaign_id = %(id)s"""


async def read_campaign(
    settings: Settings, storage: Storage, tenant_id: uuid.UUID, campaign_id: uuid.UUID
) -> CampaignRead:
    """The campaign's view, every query tenant-scoped; 404 when the tenant has no such campaign."""
    ids = {"id": campaign_id, "tenant_id": tenant_id}
    found, runs, results, usage, counts, feedback = await aio.fetch_all(
        settings,
        [
            aio.Read(_CAMPAIGN, ids, class_row(CampaignRow)),
            aio.Read(_STAGE_RUNS, ids),
            aio.Read(_RESULTS, ids),
            aio.Read(_LLM_USAGE, ids),
            aio.Read(_ROUND_COUNTS, ids),
            aio.Read(_FEEDBACK, ids, class_row(FeedbackRow)),
        ],
    )
    if not found:
        raise not_found("Campaign")
    campaign: CampaignRow = found[0]
    joined = [
        (ResultRow._make(r[:_RESULT_COLUMNS]), CandidateRow._make(r[_RESULT_COLUMNS:]), campaign.sizes) for r in results
    ]
    reads = views.result_reads(storage, joined)
    return views.view(
        campaign,
        views.stage_tallies([campaign], runs).get(campaign.id, {}),
        reads.get(campaign.id, []),
        settings,
        views.llm_usage(usage).get(campaign.id),
        views.round_tallies(counts, feedback).get(campaign.id),
    )
