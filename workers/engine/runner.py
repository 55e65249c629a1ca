"""Durable stage execution: every task is claim → compute → finish, with state in Postgres.

- claim: lock the campaign row, get-or-create the stage run (campaign, stage, round, item),
  skip if the campaign is terminal; a stage run that already succeeded is a no-op that only
  re-sends what comes next (the previous delivery may have died between commit and send).
- compute: the stage function runs with no transaction open (models can take seconds).
- finish: lock the campaign row again, store the output, and decide the next tasks; the
  campaign-row lock makes the "last item of a fan-out" decision race-free. Tasks are sent
  only after the commit, with ids only.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared import logs, metrics, webhooks
from shared.config import Settings, get_settings
from shared.db.models import Base, Campaign, Candidate, Result, StageRun
from shared.db.session import session_scope
from shared.queue import PIPELINE, TERMINAL_STATUSES, send

log = logging.getLogger("onbrand.stages")


class StageError(Exception):
    """A stage cannot do its job for this campaign (bad input, nothing to work with). Not retried."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


Task = tuple[str, str, int, int]  # (task name, campaign id, round, item)


@dataclass
class StageContext:
    campaign: Campaign  # a detached snapshot taken at claim time
    stage: str
    round: int
    item: int
    settings: Settings
    state_patch: dict[str, Any] = field(default_factory=dict)  # merged into campaign.state at finish
    rows: list[Base] = field(default_factory=list)  # merged (upsert by primary key) at finish
    # Runs inside the finish transaction (campaign row locked): for terminal state changes.
    finalize: Callable[[Session, Campaign], list[Task]] | None = None

    @property
    def tenant_id(self) -> uuid.UUID:
        return self.campaign.tenant_id


StageFn = Callable[[StageContext], dict[str, Any]]


def now() -> datetime:
    return datetime.now(UTC)


def lock_campaign(session: Session, campaign_id: uuid.UUID) -> Campaign | None:
    return session.scalars(select(Campaign).where(Campaign.id == campaign_id).with_for_update()).first()


def get_run(session: Session, campaign: Campaign, stage: str, rnd: int, item: int) -> StageRun:
    run = session.scalars(
        select(StageRun).where(
            StageRun.campaign_id == campaign.id, StageRun.stage == stage, StageRun.round == rnd, StageRun.item == item
        )
    ).first()
    if run is None:
        # queued_at from the clock, not now(): now() is the transaction's start, not the send time
        run = StageRun(
            tenant_id=campaign.tenant_id, campaign_id=campaign.id, stage=stage, round=rnd, item=item, queued_at=now()
        )
        session.add(run)
        session.flush()
    return run


def execute(stage: str, campaign_id: str, rnd: int, item: int, fn: StageFn) -> str:
    """Run one stage item durably; returns what happened (for logs and tests)."""
    ctx, pending = _claim(stage, uuid.UUID(campaign_id), rnd, item)
    _send_all(pending)
    if ctx is None:
        return "skipped"
    logs.bind(tenant_id=ctx.tenant_id)
    with _timed(stage) as outcome:
        try:
            output = fn(ctx)
        except StageError as exc:
            outcome[0] = "failed"
            _send_all(_fail(ctx, exc.code, exc.message))
            return "failed"
        outcome[0] = "succeeded"
    _send_all(_finish(ctx, output))
    return "succeeded"


@contextmanager
def _timed(stage: str) -> Iterator[list[str]]:
    """onbrand_stage_duration_seconds of the stage function; outcome "error" unless the block set it."""
    outcome, started = ["error"], time.perf_counter()
    try:
        yield outcome
    finally:
        metrics.STAGE_DURATION.labels(stage, outcome[0]).observe(time.perf_counter() - started)


def campaign_finished(campaign: Campaign) -> None:
    """Count a campaign's terminal transition (called where its status is set, in that transaction)."""
    metrics.campaign_finished(campaign.status, campaign.created_at)


def _claim(stage: str, campaign_id: uuid.UUID, rnd: int, item: int) -> tuple[StageContext | None, list[Task]]:
    with session_scope() as session:
        campaign = lock_campaign(session, campaign_id)
        if campaign is None or campaign.status in TERMINAL_STATUSES:
            return None, []
        run = get_run(session, campaign, stage, rnd, item)
        if run.status == "succeeded":
            return None, advance(session, campaign, stage, rnd)
        run.status, run.started_at, run.attempts = "running", now(), run.attempts + 1
        campaign.status, campaign.current_stage = "running", stage
        started = _stage_started_event(session, campaign, stage, rnd)
        session.flush()
        session.expunge(campaign)
        return StageContext(campaign, stage, rnd, item, get_settings()), started


def _finish(ctx: StageContext, output: dict[str, Any]) -> list[Task]:
    with session_scope() as session:
        campaign = lock_campaign(session, ctx.campaign.id)
        if campaign is None:
            return []
        run = get_run(session, campaign, ctx.stage, ctx.round, ctx.item)
        run.status, run.finished_at, run.output, run.error = "succeeded", now(), output, None
        for row in ctx.rows:
            session.merge(row)
        if ctx.state_patch:
            campaign.state = {**(campaign.state or {}), **ctx.state_patch}
        session.flush()
        if campaign.status not in TERMINAL_STATUSES and ctx.finalize is not None:
            return ctx.finalize(session, campaign)
        if campaign.status in TERMINAL_STATUSES:
            return []  # cancelled while we computed: keep the work, start nothing new
        return advance(session, campaign, ctx.stage, ctx.round)


def record_failure(stage: str, campaign_id: str, rnd: int, item: int, error: str) -> None:
    """A retryable error: keep the stage run's last error visible while Celery retries."""
    with session_scope() as session:
        campaign = lock_campaign(session, uuid.UUID(campaign_id))
        if campaign is not None:
            get_run(session, campaign, stage, rnd, item).error = error[:2000]


def fail_campaign(stage: str, campaign_id: str, rnd: int, item: int, code: str, message: str) -> None:
    with session_scope() as session:
        campaign = lock_campaign(session, uuid.UUID(campaign_id))
        if campaign is None or campaign.status in TERMINAL_STATUSES:
            return
        tasks = _mark_failed(session, campaign, stage, rnd, item, code, message)
    _send_all(tasks)


def _fail(ctx: StageContext, code: str, message: str) -> list[Task]:
    with session_scope() as session:
        campaign = lock_campaign(session, ctx.campaign.id)
        if campaign is None or campaign.status in TERMINAL_STATUSES:
            return []
        return _mark_failed(session, campaign, ctx.stage, ctx.round, ctx.item, code, message)


def _mark_failed(
    session: Session, campaign: Campaign, stage: str, rnd: int, item: int, code: str, message: str
) -> list[Task]:
    run = get_run(session, campaign, stage, rnd, item)
    run.status, run.finished_at, run.error = "failed", now(), message[:2000]
    campaign.status, campaign.completed_at = "failed", now()
    campaign.error = {"stage": stage, "code": code, "message": message}
    campaign_finished(campaign)
    ids = webhooks.emit(session, campaign, "campaign.failed", {"status": "failed", "error": campaign.error})
    log.warning("campaign %s failed in %s: %s", campaign.id, stage, message)
    return webhook_tasks(ids)


def webhook_tasks(delivery_ids: list[uuid.UUID]) -> list[Task]:
    return [("onbrand.send_webhook", str(d), 0, 0) for d in delivery_ids]


# Outbox sends carry only their row's id (not a campaign, round and item).
ID_ONLY_TASKS = frozenset({"onbrand.send_webhook", "onbrand.push_results"})


def _send_all(tasks: list[Task]) -> None:
    for name, ident, rnd, item in tasks:
        if name in ID_ONLY_TASKS:
            send(name, ident)
        else:
            send(name, ident, rnd, item)


# --- what comes next -------------------------------------------------------------------


def stage_items(session: Session, campaign_id: uuid.UUID, stage: str, rnd: int) -> tuple[int, int]:
    """(succeeded, total) stage runs of a stage in a round."""
    rows = session.execute(
        select(StageRun.status, func.count())
        .where(StageRun.campaign_id == campaign_id, StageRun.stage == stage, StageRun.round == rnd)
        .group_by(StageRun.status)
    ).all()
    counts = dict(rows)
    return counts.get("succeeded", 0), sum(counts.values())


def fan_out(session: Session, campaign: Campaign, stage: str, rnd: int, items: int) -> list[Task]:
    """Create every item's stage run up front, so the barrier knows the total."""
    for item in range(items):
        get_run(session, campaign, stage, rnd, item)
    return [(f"onbrand.{stage}", str(campaign.id), rnd, item) for item in range(items)]


def progress(session: Session, campaign: Campaign) -> float:
    done = (
        session.scalar(
            select(func.count(func.distinct(StageRun.stage))).where(
                StageRun.campaign_id == campaign.id, StageRun.status == "succeeded"
            )
        )
        or 0
    )
    return round(min(done, len(PIPELINE)) / len(PIPELINE), 3)


def advance(session: Session, campaign: Campaign, stage: str, rnd: int) -> list[Task]:
    """Tasks to send after `stage` (round rnd) finished an item. Idempotent."""
    done, total = stage_items(session, campaign.id, stage, rnd)
    if total == 0 or done < total:
        return []
    tasks = _stage_completed_event(session, campaign, stage, rnd)
    return tasks + NEXT[stage](session, campaign, rnd)


def _first_time(campaign: Campaign, key: str) -> bool:
    """True once per key: events are announced once however often a task is redelivered."""
    announced = list((campaign.state or {}).get("_announced", []))
    if key in announced:
        return False
    campaign.state = {**(campaign.state or {}), "_announced": [*announced, key]}
    return True


def _stage_started_event(session: Session, campaign: Campaign, stage: str, rnd: int) -> list[Task]:
    if not _first_time(campaign, f"started:{stage}:{rnd}"):
        return []
    _, items = stage_items(session, campaign.id, stage, rnd)
    data = {"stage": stage, "round": rnd, "status": "running", "items": items, "progress": progress(session, campaign)}
    return webhook_tasks(webhooks.emit(session, campaign, "campaign.stage.started", data))


def _stage_completed_event(session: Session, campaign: Campaign, stage: str, rnd: int) -> list[Task]:
    if not _first_time(campaign, f"{stage}:{rnd}"):
        return []
    data = {"stage": stage, "round": rnd, "status": "running", "progress": progress(session, campaign)}
    tasks = webhook_tasks(webhooks.emit(session, campaign, "campaign.stage.completed", data))
    if stage == "rank":  # this round's candidates are checked and ranked: reviewable through the API
        tasks += webhook_tasks(
            webhooks.emit(session, campaign, "campaign.candidates.ready", _candidate_counts(session, campaign, rnd))
        )
    return tasks


def _candidate_counts(session: Session, campaign: Campaign, rnd: int) -> dict[str, Any]:
    rows = session.execute(
        select(Candidate.passed, Candidate.rank).where(
            Candidate.tenant_id == campaign.tenant_id, Candidate.campaign_id == campaign.id, Candidate.round == rnd
        )
    ).all()
    return {
        "round": rnd,
        "status": "running",
        "candidates": len(rows),
        "passed": sum(1 for p, _ in rows if p),
        "ranked": sum(1 for _, r in rows if r is not None),
    }


def _single(next_stage: str) -> Callable[[Session, Campaign, int], list[Task]]:
    def nxt(session: Session, campaign: Campaign, rnd: int) -> list[Task]:
        return fan_out(session, campaign, next_stage, rnd, 1)

    return nxt


def _after_plan(session: Session, campaign: Campaign, rnd: int) -> list[Task]:
    return fan_out(session, campaign, "generate", rnd, int(campaign.state["plan"]["batches"]))


def _after_generate(session: Session, campaign: Campaign, rnd: int) -> list[Task]:
    return fan_out(session, campaign, "qc", rnd, int(campaign.state["plan"]["batches"]))


def _after_rank(session: Session, campaign: Campaign, rnd: int) -> list[Task]:
    """Enough results: deliver. Too few: another attempt with the same caption (plan again, the product
    smaller), then a revised caption, bounded by max_retry_attempts and max_prompt_revisions; then deliver
    what passed. The decision per round is stored, so a re-sent rank task sends the same next step."""
    loop = dict((campaign.state or {}).get("_loop") or {"attempt": 0, "revision": 0, "decided": {}})
    decided = loop["decided"].get(str(rnd)) or _decide(session, campaign, loop)
    if str(rnd) not in loop["decided"]:
        loop = {**loop, "decided": {**loop["decided"], str(rnd): decided}}
        if decided != "deliver":
            loop[decided] = loop.get(decided, 0) + 1
            loop["attempt"] = loop["attempt"] if decided == "attempt" else 0
            campaign.round = rnd + 1
        campaign.state = {**(campaign.state or {}), "_loop": loop}
    if decided == "deliver":
        return fan_out(session, campaign, "deliver", rnd, 1)
    return fan_out(session, campaign, "plan" if decided == "attempt" else "revise", rnd + 1, 1)


def _decide(session: Session, campaign: Campaign, loop: dict[str, Any]) -> str:
    ranked = (
        session.scalar(
            select(func.count())
            .select_from(Result)
            .where(Result.tenant_id == campaign.tenant_id, Result.campaign_id == campaign.id)
        )
        or 0
    )
    if ranked >= campaign.top_k:
        return "deliver"
    if loop["attempt"] < campaign.max_retry_attempts:
        return "attempt"
    return "revision" if loop.get("revision", 0) < campaign.max_prompt_revisions else "deliver"


def _after_deliver(session: Session, campaign: Campaign, rnd: int) -> list[Task]:
    return []  # deliver set the terminal status and emitted campaign.completed itself


NEXT: dict[str, Callable[[Session, Campaign, int], list[Task]]] = {
    "decompose": _single("retrieve"),
    "retrieve": _single("caption"),
    "caption": _single("segment"),
    "segment": _single("scale"),
    "scale": _single("plan"),
    "plan": _after_plan,
    "generate": _after_generate,
    "qc": _single("rank"),
    "rank": _after_rank,
    "revise": _single("scale"),  # a new caption may change the product's size on the canvas
    "deliver": _after_deliver,
}
