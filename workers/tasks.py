"""Celery tasks: thin wrappers over the plain stage functions in workers/stages/.

Tasks take ids only. Unexpected errors are retried with backoff; once retries run out the
campaign fails with the error recorded (a StageError fails it at once: retrying can't help).
"""
from __future__ import annotations

from typing import Any

from celery import Task

from workers.celery_app import app
from workers.stages import pipeline, webhooks
from workers.stages.runner import execute, fail_campaign, record_failure

RETRY_COUNTDOWNS = (2, 10, 30)
STAGE_OPTS: dict[str, Any] = {"bind": True, "max_retries": len(RETRY_COUNTDOWNS), "acks_late": True,
                              "reject_on_worker_lost": True}


def _run(task: Task, stage: str, campaign_id: str, rnd: int, item: int) -> str:
    try:
        return execute(stage, campaign_id, rnd, item, pipeline.STAGES[stage])
    except Exception as exc:  # noqa: BLE001 - any failure is recorded, then retried or terminal
        record_failure(stage, campaign_id, rnd, item, f"{type(exc).__name__}: {exc}")
        if task.request.retries >= len(RETRY_COUNTDOWNS):
            fail_campaign(stage, campaign_id, rnd, item, "stage_error", f"{stage} failed: {type(exc).__name__}: {exc}")
            raise
        raise task.retry(exc=exc, countdown=RETRY_COUNTDOWNS[task.request.retries]) from exc


@app.task(name="onbrand.decompose", **STAGE_OPTS)
def decompose(self: Task, campaign_id: str, rnd: int = 0, item: int = 0) -> str:
    return _run(self, "decompose", campaign_id, rnd, item)


@app.task(name="onbrand.retrieve", **STAGE_OPTS)
def retrieve(self: Task, campaign_id: str, rnd: int = 0, item: int = 0) -> str:
    return _run(self, "retrieve", campaign_id, rnd, item)


@app.task(name="onbrand.caption", **STAGE_OPTS)
def caption(self: Task, campaign_id: str, rnd: int = 0, item: int = 0) -> str:
    return _run(self, "caption", campaign_id, rnd, item)


@app.task(name="onbrand.segment", **STAGE_OPTS)
def segment(self: Task, campaign_id: str, rnd: int = 0, item: int = 0) -> str:
    return _run(self, "segment", campaign_id, rnd, item)


@app.task(name="onbrand.plan", **STAGE_OPTS)
def plan(self: Task, campaign_id: str, rnd: int = 0, item: int = 0) -> str:
    return _run(self, "plan", campaign_id, rnd, item)


@app.task(name="onbrand.generate", **STAGE_OPTS)
def generate(self: Task, campaign_id: str, rnd: int = 0, item: int = 0) -> str:
    return _run(self, "generate", campaign_id, rnd, item)


@app.task(name="onbrand.qc", **STAGE_OPTS)
def qc(self: Task, campaign_id: str, rnd: int = 0, item: int = 0) -> str:
    return _run(self, "qc", campaign_id, rnd, item)


@app.task(name="onbrand.rank", **STAGE_OPTS)
def rank(self: Task, campaign_id: str, rnd: int = 0, item: int = 0) -> str:
    return _run(self, "rank", campaign_id, rnd, item)


@app.task(name="onbrand.deliver", **STAGE_OPTS)
def deliver(self: Task, campaign_id: str, rnd: int = 0, item: int = 0) -> str:
    return _run(self, "deliver", campaign_id, rnd, item)


@app.task(name="onbrand.embed_assets", bind=True, max_retries=3, acks_late=True, reject_on_worker_lost=True)
def embed_assets(self: Task, asset_id: str) -> int:
    return pipeline.embed_asset_ids([asset_id])


@app.task(name="onbrand.send_webhook", bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=None)
def send_webhook(self: Task, delivery_id: str) -> str:
    outcome, retry_in = webhooks.deliver(delivery_id)
    if retry_in is not None:
        raise self.retry(countdown=retry_in)
    return outcome


@app.task(name="onbrand.sweep_outbox")
def sweep_outbox() -> int:
    return webhooks.sweep()


@app.task(name="onbrand.sweep_stalled")
def sweep_stalled() -> int:
    return pipeline.restart_stalled()
