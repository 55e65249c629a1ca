"""Task names, queues and the producer side of Celery, shared by gateway and workers.

The gateway sends tasks by name (it never imports workers/). Tasks take ids only and
are sent only after the transaction that created their state has committed.
"""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

from celery import Celery
from opentelemetry.trace import SpanKind

from shared import tracing
from shared.config import Settings, get_settings
from shared.stages import STAGES

CPU_QUEUES = ("llm", "retrieval", "scoring", "webhooks")
GPU_QUEUES = ("segment", "generate", "qc")

# Tasks that are not pipeline stages -> queue. Routing is by task name so a producer needs nothing but the name.
SERVICE_TASK_QUEUES: dict[str, str] = {
    "onbrand.embed_assets": "retrieval",
    "onbrand.embed_query": "retrieval",
    "onbrand.sweep_embeddings": "retrieval",
    "onbrand.reembed": "retrieval",
    "onbrand.send_webhook": "webhooks",
    "onbrand.sweep_outbox": "webhooks",
    "onbrand.push_results": "webhooks",
    "onbrand.sweep_stalled": "llm",
    "onbrand.route_feedback": "llm",  # a hosted LLM may read the reviewer's words
    "onbrand.learn_ranking": "scoring",
    "onbrand.delete_objects": "webhooks",  # storage I/O after a DELETE (shared.deletions)
    "onbrand.sweep_deletions": "webhooks",
}
# Every task -> its queue: the stages' from the stage table, then the service tasks.
TASK_QUEUES: dict[str, str] = {**{s.task: s.queue for s in STAGES}, **SERVICE_TASK_QUEUES}


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Periodic tasks (run by `onbrand worker --beat`). sweep-outbox sends the webhook deliveries and DAM
    pushes whose scheduled retry is due (retries live in Postgres, not as Celery countdowns) and any
    whose send after commit was lost; the others are safety nets for lost sends."""
    return {
        "sweep-outbox": {"task": "onbrand.sweep_outbox", "schedule": settings.outbox_dispatch_seconds},
        # Re-sends stage runs past their lease: what recovers a dead worker's or a lost message's work.
        "sweep-stalled": {"task": "onbrand.sweep_stalled", "schedule": settings.stalled_sweep_seconds},
        "sweep-embeddings": {"task": "onbrand.sweep_embeddings", "schedule": 60.0},
        "sweep-deletions": {"task": "onbrand.sweep_deletions", "schedule": 60.0},
    }


def configure(app: Celery, settings: Settings) -> None:
    app.conf.update(
        broker_url=settings.broker_url,
        task_routes={name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        task_default_queue="llm",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout,
            "unacked_restore_throttle": settings.broker_restore_throttle,
        },
        worker_hijack_root_logger=False,
        # SIGTERM (`onbrand worker` remaps it to Celery's cold shutdown, REMAP_SIGTERM=SIGQUIT): while a
        # task runs, the worker waits this long (all of it: Celery sleeps), then cancels what is left and
        # returns it to its queue at once, not after the visibility timeout. An idle worker stops at once.
        worker_soft_shutdown_timeout=settings.worker_soft_shutdown_seconds,
        beat_schedule=beat_schedule(settings),
    )


@lru_cache
def producer() -> Celery:
    app = Celery("onbrand-producer")
    configure(app, get_settings())
    return app


# Redis queues are polled by priority step (0 first, kombu's default steps 0/3/6/9): bulk work such
# as embedding a 50k-asset import goes last so a search query or a campaign stage never waits on it.
BULK_PRIORITY = 9
# Message header with the send time (epoch seconds): the worker observes the wait (onbrand_task_queue_wait_seconds).
SENT_AT_HEADER = "onbrand_sent_at"


def send(name: str, *args: Any, priority: int | None = None, expires: float | None = None) -> None:
    """Send a task by name with id arguments only. Call after commit."""
    if name not in TASK_QUEUES:
        raise KeyError(f"unknown task {name!r}")
    # A producer span, and its context in the message headers: the task's span becomes its child.
    with tracing.tracer().start_as_current_span(
        f"send {name}", kind=SpanKind.PRODUCER, attributes={"messaging.destination.name": TASK_QUEUES[name]}
    ):
        producer().send_task(
            name,
            args=[str(a) if not isinstance(a, int) else a for a in args],
            task_id=stage_task_id(name, *args),
            priority=priority,
            expires=expires,
            headers={**tracing.inject(), SENT_AT_HEADER: f"{time.time():.6f}"},
        )


STAGE_TASK_NAMES = frozenset(s.task for s in STAGES)
# Stages on the GPU queues: their runs wait in Postgres for the fair dispatcher (workers/engine/dispatch.py).
GPU_STAGES = frozenset(s.name for s in STAGES if s.queue in GPU_QUEUES)
GPU_STAGE_TASKS = frozenset(s.task for s in STAGES if s.queue in GPU_QUEUES)


def stage_task_id(name: str, *args: Any) -> str | None:
    """A stage task's Celery id, derived from its stage run (campaign:task:round:item), so cancel can revoke
    a campaign's work by id without storing ids; None (a random id) for any other task."""
    if name not in STAGE_TASK_NAMES or not args:
        return None
    campaign, rnd, item = (list(args) + [0, 0])[:3]
    return f"{campaign}:{name}:{rnd}:{item}"


def revoke(task_ids: list[str], *, terminate: bool = False) -> None:
    """Revoke tasks on every worker: a queued one is dropped when it arrives, a running one (terminate) has its
    pool process killed (SIGKILL: a GPU task may not return to the interpreter for seconds). Workers keep the
    ids in memory; one started later does not know them, which is why the claim also skips terminal campaigns."""
    if task_ids:
        producer().control.revoke(task_ids, terminate=terminate, signal="SIGKILL")
