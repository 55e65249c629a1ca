"""The campaign resource as clients see it: request, per-stage progress and ranked results.

Views are built for a whole page of campaigns with one query per related table, not one
per campaign.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any, TypeVar, cast

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from services.gateway.campaigns.rows import CampaignRow, CandidateRow, FeedbackRow, ResultRow
from services.gateway.campaigns.schemas import (
    CampaignLinks,
    CampaignRead,
    CampaignRequest,
    CandidateRead,
    CreativeRead,
    LlmUsage,
    PushRead,
    PushSummary,
    QcPolicy,
    ResultRead,
    ResultReview,
    ResultsChecked,
    ResultSize,
    ReviewRound,
    RoundFeedback,
    SafeZone,
    SizeRead,
    SizeResults,
    StageRead,
    StageStatus,
)
from shared.brand_kit import CampaignCopy
from shared.config import Settings
from shared.db.models import (
    TERMINAL_STATUSES,
    Campaign,
    Candidate,
    DamPush,
    Feedback,
    LlmCall,
    Result,
    ResultDecision,
    StageRun,
)
from shared.presets import result_size, size_ranks
from shared.provenance import delivered_creative_key, delivered_key
from shared.qc import ResultFlags, review_summary
from shared.review import round_window
from shared.stages import PIPELINE
from shared.stages import progress as stage_progress
from shared.storage import Storage

_FINISHED: tuple[StageStatus, ...] = ("succeeded", "failed", "skipped")
ViewT = TypeVar("ViewT", bound=CampaignRead)


@dataclass
class StageTally:
    """Stage-run rows of one (campaign, stage), counted by status over every item and round."""

    counts: Counter[str] = field(default_factory=Counter)
    started_at: datetime | None = None
    finished_at: datetime | None = None

    def add(self, status: str, count: int, started: datetime | None, finished: datetime | None) -> None:
        self.counts[status] += count
        if started and (self.started_at is None or started < self.started_at):
            self.started_at = started
        if finished and (self.finished_at is None or finished > self.finished_at):
            self.finished_at = finished


def stage_status(tally: StageTally, terminal: bool) -> StageStatus:
    counts, total = tally.counts, sum(tally.counts.values())
    if total == 0:
        return "skipped" if terminal else "pending"  # a finished campaign will never run it
    finished = sum(counts[s] for s in _FINISHED)
    if counts["running"] or (finished < total and not terminal):
        return "running" if counts["running"] or finished else "pending"
    if counts["skipped"] == total:
        return "skipped"
    if counts["succeeded"] + counts["skipped"] == total:
        return "succeeded"
    return "failed" if counts["failed"] else "skipped"  # terminal with items never run (cancelled)


def stage_view(name: str, tally: StageTally, terminal: bool) -> StageRead:
    status = stage_status(tally, terminal)
    finished = sum(tally.counts[s] for s in _FINISHED)
    return StageRead(
        stage=name,
        status=status,
        done=finished,
        total=sum(tally.counts.values()),
        started_at=tally.started_at,
        finished_at=tally.finished_at if status in _FINISHED else None,
    )


@cache
def _unrun_stage_view(name: str, terminal: bool) -> StageRead:
    """A stage without runs: the same view every time (a new campaign's every stage, most of a running one's), built
    once and shared (views are only serialised, never changed)."""
    return stage_view(name, StageTally(), terminal)


def progress(stages: Sequence[StageRead], terminal: bool) -> float:
    """1.0 once terminal; else the finished share of the stages this campaign runs (shared.stages.progress)."""
    return stage_progress([s.stage for s in stages if s.status in _FINISHED], terminal=terminal)


def _tallies(session: Session, campaigns: Sequence[Campaign]) -> dict[uuid.UUID, dict[str, StageTally]]:
    tenant_id, ids = campaigns[0].tenant_id, [c.id for c in campaigns]
    stmt = (
        select(
            StageRun.campaign_id,
            StageRun.stage,
            StageRun.status,
            StageRun.round,
            func.count(),
            func.min(StageRun.started_at),
            func.max(StageRun.finished_at),
        )
        .where(StageRun.tenant_id == tenant_id, StageRun.campaign_id.in_(ids))
        .group_by(StageRun.campaign_id, StageRun.stage, StageRun.status, StageRun.round)
    )
    return stage_tallies(campaigns, session.execute(stmt))


def stage_tallies(
    campaigns: Sequence[Campaign | CampaignRow],
    runs: Iterable[tuple[uuid.UUID, str, str, int, int, datetime | None, datetime | None]],
) -> dict[uuid.UUID, dict[str, StageTally]]:
    """Per campaign and stage, its runs of the current review round (shared.review.round_window), from stage-run
    counts per (campaign, stage, status, round); a stage before the round's entry keeps its earlier runs (it was
    done then and is not redone)."""
    windows = {c.id: round_window(c.state) for c in campaigns}
    tallies: dict[uuid.UUID, dict[str, StageTally]] = defaultdict(lambda: defaultdict(StageTally))
    earlier: dict[uuid.UUID, dict[str, StageTally]] = defaultdict(lambda: defaultdict(StageTally))
    for campaign_id, stage, status, rnd, count, started, finished in runs:
        first_round, _ = windows[campaign_id]
        (tallies if rnd >= first_round else earlier)[campaign_id][stage].add(status, count, started, finished)
    for campaign_id, (_, upstream) in windows.items():
        for stage in upstream:
            if stage not in tallies[campaign_id] and stage in earlier[campaign_id]:
                tallies[campaign_id][stage] = earlier[campaign_id][stage]
    return tallies


def _llm_usage(session: Session, tenant_id: uuid.UUID, ids: list[uuid.UUID]) -> dict[uuid.UUID, LlmUsage]:
    stmt = (
        select(
            LlmCall.campaign_id,
            func.count(),
            func.sum(LlmCall.tokens_in),
            func.sum(LlmCall.tokens_out),
            func.coalesce(func.sum(LlmCall.cost_usd), 0.0),
            func.sum(LlmCall.latency_ms),
        )
        .where(LlmCall.tenant_id == tenant_id, LlmCall.campaign_id.in_(ids))
        .group_by(LlmCall.campaign_id)
    )
    return llm_usage(session.execute(stmt))


def llm_usage(rows: Iterable[tuple[uuid.UUID, int, int, int, float | None, float]]) -> dict[uuid.UUID, LlmUsage]:
    """Per campaign: its LLM calls counted, their tokens, cost and latency summed."""
    return {
        cid: LlmUsage(
            calls=n, tokens_in=t_in, tokens_out=t_out, cost_usd=round(cost or 0.0, 6), latency_ms=round(latency, 1)
        )
        for cid, n, t_in, t_out, cost, latency in rows
    }


def _url(storage: Storage, key: str | None) -> str | None:
    return storage.url(key) if key else None


def _results(
    session: Session, storage: Storage, tenant_id: uuid.UUID, ids: list[uuid.UUID], review_round: int | None = None
) -> dict[uuid.UUID, list[ResultRead]]:
    # the current review round's results unless one is named; earlier rounds' stay for the history
    in_round = Result.review_round == (Campaign.review_round if review_round is None else review_round)
    stmt = (
        select(Result, Candidate, Campaign.sizes)
        .join(Candidate, Candidate.id == Result.candidate_id)
        .join(Campaign, Campaign.id == Result.campaign_id)
        .where(Result.tenant_id == tenant_id, Result.campaign_id.in_(ids), in_round)
        .order_by(Result.campaign_id, Result.rank)
    )
    return result_reads(storage, session.execute(stmt))


def result_reads(
    storage: Storage, rows: Iterable[tuple[Result | ResultRow, Candidate | CandidateRow, list[Any] | None]]
) -> dict[uuid.UUID, list[ResultRead]]:
    """Per campaign, its results in rank order from (result, its candidate, the campaign's sizes) rows."""
    results: dict[uuid.UUID, list[ResultRead]] = defaultdict(list)
    for result, cand, sizes in rows:
        results[result.campaign_id].append(
            ResultRead(
                id=result.id,
                review_round=result.review_round,
                rank=result.rank,
                candidate_id=cand.id,
                product_asset_id=(cand.placement or {}).get("product_asset_id"),
                image_url=_url(storage, delivered_key(cand.integrity, cand.image_key)),  # C2PA-signed copy
                layer_url=_url(storage, cand.layer_key),
                placement=cand.placement,
                aesthetic=cand.aesthetic,
                fully_checked=result.fully_checked,
                needs_review=result.needs_review,
                review=ResultReview.model_validate(result.review or {}),
                qc=cand.qc,
                decision=result.decision,
                decided_by=result.decided_by,
                decided_at=result.decided_at,
                size=_size(result_size(sizes or [], cand.placement)),
                creative_url=_url(storage, delivered_creative_key(cand.integrity)),  # C2PA-signed creative
                creative=creative_view(cand.qc),
            )
        )
    for found in results.values():
        groups = [(r.product_asset_id, r.size.label if r.size else None) for r in found]
        for read, size_rank in zip(found, size_ranks(groups), strict=True):
            read.size_rank = size_rank
    return results


def creative_view(qc: dict[str, Any] | None) -> CreativeRead | None:
    """The creative's layout summary (per text: contrast, font size, backing) and OCR verdict from the candidate's
    qc record (None: the campaign has no copy)."""
    found = (qc or {}).get("creative")
    if not found:
        return None
    layout = found.get("layout") or {}
    return CreativeRead.model_validate(
        {"ok": layout.get("ok", False), "reasons": layout.get("reasons") or [], "texts": layout.get("texts") or []}
        | {"ocr": found.get("ocr")}
    )


def _size(found: dict[str, Any] | None) -> ResultSize | None:
    return None if found is None else ResultSize.model_validate(found)


def _requested(entry: dict[str, Any]) -> ResultSize:
    return ResultSize.model_validate(result_size([entry], {"canvas": entry}))


def by_size(campaign: Campaign | CampaignRow, results: Sequence[ResultRead]) -> list[SizeResults]:
    """The results per requested size (and per product, with results of several), in the request's size order;
    a size with no result is listed with none."""
    groups: dict[tuple[str, uuid.UUID | None], SizeResults] = {}
    for entry in campaign.sizes or []:
        size = _requested(entry)
        groups.setdefault((size.label, None), SizeResults(size=size, top_k=campaign.top_k, delivered=0, result_ids=[]))
    for read in results:
        if read.size is None:
            continue
        key = (read.size.label, read.product_asset_id)
        group = groups.pop((read.size.label, None), None) if key not in groups else groups[key]
        group = group or SizeResults(size=read.size, top_k=campaign.top_k, delivered=0, result_ids=[])
        group.product_asset_id = read.product_asset_id
        group.delivered += 1
        group.result_ids.append(read.id)
        groups[key] = group
    order = [_requested(e).label for e in campaign.sizes or []]
    return sorted(groups.values(), key=lambda g: order.index(g.size.label) if g.size.label in order else len(order))


def round_results(session: Session, storage: Storage, campaign: Campaign, review_round: int) -> list[ResultRead]:
    """One review round's results (GET /v1/campaigns/{id}/results?review_round=n), decisions included."""
    return _results(session, storage, campaign.tenant_id, [campaign.id], review_round).get(campaign.id, [])


@dataclass
class RoundTally:
    results: int = 0
    approved: int = 0
    rejected: int = 0
    feedback: RoundFeedback | None = None


def _round_tallies(
    session: Session, tenant_id: uuid.UUID, ids: list[uuid.UUID]
) -> dict[uuid.UUID, dict[int, RoundTally]]:
    """Results and decisions per (campaign, review round), and each round's feedback: two queries a page."""
    approved = func.count(case((Result.decision == ResultDecision.APPROVED, 1)))
    rejected = func.count(case((Result.decision == ResultDecision.REJECTED, 1)))
    counts = (
        select(Result.campaign_id, Result.review_round, func.count(), approved, rejected)
        .where(Result.tenant_id == tenant_id, Result.campaign_id.in_(ids))
        .group_by(Result.campaign_id, Result.review_round)
    )
    feedback = select(Feedback).where(Feedback.tenant_id == tenant_id, Feedback.campaign_id.in_(ids))
    return round_tallies(session.execute(counts), session.scalars(feedback))


def round_tallies(
    counts: Iterable[tuple[uuid.UUID, int, int, int, int]], feedback: Iterable[Feedback | FeedbackRow]
) -> dict[uuid.UUID, dict[int, RoundTally]]:
    """Per campaign and review round: results, approved, rejected (from counts rows) and the round's feedback."""
    tallies: dict[uuid.UUID, dict[int, RoundTally]] = defaultdict(lambda: defaultdict(RoundTally))
    for campaign_id, review_round, total, n_approved, n_rejected in counts:
        tallies[campaign_id][review_round] = RoundTally(total, n_approved, n_rejected)
    for row in feedback:
        tallies[row.campaign_id][row.review_round].feedback = _round_feedback(row)
    return tallies


def _round_feedback(row: Feedback | FeedbackRow) -> RoundFeedback:
    return RoundFeedback(
        id=row.id,
        text=row.text,
        reasons=list(row.reasons or []),
        status=row.status,
        change=row.change or {},
        not_understood=list(row.not_understood or []),
        notes=list(row.notes or []),
        router=row.router,
        entry_stage=row.entry_stage,
        first_round=row.first_round,
        reviewer=row.reviewer,
        created_at=row.created_at,
    )


def review_rounds(campaign: Campaign | CampaignRow, tallies: dict[int, RoundTally]) -> list[ReviewRound]:
    """Every review round so far (and one that feedback asked for), oldest first; none before a delivery."""
    if campaign.review_state is None and not tallies:
        return []
    numbers = sorted(set(range(campaign.review_round + 1)) | set(tallies))
    return [
        ReviewRound(
            review_round=n,
            feedback=(t := tallies.get(n, RoundTally())).feedback,
            results=t.results,
            approved=t.approved,
            rejected=t.rejected,
        )
        for n in numbers
    ]


def checked(results: Sequence[ResultRead]) -> ResultsChecked:
    flags = [
        ResultFlags(fully_checked=r.fully_checked, needs_review=r.needs_review, review=r.review.model_dump())
        for r in results
    ]
    return ResultsChecked.model_validate(review_summary(flags))


def links(settings: Settings, campaign_id: uuid.UUID) -> CampaignLinks:
    base = f"{settings.public_url.rstrip('/')}/v1/campaigns/{campaign_id}"
    return CampaignLinks(
        self=base,
        candidates=f"{base}/candidates",
        report=f"{base}/report",
        pushes=f"{base}/pushes",
        decisions=f"{base}/decisions",
        feedback=f"{base}/feedback",
        review_links=f"{base}/review-links",
    )


def _request(campaign: Campaign | CampaignRow) -> CampaignRequest:
    return CampaignRequest(
        product_asset_ids=campaign.product_asset_ids,
        sizes=[SizeRead.model_validate(s) for s in campaign.sizes],
        safe_zones=[SafeZone.model_validate(z) for z in campaign.safe_zones or []],
        top_k=campaign.top_k,
        qc_policy=cast(QcPolicy, campaign.qc_policy),
        max_retry_attempts=campaign.max_retry_attempts,
        max_prompt_revisions=campaign.max_prompt_revisions,
        priority=campaign.priority,
        webhook_url=campaign.webhook_url,
        push=PushSummary(presigned_urls=len(campaign.push_urls)) if campaign.push_urls else None,
        copy=CampaignCopy.model_validate(campaign.copy) if campaign.copy else None,
    )


def view(
    campaign: Campaign | CampaignRow,
    tallies: dict[str, StageTally],
    results: list[ResultRead],
    settings: Settings,
    llm: LlmUsage | None = None,
    rounds: dict[int, RoundTally] | None = None,
    *,
    model: type[ViewT] = CampaignRead,  # type: ignore[assignment]  # mypy: a TypeVar default
    **extra: Any,
) -> ViewT:
    """The campaign's view; `model` and `extra`: a response that extends it (a creation's CampaignCreated), built
    once rather than copied from a CampaignRead."""
    terminal = campaign.status in TERMINAL_STATUSES
    stages = [
        stage_view(name, tally, terminal) if (tally := tallies.get(name)) else _unrun_stage_view(name, terminal)
        for name in PIPELINE
    ]
    return model(
        id=campaign.id,
        brand_id=campaign.brand_id,
        brief=campaign.brief,
        brief_inferred=(campaign.state or {}).get("brief_inferred"),  # services/gateway/campaigns/brief.py
        status=campaign.status,
        current_stage=campaign.current_stage,
        round=campaign.round,
        review_state=campaign.review_state,
        review_round=campaign.review_round,
        review_rounds=review_rounds(campaign, rounds or {}),
        created_at=campaign.created_at,
        updated_at=campaign.updated_at,
        completed_at=campaign.completed_at,
        request=_request(campaign),
        progress=progress(stages, terminal),
        stages=stages,
        state=campaign.state or {},  # the stages' outputs; the loop's bookkeeping is in campaigns.loop
        results=results,
        results_by_size=by_size(campaign, results),
        checked=checked(results),
        llm=llm or LlmUsage(),
        error=campaign.error,
        links=links(settings, campaign.id),
        screening=campaign.screening,
        **extra,
    )


def campaign_views(
    session: Session, storage: Storage, settings: Settings, campaigns: Sequence[Campaign]
) -> list[CampaignRead]:
    if not campaigns:
        return []
    tenant_id, ids = campaigns[0].tenant_id, [c.id for c in campaigns]
    tallies, results = _tallies(session, campaigns), _results(session, storage, tenant_id, ids)
    usage, rounds = _llm_usage(session, tenant_id, ids), _round_tallies(session, tenant_id, ids)
    return [
        view(c, tallies.get(c.id, {}), results.get(c.id, []), settings, usage.get(c.id), rounds.get(c.id))
        for c in campaigns
    ]


def candidate_view(cand: Candidate, storage: Storage) -> CandidateRead:
    return CandidateRead(
        id=cand.id,
        round=cand.round,
        layout_key=cand.layout_key,
        placement=cand.placement,
        image_url=_url(storage, cand.image_key),
        layer_url=_url(storage, cand.layer_key),
        generator=cand.generator,
        integrity=cand.integrity,
        generation=cand.generation or {},
        qc=cand.qc,
        passed=cand.passed,
        aesthetic=cand.aesthetic,
        rank=cand.rank,
        excluded_reason=cand.excluded_reason,
    )


def push_view(row: DamPush) -> PushRead:
    return PushRead(
        id=row.id,
        kind=row.kind,
        target_id=row.target_id,
        status=row.status,
        attempts=row.attempts,
        last_error=row.last_error,
        objects=list(row.objects or []),
        next_attempt_at=row.next_attempt_at,
        delivered_at=row.delivered_at,
        created_at=row.created_at,
    )
