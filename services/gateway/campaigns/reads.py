"""GET /v1/campaigns/{id} on the event loop: a campaign view from one prepared statement (shared.db.aio).

The status poll is the gateway's most frequent request. Through the ORM it cost six statements built, executed and
loaded one by one in the thread pool; here one statement returns the campaign's row with its stage-run tallies,
current results, LLM usage, review-round counts and feedback beside it (six statements in a pipeline still cost
twice the Python of one). The rows load as the named tuples of rows.py, and services/gateway/campaigns/views.py builds
the same CampaignRead from them as from ORM rows.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from services.gateway.campaigns import views
from services.gateway.campaigns.rows import CampaignRow, CandidateRow, FeedbackRow, ResultRow
from services.gateway.campaigns.schemas import CampaignRead
from services.gateway.errors import not_found
from shared.config import Settings
from shared.db import aio
from shared.storage import Storage

# One statement: the campaign's columns (CampaignRow's, in order), then what the view needs from five other tables as
# JSON arrays built beside it, each tenant-scoped like the campaign. Postgres writes ids and times into the JSON as
# text; _rows gives them their types back. Aggregates as views.py's ORM queries compute them.
_CAMPAIGN = """SELECT c.id, c.tenant_id, c.brand_id, c.brief, c.product_asset_ids, c.sizes, c.safe_zones, c.top_k,
    c.qc_policy, c.max_retry_attempts, c.max_prompt_revisions, c.webhook_url, c.push_urls, c.status, c.priority,
    c.current_stage, c.round, c.review_round, c.review_state, c.state, c.error, c.screening, c.copy, c.created_at,
    c.updated_at, c.completed_at,
    (SELECT json_agg(json_build_array(s.stage, s.status, s.round, s.n, s.started, s.finished))
        FROM (SELECT stage, status, round, count(*) AS n, min(started_at) AS started, max(finished_at) AS finished
            FROM stage_runs WHERE tenant_id = c.tenant_id AND campaign_id = c.id
            GROUP BY stage, status, round) s) AS runs,
    (SELECT json_agg(json_build_array(r.id, r.candidate_id, r.review_round, r.rank, r.decision, r.decided_by,
            r.decided_at, r.fully_checked, r.needs_review, r.review,
            k.placement, k.integrity, k.image_key, k.layer_key, k.aesthetic, k.qc) ORDER BY r.rank)
        FROM results r JOIN candidates k ON k.id = r.candidate_id AND k.tenant_id = r.tenant_id
        WHERE r.tenant_id = c.tenant_id AND r.campaign_id = c.id AND r.review_round = c.review_round) AS results,
    (SELECT json_build_array(count(*), sum(tokens_in), sum(tokens_out), coalesce(sum(cost_usd), 0.0),
            sum(latency_ms))
        FROM llm_calls WHERE tenant_id = c.tenant_id AND campaign_id = c.id) AS llm,
    (SELECT json_agg(json_build_array(x.review_round, x.n, x.approved, x.rejected))
        FROM (SELECT review_round, count(*) AS n, count(*) FILTER (WHERE decision = 'approved') AS approved,
                count(*) FILTER (WHERE decision = 'rejected') AS rejected
            FROM results WHERE tenant_id = c.tenant_id AND campaign_id = c.id GROUP BY review_round) x) AS rounds,
    (SELECT json_agg(json_build_array(f.id, f.review_round, f.text, f.reasons, f.reviewer, f.status, f.change,
            f.not_understood, f.notes, f.router, f.entry_stage, f.first_round, f.created_at))
        FROM feedback f WHERE f.tenant_id = c.tenant_id AND f.campaign_id = c.id) AS feedback
FROM campaigns c WHERE c.id = %(id)s AND c.tenant_id = %(tenant_id)s"""
_COLUMNS = len(CampaignRow._fields)


def _time(text: str | None) -> datetime | None:
    return None if text is None else datetime.fromisoformat(text)


@dataclass
class _Rows:
    """The campaign's row and its related rows, typed as views.py takes them."""

    campaign: CampaignRow
    runs: list[tuple[uuid.UUID, str, str, int, int, datetime | None, datetime | None]]
    results: list[tuple[ResultRow, CandidateRow, list[Any] | None]]
    llm: list[tuple[uuid.UUID, int, int, int, float | None, float]]
    rounds: list[tuple[uuid.UUID, int, int, int, int]]
    feedback: list[FeedbackRow]


def _rows(row: tuple[Any, ...]) -> _Rows:
    campaign = CampaignRow._make(row[:_COLUMNS])
    cid = campaign.id
    runs, results, llm, rounds, feedback = row[_COLUMNS:]
    calls, tokens_in, tokens_out, cost, latency = llm
    return _Rows(
        campaign,
        [
            (cid, stage, status, rnd, n, _time(started), _time(ended))
            for stage, status, rnd, n, started, ended in runs or []
        ],
        [_result(cid, r, campaign.sizes) for r in results or []],
        [(cid, calls, tokens_in, tokens_out, cost, latency)] if calls else [],  # as GROUP BY: no calls, no row
        [(cid, review_round, n, approved, rejected) for review_round, n, approved, rejected in rounds or []],
        [_feedback(cid, f) for f in feedback or []],
    )


def _result(cid: uuid.UUID, r: list[Any], sizes: list[Any]) -> tuple[ResultRow, CandidateRow, list[Any]]:
    rid, candidate_id, review_round, rank, decision, decided_by, decided_at, fully_checked, needs_review, review = r[
        :10
    ]
    candidate_id = uuid.UUID(candidate_id)
    result = ResultRow(
        uuid.UUID(rid), cid, candidate_id, review_round, rank, decision, decided_by, _time(decided_at),
        fully_checked, needs_review, review,
    )  # fmt: skip
    return result, CandidateRow(candidate_id, *r[10:]), sizes


def _feedback(cid: uuid.UUID, f: list[Any]) -> FeedbackRow:
    fid, review_round, text, reasons, reviewer, status, change, not_understood, notes, router, entry, first, at = f
    return FeedbackRow(
        uuid.UUID(fid), cid, review_round, text, reasons, reviewer, status, change, not_understood, notes, router,
        entry, first, datetime.fromisoformat(at),
    )  # fmt: skip


async def read_campaign(
    settings: Settings, storage: Storage, tenant_id: uuid.UUID, campaign_id: uuid.UUID
) -> CampaignRead:
    """The campaign's view in one statement; 404 when the tenant has no such campaign."""
    found = await aio.fetch(settings, aio.Read(_CAMPAIGN, {"id": campaign_id, "tenant_id": tenant_id}))
    if not found:
        raise not_found("Campaign")
    rows = _rows(found[0])
    cid = rows.campaign.id
    return views.view(
        rows.campaign,
        views.stage_tallies([rows.campaign], rows.runs).get(cid, {}),
        views.result_reads(storage, rows.results).get(cid, []),
        settings,
        views.llm_usage(rows.llm).get(cid),
        views.round_tallies(rows.rounds, rows.feedback).get(cid),
    )
