"""Celery tasks: thin wrappers over the plain stage functions in workers/stages/.

Tasks take ids only. Unexpected errors are retried with backoff; once retries run out the
campaign fails with the error recorded (a StageError fails it at once: retrying can't help).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import Task

from shared import query_vectors
from shared.config import get_settings
from shared.db.outage import database_unavailable
from shared.db.session import session_scope
from shared.stages import STAGES, Stage
from workers.celery_app import app
from workers.engine.runner import execute, fail_campaign, record_failure, restart_stalled, stage_function
from workers.jobs import library, push, webhooks

log = logging.getLogger("onbrand.stages")

RETRY_COUNTDOWNS = (2, 10, 30)
STAGE_OPTS: dict[str, Any] = {
    "bind": True,
    "max_retries": len(RETRY_COUNTDOWNS),
    "acks_late": True,
    "reject_on_worker_lost": True,
}


def _run(task: Task, stage: Stage, campaign_id: str, rnd: int, item: int) -> str:
    try:
        return execute(stage.name, campaign_id, rnd, item, stage_function(stage.name))
    except Exception as exc:  # noqa: BLE001 - any failure is recorded, then retried or terminal
        _record(stage, campaign_id, rnd, item, exc)
        if task.request.retries >= len(RETRY_COUNTDOWNS):
            if database_unavailable(exc):
                # Postgres down for the whole backoff says nothing about the campaign: don't fail it. The run's
                # lease lapses and the stalled sweep re-sends it once Postgres is back.
                log.warning(
                    "%s %s:%s:%s: database unavailable, left to the stalled sweep", stage.name, campaign_id, rnd, item
                )
                raise
            message = f"{stage.name} failed: {type(exc).__name__}: {exc}"
            fail_campaign(stage.name, campaign_id, rnd, item, "stage_error", message)
            raise
        raise task.retry(exc=exc, countdown=RETRY_COUNTDOWNS[task.request.retries]) from exc


def _record(stage: Stage, campaign_id: str, rnd: int, item: int, exc: Exception) -> None:
    # Best effort: when Postgres itself is down the error cannot be recorded, and the retry must still be sent
    # (the run's lease lapses meanwhile and the stalled sweep re-sends it if the retries run out).
    try:
        record_failure(stage.name, campaign_id, rnd, item, f"{type(exc).__name__}: {exc}")
    except Exception:
        log.warning("could not record the failure of %s %s:%s:%s", stage.name, campaign_id, rnd, item, exc_info=True)


def _stage_task(stage: Stage) -> Task:
    def run(self: Task, campaign_id: str, rnd: int = 0, item: int = 0) -> str:
        return _run(self, stage, campaign_id, rnd, item)

    run.__name__ = run.__qualname__ = stage.name
    task: Task = app.task(name=stage.task, **STAGE_OPTS)(run)
    return task


# One task per row of the stage table, all the same thin wrapper; routed to queues by name (shared.queue).
STAGE_TASKS: dict[str, Task] = {stage.name: _stage_task(stage) for stage in STAGES}


@app.task(name="onbrand.embed_assets", acks_late=True, reject_on_worker_lost=True)
def embed_assets(*asset_ids: str) -> int:
    # Idempotent (skips assets that already have a space's vector); the embeddings sweep and the
    # retrieve stage catch up on whatever is missing, so a lost message only costs latency.
    return library.embed_asset_ids(list(asset_ids))


@app.task(name="onbrand.embed_query")
def embed_query(q: str, reply_key: str) -> None:
    # Not acks_late: a query is worth answering only while its request waits (the message expires).
    query_vectors.reply(get_settings(), reply_key, library.embed_query(q))


@app.task(name="onbrand.sweep_embeddings")
def sweep_embeddings() -> int:
    return library.sweep()


@app.task(name="onbrand.reembed")
def reembed(tenant_id: str = "") -> int:
    # `onbrand assets reembed`: embed tasks for every asset missing a vector in a configured space
    # (e.g. the text_next model during a model change).
    with session_scope() as session:
        return library.enqueue_missing(session, uuid.UUID(tenant_id) if tenant_id else None)


@app.task(name="onbrand.send_webhook", acks_late=True, reject_on_worker_lost=True)
def send_webhook(delivery_id: str) -> str:
    # A failed attempt schedules its retry in Postgres (next_attempt_at); sweep_outbox sends it when due.
    return webhooks.deliver(delivery_id)


@app.task(name="onbrand.push_results", acks_late=True, reject_on_worker_lost=True)
def push_results(push_id: str) -> str:
    return push.push(push_id)


@app.task(name="onbrand.sweep_outbox")
def sweep_outbox() -> int:
    return webhooks.dispatch_due() + push.dispatch_due()


@app.task(name="onbrand.sweep_stalled")
def sweep_stalled() -> int:
    # Every ONBRAND_STALLED_SWEEP_SECONDS: stage runs past their lease, campaigns never started, feedback left routing.
    from workers.engine.runner import resend_routing  # feedback left routing: re-sent, or given up on

    return restart_stalled() + resend_routing()


@app.task(name="onbrand.route_feedback", **STAGE_OPTS)
def route_feedback(self: Task, feedback_id: str) -> str:
    # Idempotent: a feedback already routed is a no-op that re-sends its round's first task if it never ran.
    # A router error (hosted LLM down) is retried with the stages' backoff; after that the stalled sweep
    # re-sends feedback still routing (workers.engine.runner.resend_routing) until it gives up.
    from workers.jobs import feedback

    try:
        return feedback.route(feedback_id)
    except Exception as exc:
        if self.request.retries >= len(RETRY_COUNTDOWNS):
            raise
        raise self.retry(exc=exc, countdown=RETRY_COUNTDOWNS[self.request.retries]) from exc


@app.task(name="onbrand.learn_ranking", acks_late=True, reject_on_worker_lost=True)
def learn_ranking(brand_id: str) -> int:
    # Refits the brand's ranking weights from every decision so far: idempotent, a lost message only delays.
    from workers.ranking import learn

    return learn.refit(brand_id)


@app.task(name="onbrand.delete_objects", acks_late=True, reject_on_worker_lost=True)
def delete_objects(deletion_id: str) -> str:
    # Objects of a deleted asset or campaign; a storage error is retried from Postgres by sweep_deletions.
    from workers.jobs import cleanup

    return cleanup.delete_objects(deletion_id)


@app.task(name="onbrand.sweep_deletions")
def sweep_deletions() -> int:
    from workers.jobs import cleanup

    return cleanup.sweep()
