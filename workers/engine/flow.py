"""What comes next after a stage, derived from the stage table (shared.stages): successors, fan-out
barriers, the retry/revise loop after rank, and the stage events. Everything here runs inside the
finish transaction with the campaign row locked, returns the tasks to send after commit, and is
idempotent: a redelivered task gets the same answer."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from pydantic import BaseModel
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared import webhooks
from shared.db.models import TERMINAL_STATUSES, Campaign, CampaignStatus, Candidate, Result, StageRunStatus
from shared.review import round_window
from shared.stages import FanOut, Stage, stage
from shared.stages import progress as stage_progress
from workers.engine.context import Task, now
from workers.engine.records import Counts, create_runs, get_run, items_of, run_counts, webhook_tasks


class Decision(StrEnum):
    """After rank, per round: enough results, another attempt with the same caption, or a revised caption."""

    DELIVER = "deliver"
    ATTEMPT = "attempt"
    REVISION = "revision"


class LoopState(BaseModel):
    """campaigns.loop: the loop's bookkeeping, kept apart from the stage outputs."""

    attempt: int = 0  # attempts with the current caption after the first
    revision: int = 0  # caption revisions so far
    decided: dict[str, Decision] = {}  # round -> what followed its rank
    announced: list[str] = []  # events already emitted (once however often a task is redelivered)
    batches: dict[str, int] = {}  # round -> items of the stages that fan out per batch
    # The first round whose candidates rank may choose from: 0, or where the current review round's pool
    # starts (a feedback round regenerates; one that only changes QC re-ranks the previous round's pool).
    pool_from_round: int = 0

    @classmethod
    def of(cls, campaign: Campaign) -> LoopState:
        return cls.model_validate(campaign.loop or {})

    def save(self, campaign: Campaign) -> None:
        campaign.loop = self.model_dump(mode="json")


def fan_out(session: Session, campaign: Campaign, name: str, rnd: int) -> list[Task]:
    """Create every item's stage run up front, so the barrier knows the total. A stage the current review
    round carries over (workers.engine.review) is recorded as succeeded instead, and what follows it starts."""
    if (reused := _reused(campaign, name, rnd)) is not None:
        return _carry_over(session, campaign, name, rnd, reused)
    items = list(range(_items(campaign, stage(name), rnd)))
    create_runs(session, campaign, name, rnd, items)
    return [(stage(name).task, str(campaign.id), rnd, item) for item in items]


def _reused(campaign: Campaign, name: str, rnd: int) -> int | None:
    """The review round whose output stage `name` reuses in round `rnd`, or None when it runs. The record is
    workers.engine.review.ReviewRecord, read here as JSON (that module imports this one)."""
    record = (campaign.state or {}).get("review") or {}
    if name not in record.get("reused", []) or rnd < int(record.get("first_round", 0)):
        return None
    return int(record["from_review_round"])


def _carry_over(session: Session, campaign: Campaign, name: str, rnd: int, from_review_round: int) -> list[Task]:
    """The stage's output in campaign.state stays the one its last run published: nothing to compute."""
    run = get_run(session, campaign, name, rnd, 0)
    if run.status != StageRunStatus.SUCCEEDED:
        run.status, run.output, run.error = (
            StageRunStatus.SUCCEEDED,
            {"reused": True, "from_review_round": from_review_round},
            None,
        )
        run.started_at = run.finished_at = now()
    return advance(session, campaign, name, rnd)


def _items(campaign: Campaign, row: Stage, rnd: int) -> int:
    if row.fan_out is FanOut.ONE:
        return 1
    return LoopState.of(campaign).batches[str(rnd)]


def progress(session: Session, campaign: Campaign, counts: Counts | None = None) -> float:
    """The stages with a succeeded run over those this campaign runs (shared.stages.progress); in a review
    round, counted from where it started (shared.review.round_window). `counts`: run_counts, when read already."""
    first_round, upstream = round_window(campaign.state)
    counts = run_counts(session, campaign.id) if counts is None else counts
    done = {name for (name, rnd), of in counts.items() if rnd >= first_round and of.get(StageRunStatus.SUCCEEDED)}
    return stage_progress({*done, *upstream}, terminal=campaign.status in TERMINAL_STATUSES)


def advance(session: Session, campaign: Campaign, name: str, rnd: int, counts: Counts | None = None) -> list[Task]:
    """Tasks to send after stage `name` (round rnd) finished an item. Idempotent. `counts`: run_counts as they are
    now, when read already (the finish reads them with its run's UPDATE)."""
    counts = run_counts(session, campaign.id) if counts is None else counts  # the barrier and the event's progress
    done, total = items_of(counts, name, rnd)
    if total == 0 or done < total:
        return []
    tasks = stage_completed_event(session, campaign, name, rnd, counts)
    return tasks + _successors(session, campaign, stage(name), rnd)


def _successors(session: Session, campaign: Campaign, row: Stage, rnd: int) -> list[Task]:
    if row.retry is not None or row.revise is not None:
        return _after_loop_stage(session, campaign, row, rnd)
    if row.next is None:
        return []  # the stage ended the campaign itself (deliver set the terminal status and its event)
    return fan_out(session, campaign, row.next, rnd)


def record_batches(campaign: Campaign, rnd: int, batches: int) -> None:
    loop = LoopState.of(campaign)
    loop.batches[str(rnd)] = batches
    loop.save(campaign)


def _first_time(campaign: Campaign, key: str) -> bool:
    """True once per key: events are announced once however often a task is redelivered."""
    loop = LoopState.of(campaign)
    if key in loop.announced:
        return False
    loop.announced.append(key)
    loop.save(campaign)
    return True


def started_due(campaign: Campaign, name: str, rnd: int) -> bool:
    """Whether stage_started_event announces the stage's round (not yet announced)."""
    return f"started:{name}:{rnd}" not in LoopState.of(campaign).announced


def stage_started_event(
    session: Session, campaign: Campaign, name: str, rnd: int, counts: Counts | None = None
) -> list[Task]:
    """The stage's round announced, once. `counts`: run_counts as they are now, when read already (the claim reads
    them with its run's UPDATE)."""
    if not _first_time(campaign, f"started:{name}:{rnd}"):
        return []
    counts = run_counts(session, campaign.id) if counts is None else counts
    _, items = items_of(counts, name, rnd)
    data = {
        "stage": name,
        "round": rnd,
        "status": CampaignStatus.RUNNING,
        "items": items,
        "progress": progress(session, campaign, counts),
    }
    return _emit(session, campaign, "campaign.stage.started", data)


def stage_completed_event(
    session: Session, campaign: Campaign, name: str, rnd: int, counts: Counts | None = None
) -> list[Task]:
    if not _first_time(campaign, f"{name}:{rnd}"):
        return []
    done = progress(session, campaign, counts)
    data = {"stage": name, "round": rnd, "status": CampaignStatus.RUNNING, "progress": done}
    tasks = _emit(session, campaign, "campaign.stage.completed", data)
    if stage(name).retry is not None:  # this round's candidates are checked and ranked: reviewable through the API
        candidates = _candidate_counts(session, campaign, rnd)
        tasks += _emit(session, campaign, "campaign.candidates.ready", candidates)
    return tasks


def _emit(session: Session, campaign: Campaign, event_type: str, data: dict[str, Any]) -> list[Task]:
    """The event's outbox rows (shared.webhooks.emit: one statement that chooses the endpoints and inserts) and
    their tasks. A Core statement: no autoflush, the campaign's changes go in the one flush at commit."""
    return webhook_tasks(webhooks.emit(session, campaign, event_type, data))


def _candidate_counts(session: Session, campaign: Campaign, rnd: int) -> dict[str, Any]:
    policy = Candidate.qc["policy"]
    rows = session.execute(
        select(
            Candidate.passed,
            Candidate.rank,
            policy["fully_checked"].as_boolean(),
            policy["needs_review"].as_boolean(),
        ).where(Candidate.tenant_id == campaign.tenant_id, Candidate.campaign_id == campaign.id, Candidate.round == rnd)
    ).all()
    return {
        "round": rnd,
        "status": CampaignStatus.RUNNING,
        "candidates": len(rows),
        "passed": sum(1 for p, *_ in rows if p),
        # "passed" includes candidates with unchecked rules; fully checked: every rule checked and passed
        "fully_checked": sum(1 for _, _, full, _ in rows if full),
        "needs_review": sum(1 for *_, review in rows if review),
        "ranked": sum(1 for _, r, *_ in rows if r is not None),
    }


def _after_loop_stage(session: Session, campaign: Campaign, row: Stage, rnd: int) -> list[Task]:
    """Enough results: next. Too few: another attempt with the same caption (row.retry, the product
    resized: workers.pipeline.revise.retry_share), then a revised caption (row.revise), bounded by
    max_retry_attempts and max_prompt_revisions; then next with what passed. The decision per round is
    stored, so a re-sent task sends the same step."""
    loop = LoopState.of(campaign)
    decided = loop.decided.get(str(rnd))
    if decided is None:
        decided = _decide(session, campaign, loop)
        loop.decided[str(rnd)] = decided
        if decided is Decision.ATTEMPT:
            loop.attempt += 1
        elif decided is Decision.REVISION:
            loop.revision, loop.attempt = loop.revision + 1, 0
        if decided is not Decision.DELIVER:
            campaign.round = rnd + 1
        loop.save(campaign)
    if decided is Decision.DELIVER:
        return fan_out(session, campaign, str(row.next), rnd)
    return fan_out(session, campaign, str(row.retry if decided is Decision.ATTEMPT else row.revise), rnd + 1)


def products(campaign: Campaign) -> int:
    """How many products the campaign builds scenes for: those segmented (segment's output lists them when there
    are several; a product that could not be segmented has no scenes to wait for)."""
    segment = (campaign.state or {}).get("segment") or {}
    return max(1, len(segment.get("products") or []))


def _decide(session: Session, campaign: Campaign, loop: LoopState) -> Decision:
    ranked = session.scalar(select(func.count()).select_from(Result).where(Result.of_current_round(campaign))) or 0
    # rank chooses at most top_k per product and size: the total reaches this only when each of them has top_k
    if ranked >= campaign.top_k * products(campaign) * max(1, len(campaign.sizes or [])):
        return Decision.DELIVER
    if loop.attempt < campaign.max_retry_attempts:
        return Decision.ATTEMPT
    return Decision.REVISION if loop.revision < campaign.max_prompt_revisions else Decision.DELIVER
