"""What a worker tells its operators: logs, a span and metrics per task, a heartbeat, /metrics.

Connected to Celery's signals by workers.celery_app. Per task (in the pool process that runs it):
the log context is bound (task, campaign, stage), a CONSUMER span is started as the child of the
context the sender put in the message headers, and its duration and outcome are counted.
"""

from __future__ import annotations

import logging
import time
from contextvars import Token
from pathlib import Path
from typing import Any

from celery import bootsteps
from celery.beat import PersistentScheduler
from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, set_span_in_context

from shared import logs, metrics, tracing
from shared.config import Settings, get_settings
from shared.queue import SENT_AT_HEADER
from shared.stages import PIPELINE

log = logging.getLogger("onbrand.tasks")
# task id -> (span, context token, start time, thread CPU at start): prerun and postrun run in the same pool
# process, in the task's thread.
_running: dict[str, tuple[Span, Token[Context], float, float]] = {}


def heartbeat_file(settings: Settings, process: str) -> Path:
    return settings.home / f"{process}.heartbeat"


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()


def task_context(task: Any, args: tuple[Any, ...]) -> dict[str, Any]:
    """Log fields of a task: stage tasks take (campaign id[, round, item]), outbox tasks a row id."""
    name = str(getattr(task, "name", ""))
    fields: dict[str, Any] = {"task": name}
    stage = name.removeprefix("onbrand.")
    if stage in PIPELINE and args:  # the gateway sends the first stage with the campaign id only
        rnd, item = (list(args[1:3]) + [0, 0])[:2]
        fields.update(campaign_id=args[0], stage=stage, round=rnd, item=item)
    elif args and name in ("onbrand.send_webhook", "onbrand.push_results"):
        fields["delivery_id"] = args[0]
    return fields


def on_prerun(task_id: str, task: Any, args: tuple[Any, ...] = (), **_: Any) -> None:
    logs.clear()
    logs.bind(task_id=task_id, **task_context(task, tuple(args or ())))
    parent = tracing.extract(task.request)
    span = tracing.tracer().start_span(
        f"run {task.name}",
        context=parent,
        kind=SpanKind.CONSUMER,
        attributes={
            "celery.task_id": task_id,
            "celery.task_name": task.name,
            **{f"onbrand.{k}": v for k, v in logs.context().items()},
        },
    )
    token = otel_context.attach(set_span_in_context(span, parent))
    _running[task_id] = (span, token, time.perf_counter(), time.thread_time())
    _observe_queue_wait(task)


def _observe_queue_wait(task: Any) -> None:
    """onbrand_task_queue_wait_seconds from the send time the producer put in the headers (shared.queue.send);
    a message from an older producer has none. A Celery retry keeps the first send's headers: its wait includes the
    failed attempt and the countdown."""
    sent = getattr(task.request, SENT_AT_HEADER, None)
    try:
        waited = time.time() - float(sent) if sent is not None else None
    except (TypeError, ValueError):
        return
    if waited is not None:
        metrics.TASK_QUEUE_WAIT.labels(task.name).observe(max(0.0, waited))


def on_postrun(task_id: str, task: Any, state: str | None = None, **_: Any) -> None:
    entry = _running.pop(task_id, None)
    if entry is None:
        return
    span, token, started, cpu = entry
    outcome = (state or "unknown").lower()
    metrics.TASK_CPU.labels(task.name).inc(time.thread_time() - cpu)
    metrics.TASK_DURATION.labels(task.name, outcome).observe(time.perf_counter() - started)
    if outcome == "failure":
        span.set_status(Status(StatusCode.ERROR))
    span.set_attribute("celery.state", outcome)
    span.end()
    otel_context.detach(token)
    logs.clear()


def on_retry(request: Any = None, reason: Any = None, **_: Any) -> None:
    name = str(getattr(request, "task", None) or getattr(request, "name", "") or "unknown")
    metrics.TASK_RETRIES.labels(name).inc()
    entry = _running.get(str(getattr(request, "id", "")))
    if entry is not None:
        entry[0].add_event("retry", {"reason": str(reason)[:500]})


def on_failure(task_id: str, exception: BaseException | None = None, sender: Any = None, **_: Any) -> None:
    metrics.TASK_FAILURES.labels(str(getattr(sender, "name", "unknown"))).inc()
    entry = _running.get(task_id)
    if entry is not None and exception is not None:
        entry[0].record_exception(exception)


class Heartbeat(bootsteps.StartStopStep):
    """Touch <home>/worker.heartbeat from the worker's event loop: if the loop hangs the file goes
    stale and the liveness probe (`onbrand probe heartbeat`) restarts the pod; a broker outage alone
    does not (the loop keeps turning while it reconnects)."""

    requires = ("celery.worker.components:Timer",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.tref: Any = None

    def start(self, worker: Any) -> None:
        settings = get_settings()
        path = heartbeat_file(settings, "worker")
        touch(path)
        self.tref = worker.timer.call_repeatedly(settings.heartbeat_seconds, touch, (path,), priority=10)

    def stop(self, worker: Any) -> None:
        if self.tref is not None:
            self.tref.cancel()


class HeartbeatScheduler(PersistentScheduler):
    """Celery beat's scheduler, touching <home>/beat.heartbeat on every tick (at least every
    heartbeat_seconds: max_interval is capped to it)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._heartbeat = heartbeat_file(get_settings(), "beat")
        limit, current = get_settings().heartbeat_seconds, self.max_interval  # Scheduler.__init__ set it
        # celery-types declares max_interval int | None, but beat takes fractional seconds
        self.max_interval = limit if current is None else min(current, limit)  # type: ignore[assignment]

    def tick(self, *args: Any, **kwargs: Any) -> float:
        interval = super().tick(*args, **kwargs)
        touch(self._heartbeat)
        return interval


def install(app: Any) -> None:
    """Connect the handlers above to `app`'s worker (called once, by workers.celery_app)."""
    from celery import signals

    signals.task_prerun.connect(on_prerun, weak=False)
    signals.task_postrun.connect(on_postrun, weak=False)
    signals.task_retry.connect(on_retry, weak=False)
    signals.task_failure.connect(on_failure, weak=False)
    signals.setup_logging.connect(_setup_logging, weak=False)
    signals.worker_process_init.connect(_init_process, weak=False)
    signals.worker_process_shutdown.connect(_flush_tracing, weak=False)
    signals.worker_ready.connect(_serve_metrics, weak=False)
    app.steps["worker"].add(Heartbeat)


def _setup_logging(**_: Any) -> None:
    # Connected at all, this replaces Celery's own logging set-up (worker and beat main process;
    # pool processes inherit the root handler when they are forked).
    logs.configure(get_settings())


def _init_process(**_: Any) -> None:
    tracing.setup(get_settings(), "onbrand-worker")  # in each pool process: its exporter thread is its own
    metrics.init_labels()


def _flush_tracing(**_: Any) -> None:
    tracing.shutdown()


def _serve_metrics(**_: Any) -> None:
    metrics.serve_worker_metrics(get_settings().metrics_port)
