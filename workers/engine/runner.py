"""Durable stage execution: every task is claim → compute → finish, with state in Postgres.

- claim: lock the campaign row, get-or-create the stage run (campaign, stage, round, item),
  skip if the campaign is terminal; a stage run that already succeeded is a no-op that only
  re-sends what comes next (the previous delivery may have died between commit and send); a run
  another process is running under a live lease is skipped (workers.engine.leases).
- compute: the stage function runs with no transaction open (models can take seconds), while a
  heartbeat renews the run's lease.
- finish: lock the campaign row again, store the output, and decide the next tasks (workers.engine.flow);
  the campaign-row lock makes the "last item of a fan-out" decision race-free. Tasks are sent
  only after the commit, with ids only; a GPU stage's tasks go through the fair dispatcher
  (workers.engine.dispatch), which also runs whenever a GPU run ends and frees its slot: in the
  finish's transaction (its chosen tasks sent after that commit too).
"""

from __future__ import annotations

import importlib
import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import redis
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import limits, logs, metrics, webhooks
from shared.config import get_settings
from shared.db.models import (
    TERMINAL_STATUSES,
    Campaign,
    CampaignStatus,
    Feedback,
    FeedbackStatus,
    ReviewState,
    StageRun,
    StageRunStatus,
)
from shared.db.session import session_scope
from shared.queue import GPU_STAGE_TASKS, GPU_STAGES, send
from shared.stages import FIRST, STAGES, FanOut, stage
from workers.engine import dispatch, flow, gpu_pool, leases
from workers.engine.context import StageContext, StageError, StageFn, Task, now
from workers.engine.records import (
    campaign_finished,
    claim_free_run,
    claim_run,
    find_run,
    get_run,
    lease_from_now,
    lock_campaign,
    lock_campaign_lean,
    patch_state,
    store_rows,
    succeeded,
    webhook_tasks,
    write_campaign,
)

log = logging.getLogger("onbrand.stages")


def stage_function(name: str) -> StageFn:
    """The stage's function as the stage table names it ("module:attribute")."""
    module, attribute = stage(name).function.split(":")
    fn: StageFn = getattr(importlib.import_module(module), attribute)
    return fn


def execute(stage: str, campaign_id: str, rnd: int, item: int, fn: StageFn) -> str:
    """Run one stage item durably; returns what happened (for logs and tests)."""
    with _engine(stage, "claim"):
        ctx, pending = _claim(stage, uuid.UUID(campaign_id), rnd, item)
    with _engine(stage, "send"):
        send_all(pending)
    if ctx is None:
        return "skipped"
    logs.bind(tenant_id=ctx.tenant_id)
    summary, error = _compute(ctx, fn)
    with _engine(stage, "finish"):
        tasks, dispatched = _finish(ctx, summary) if error is None else (_fail(ctx, error.code, error.message), False)
    with _engine(stage, "send"):
        if dispatched:  # the GPU slots were given out in the finish's transaction: its tasks go as they are
            for task in tasks:
                _send(task)
        else:  # once this run ends, its GPU slot goes to the next waiting run
            send_all(tasks, freed=stage in GPU_STAGES)
    return "succeeded" if error is None else "failed"


def _compute(ctx: StageContext, fn: StageFn) -> tuple[dict[str, object], StageError | None]:
    """The stage function under a heartbeat, timed (onbrand_stage_duration_seconds); a StageError is returned,
    not raised: the stage failed, the task did not."""
    with _timed(ctx.stage) as outcome, leases.heartbeat(ctx.campaign.id, ctx.stage, ctx.round, ctx.item):
        try:
            summary = fn(ctx)
        except StageError as exc:
            outcome[0] = "failed"
            return {}, exc
        outcome[0] = "succeeded"
        return summary, None


STAGE_OUTCOMES = ("succeeded", "failed", "error")  # onbrand_stage_duration_seconds' outcome label (_timed)


@contextmanager
def _timed(stage: str) -> Iterator[list[str]]:
    """onbrand_stage_duration_seconds (and _cpu_seconds) of the stage function; outcome "error" unless the block
    set it."""
    outcome, started, cpu = ["error"], time.perf_counter(), time.thread_time()
    try:
        yield outcome
    finally:
        metrics.STAGE_CPU.labels(stage).inc(time.thread_time() - cpu)
        metrics.STAGE_DURATION.labels(stage, outcome[0]).observe(time.perf_counter() - started)


@contextmanager
def _engine(stage: str, phase: str) -> Iterator[None]:
    """onbrand_stage_engine_seconds (wall) and _cpu_seconds (this thread) of an engine phase: orchestration's cost."""
    wall, cpu = time.perf_counter(), time.thread_time()
    try:
        yield
    finally:
        metrics.ENGINE_CPU.labels(stage, phase).inc(time.thread_time() - cpu)
        metrics.ENGINE_DURATION.labels(stage, phase).observe(time.perf_counter() - wall)


def _claim(stage: str, campaign_id: uuid.UUID, rnd: int, item: int) -> tuple[StageContext | None, list[Task]]:
    with session_scope() as session:
        campaign = lock_campaign(session, campaign_id)
        if campaign is None or campaign.status in TERMINAL_STATUSES:
            return None, []
        announce = flow.started_due(campaign, stage, rnd)  # its counts come with the claim's UPDATE
        claimed, counts = claim_free_run(session, campaign.id, (stage, rnd, item), leases.worker_id(), count=announce)
        if not claimed:  # succeeded, held under a live lease, or missing: read and decided
            run = find_run(session, campaign.id, stage, rnd, item)
            if run is not None and run.status == StageRunStatus.SUCCEEDED:
                return None, _not_taken(session, campaign, flow.advance(session, campaign, stage, rnd))
            if run is not None and leases.held_elsewhere(run):
                log.info("stage run %s/%s:%s:%s running in %s: skipped", campaign_id, stage, rnd, item, run.claimed_by)
                return None, []
            claim_run(session, campaign, run, (stage, rnd, item), leases.worker_id())
        campaign.status, campaign.current_stage = CampaignStatus.RUNNING, stage
        started = flow.stage_started_event(session, campaign, stage, rnd, counts) if announce else []
        write_campaign(session, campaign)  # its changes, and the campaign leaves the session
        session.flush()
        if campaign in session:  # changes write_campaign left to the flush
            session.expunge(campaign)
        return StageContext(campaign, stage, rnd, item, get_settings()), started


_STAGE_OF_TASK = {row.task: row.name for row in STAGES}
STAGE_ROWS = {row.name: row for row in STAGES}


def _not_taken(session: Session, campaign: Campaign, tasks: list[Task]) -> list[Task]:
    """What a redelivered, already succeeded run re-sends: its successors' tasks, less those whose runs
    succeeded or are running under a live lease (re-sending those would only cascade duplicates down the
    pipeline). Pending ones are re-sent: their send may be the one that was lost."""
    runs = {
        (r.stage, r.round, r.item): r
        for r in session.scalars(select(StageRun).where(StageRun.campaign_id == campaign.id))
    }
    kept = []
    for task in tasks:
        name, _, rnd, item = task
        run = runs.get((_STAGE_OF_TASK.get(name, ""), rnd, item))
        if run is None or not (run.status == StageRunStatus.SUCCEEDED or leases.held_elsewhere(run)):
            kept.append(task)
    return kept


def _finish(ctx: StageContext, summary: dict[str, object]) -> tuple[list[Task], bool]:
    """The run's output and rows stored, what comes next decided; the tasks to send after the commit, and whether
    the GPU dispatcher ran in this transaction (else it runs after the commit, as send_all decides)."""
    with session_scope() as session:
        tasks = _finished(session, ctx, summary)
        return _dispatched(session, ctx.stage, tasks) if tasks is not None else ([], False)


def _finished(session: Session, ctx: StageContext, summary: dict[str, object]) -> list[Task] | None:
    """The finish's work in its transaction: the tasks that follow; None when the run no longer matters (its
    campaign deleted or ended meanwhile)."""
    # A fan-out item's finish leaves campaign.state unloaded (all but its stage's last item read none of it); a
    # single item's finish is its stage's last and reads it (the events' progress): loaded with the lock, not by a
    # query of its own when first read.
    fans_out = STAGE_ROWS[ctx.stage].fan_out is not FanOut.ONE
    campaign = (lock_campaign_lean if fans_out else lock_campaign)(session, ctx.campaign.id)
    if campaign is None:
        return None
    tasks = _next(session, ctx, campaign, summary)
    write_campaign(session, campaign)  # the changes of the campaign row, before the dispatcher's flush and the commit
    return tasks


def _next(session: Session, ctx: StageContext, campaign: Campaign, summary: dict[str, object]) -> list[Task] | None:
    """_finished's work on the locked campaign."""
    counts = succeeded(session, campaign, ctx.stage, ctx.round, ctx.item, summary)
    store_rows(session, ctx.rows)
    if ctx.state_patch:
        patch_state(session, campaign, ctx.state_patch)
    if ctx.batches is not None:
        flow.record_batches(campaign, ctx.round, ctx.batches)
    # The stage's rows are written already (Core); the campaign's changes go in write_campaign's UPDATE after this (or
    # in an autoflush before an ORM query that reads them), whatever else the ORM holds in the flush at commit.
    if campaign.status in TERMINAL_STATUSES:
        return None  # cancelled while we computed: keep the work, start nothing new
    if ctx.finalize is not None:
        return ctx.finalize(session, campaign)
    return flow.advance(session, campaign, ctx.stage, ctx.round, counts)


def _dispatched(session: Session, stage: str, tasks: list[Task]) -> tuple[list[Task], bool]:
    """A GPU run ended (its slot is free) or GPU runs were created: the dispatcher gives out the free slots in
    this transaction (one commit, not a transaction of its own after it: ~3 ms of CPU a GPU task). Its chosen
    tasks replace the GPU tasks offered; all are sent after the commit. Redis away (the pool's capacity unknown):
    left to send_all after the commit, which logs it and leaves it to the sweep."""
    gpu = [task for task in tasks if task[0] in GPU_STAGE_TASKS]
    if not gpu and stage not in GPU_STAGES:
        return tasks, False
    try:
        capacity = gpu_pool.capacity(get_settings())
    except redis.RedisError:
        return tasks, False
    session.flush()  # the dispatcher reads the runs with Core queries: what the ORM holds of them goes first
    chosen = dispatch.dispatch_in(session, capacity, gpu)
    return [task for task in tasks if task[0] not in GPU_STAGE_TASKS] + chosen, True


def record_failure(stage: str, campaign_id: str, rnd: int, item: int, error: str) -> None:
    """A retryable error: keep the stage run's last error visible while Celery retries. The run goes back to
    pending (the retry must be able to claim it) under a fresh lease (the sweep re-sends it if the retry is lost)."""
    with session_scope() as session:
        campaign = lock_campaign(session, uuid.UUID(campaign_id))
        if campaign is not None:
            run = get_run(session, campaign, stage, rnd, item)
            run.error = error[:2000]
            if run.status == StageRunStatus.RUNNING:
                run.status, run.lease_until, run.claimed_by = StageRunStatus.PENDING, lease_from_now(), None


def fail_campaign(stage: str, campaign_id: str, rnd: int, item: int, code: str, message: str) -> None:
    with session_scope() as session:
        campaign = lock_campaign(session, uuid.UUID(campaign_id))
        if campaign is None or campaign.status in TERMINAL_STATUSES:
            return
        tasks = _mark_failed(session, campaign, stage, rnd, item, code, message)
    send_all(tasks, freed=stage in GPU_STAGES)


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
    run.status, run.finished_at, run.error, run.lease_until = StageRunStatus.FAILED, now(), message[:2000], None
    campaign.status, campaign.completed_at = CampaignStatus.FAILED, now()
    campaign.error = {"stage": stage, "code": code, "message": message}
    campaign_finished(session, campaign)
    ids = webhooks.emit(session, campaign, "campaign.failed", {"status": campaign.status, "error": campaign.error})
    log.warning("campaign %s failed in %s: %s", campaign.id, stage, message)
    return webhook_tasks(ids)


# Outbox sends carry only their row's id (not a campaign, round and item).
ID_ONLY_TASKS = frozenset({"onbrand.send_webhook", "onbrand.push_results"})


def send_all(tasks: list[Task], *, freed: bool = False) -> None:
    """Send what a transaction decided, after its commit. A GPU stage's task is not sent here: its run waits in
    Postgres and the dispatcher sends it when a slot is free (now, if one is). `freed`: a GPU run just ended."""
    gpu = [task for task in tasks if task[0] in GPU_STAGE_TASKS]
    for task in tasks:
        if task[0] not in GPU_STAGE_TASKS:
            _send(task)
    if gpu or freed:
        dispatch_gpu(gpu)


def _send(task: Task) -> None:
    name, ident, rnd, item = task
    if name in ID_ONLY_TASKS:
        send(name, ident)
    else:
        send(name, ident, rnd, item)


def dispatch_gpu(offered: list[Task] | None = None) -> int:
    """Give free GPU slots to waiting runs (workers.engine.dispatch) and send them. Never raises: the runs are
    durable, and the stalled sweep dispatches again within a sweep period if this call could not."""
    try:
        tasks = dispatch.dispatch(offered)
    except Exception:  # noqa: BLE001 - Postgres or Redis away: the sweep retries
        log.warning("GPU dispatch failed; the stalled sweep retries it", exc_info=True)
        return 0
    for task in tasks:
        _send(task)
    return len(tasks)


def restart_stalled(older_than_s: int | None = None) -> int:
    """Work whose send was lost or whose worker died: stage runs of live campaigns past their lease (re-sent,
    idempotently: workers.engine.leases), campaigns still queued with no stage run after a lease (the
    gateway's send after commit was lost), and GPU runs waiting for a slot a lost dispatch left free."""
    lapsed = leases.lapsed_runs()
    if lapsed:
        log.warning("stalled sweep: %d stage runs past their lease re-sent", len(lapsed))
    for task in lapsed:  # sent before: a GPU run among them keeps its slot, no dispatch
        _send(task)
    restarted = _restart_unstarted(older_than_s or get_settings().stage_lease_seconds)
    with session_scope() as session:  # running campaigns' retries and review rounds counted in the quota's ledger
        limits.settle_in_flight(session, now())
    return len(lapsed) + restarted + dispatch_gpu()


def _restart_unstarted(older_than_s: int) -> int:
    with session_scope() as session:
        ids = session.scalars(
            select(Campaign.id)
            .where(
                Campaign.status == CampaignStatus.QUEUED,
                Campaign.created_at < now() - timedelta(seconds=older_than_s),
                ~select(StageRun.id).where(StageRun.campaign_id == Campaign.id).exists(),
            )
            .limit(500)
        ).all()
    for campaign_id in ids:
        send(FIRST.task, campaign_id, 0, 0)
    return len(ids)


# Feedback left routing this long has had its router fail every time (or its worker gone): given up on, so
# the reviewer can send another instead of waiting on a round that never starts.
FEEDBACK_GIVE_UP_S = 1800


def resend_routing(older_than_s: int = 60) -> int:
    """Feedback still routing after `older_than_s`: the send after the gateway's commit was lost, or the
    router raised (its error is on the row). Re-sent; past FEEDBACK_GIVE_UP_S marked failed instead."""
    with session_scope() as session:
        rows = session.execute(
            select(Feedback.id, Feedback.created_at)
            .where(
                Feedback.status == FeedbackStatus.ROUTING,
                Feedback.created_at < now() - timedelta(seconds=older_than_s),
            )
            .limit(500)
        ).all()
    give_up = now() - timedelta(seconds=FEEDBACK_GIVE_UP_S)
    for feedback_id, created_at in rows:
        if created_at < give_up:
            _give_up(feedback_id)
        else:
            send("onbrand.route_feedback", str(feedback_id))
    return len(rows)


def _give_up(feedback_id: uuid.UUID) -> None:
    with session_scope() as session:
        feedback = session.get(Feedback, feedback_id)
        campaign = lock_campaign(session, feedback.campaign_id) if feedback else None
        if feedback is None or campaign is None:
            return
        session.refresh(feedback)
        if feedback.status != FeedbackStatus.ROUTING:
            return
        reason = f"the feedback router did not answer within {FEEDBACK_GIVE_UP_S // 60} minutes"
        feedback.status, feedback.error = FeedbackStatus.FAILED, f"{reason}; last error: {feedback.error or 'none'}"
        if campaign.review_state == ReviewState.CHANGES_REQUESTED:
            campaign.review_state = ReviewState.PENDING  # the reviewer decides again on what is there
