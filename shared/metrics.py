"""Prometheus metrics of the pipeline, and where they are served.

The gateway serves /metrics on its own port: HTTP requests (services/gateway/middleware.py) plus,
read from Redis at scrape time, the depth of every queue. A worker serves its own /metrics on
ONBRAND_METRICS_PORT: Celery runs tasks in forked pool processes, so a worker runs in
prometheus_client's multiprocess mode (`onbrand worker` points PROMETHEUS_MULTIPROC_DIR at a fresh
directory before anything imports prometheus_client) and its main process sums the children's files.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric

from shared.queue import BULK_PRIORITY, CPU_QUEUES, GPU_QUEUES, TASK_QUEUES

log = logging.getLogger(__name__)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
QUEUES = CPU_QUEUES + GPU_QUEUES
# kombu keeps each Redis priority step in its own list: "q" for 0, "q\x06\x16<step>" for the others.
PRIORITY_STEPS = (3, 6, BULK_PRIORITY)
PRIORITY_SEP = "\x06\x16"

STAGE_DURATION = Histogram(
    "onbrand_stage_duration_seconds",
    "Compute time of one stage item (model work, no queue wait).",
    ["stage", "outcome"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
GPU_DISPATCH_WAIT = Histogram(
    "onbrand_gpu_dispatch_wait_seconds",
    "A GPU stage run's wait for a slot of the fair dispatcher (creation to send), by stage.",
    ["stage"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
CAMPAIGN_DURATION = Histogram(
    "onbrand_campaign_duration_seconds",
    "Campaign time from creation to its terminal status.",
    ["status"],
    buckets=(5, 10, 20, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200),
)
TASK_DURATION = Histogram(
    "onbrand_task_duration_seconds",
    "Celery task run time, by task and outcome.",
    ["task", "outcome"],
    buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800),
)
# The engine's own cost per stage item, outside the stage function (workers/engine/runner.py): what orchestration
# costs next to the model. claim and finish are the Postgres transactions (with their outbox rows and the next
# runs), send the Celery sends and the GPU dispatcher after commit.
ENGINE_PHASES = ("claim", "finish", "send")
ENGINE_DURATION = Histogram(
    "onbrand_stage_engine_seconds",
    "Wall time of one stage item's engine phase (claim, finish, send), outside the stage function.",
    ["stage", "phase"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
)
ENGINE_CPU = Counter(
    "onbrand_stage_engine_cpu_seconds",
    "CPU time the worker's task thread spent in the engine phases (Postgres's own CPU is not in it).",
    ["stage", "phase"],
)
STAGE_CPU = Counter(
    "onbrand_stage_cpu_seconds",
    "CPU time of the task thread in the stage function (threads the stage starts, e.g. torch's, not counted).",
    ["stage"],
)
TASK_CPU = Counter(
    "onbrand_task_cpu_seconds", "CPU time of a task's thread from its start to its end, by task.", ["task"]
)
MODEL_WARMUP = Histogram(
    "onbrand_model_warmup_seconds",
    "A pool process's warm-up at start: its queues' stage modules imported and their models loaded.",
    ["outcome"],
    buckets=(0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300),
)
STORAGE_DURATION = Histogram(
    "onbrand_storage_seconds",
    "Wall time of one object storage call (put, get), bytes already encoded.",
    ["op"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
)
TASK_QUEUE_WAIT = Histogram(
    "onbrand_task_queue_wait_seconds",
    "From a task's send to its start in a pool process (broker, prefetch, pool hand-off; across hosts, clock skew).",
    ["task"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5, 30, 300),
)
TASK_RETRIES = Counter("onbrand_task_retries_total", "Celery task retries scheduled.", ["task"])
TASK_FAILURES = Counter("onbrand_task_failures_total", "Celery tasks that raised (after their last retry).", ["task"])
GPU_SECONDS_PER_CANDIDATE = Histogram(
    "onbrand_gpu_seconds_per_candidate",
    "Accelerator seconds spent making one candidate (device=cpu where the generator ran on a CPU).",
    ["generator", "device"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
)
WEBHOOK_DELIVERIES = Counter(
    "onbrand_webhook_deliveries_total",
    "Webhook delivery attempts by outcome (delivered, retry, failed, skipped).",
    ["outcome"],
)
DAM_PUSHES = Counter("onbrand_dam_pushes_total", "DAM push attempts by outcome.", ["outcome"])
LLM_TOKENS = Counter(
    "onbrand_llm_tokens_total",
    "LLM tokens, by backend, model and direction (in, out).",
    ["backend", "model", "direction"],
)
LLM_COST = Counter(
    "onbrand_llm_cost_usd_total",
    "LLM cost in US dollars as priced by the backend (hosted backends; a local model costs 0).",
    ["backend", "model"],
)


OUTCOMES = ("delivered", "retry", "failed", "skipped")


def init_labels() -> None:
    """Known label values at 0, so that a series exists (and rate() and alerts work) before its first
    event; in multiprocess mode a metric never touched would not be exposed at all."""
    for task in TASK_QUEUES:
        TASK_RETRIES.labels(task)
        TASK_FAILURES.labels(task)
    for outcome in OUTCOMES:
        WEBHOOK_DELIVERIES.labels(outcome)
        DAM_PUSHES.labels(outcome)


def campaign_finished(status: str, created_at: datetime | None) -> None:
    """A campaign's terminal transition (wherever its status is set: worker or gateway)."""
    if created_at is not None:
        CAMPAIGN_DURATION.labels(status).observe(max(0.0, (datetime.now(UTC) - created_at).total_seconds()))


def observe_llm_call(backend: str, model: str, tokens_in: int, tokens_out: int, cost_usd: float | None) -> None:
    LLM_TOKENS.labels(backend, model, "in").inc(tokens_in)
    LLM_TOKENS.labels(backend, model, "out").inc(tokens_out)
    LLM_COST.labels(backend, model).inc(cost_usd or 0.0)


# --- queue depth (gateway, at scrape time) ------------------------------------------------------


def queue_keys(queue: str) -> list[str]:
    return [queue, *(f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS)]


def queue_depths(client: Any) -> dict[str, int]:
    """Messages waiting in each queue, all priority lists summed (one pipelined round trip)."""
    pipe = client.pipeline(transaction=False)
    for queue in QUEUES:
        for key in queue_keys(queue):
            pipe.llen(key)
    lengths = iter(pipe.execute())
    return {queue: sum(next(lengths) for _ in queue_keys(queue)) for queue in QUEUES}


class QueueCollector:
    """onbrand_queue_depth{queue} and onbrand_tasks_in_flight (delivered to a worker, not yet acked)."""

    def __init__(self, client: Any) -> None:
        self.client = client

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("onbrand_queue_depth", "Tasks waiting in each Celery queue.", labels=["queue"])
        for queue, n in queue_depths(self.client).items():
            depth.add_metric([queue], n)
        yield depth
        yield GaugeMetricFamily(
            "onbrand_tasks_in_flight",
            "Tasks delivered to a worker and not yet acknowledged.",
            value=self.client.hlen("unacked"),
        )


def registry_of(*collectors: Any) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    for collector in collectors:
        registry.register(collector)
    return registry


# --- a worker's /metrics (multiprocess) ---------------------------------------------------------


def prepare_multiprocess() -> str:
    """A fresh, empty directory for this worker's metric files (a restarted container must not add
    its previous run's counts), exported for the process about to exec Celery and its children."""
    path = tempfile.mkdtemp(prefix="onbrand-metrics-")
    os.environ[MULTIPROC_ENV] = path
    return path


def serve_worker_metrics(port: int, addr: str = "0.0.0.0") -> bool:  # noqa: S104 - scraped from outside the pod
    """Serve the sum of this worker's pool processes' metrics; False (logged) when the port is taken,
    so that a metrics problem never stops a worker from working."""
    from prometheus_client import multiprocess

    if not port or not os.environ.get(MULTIPROC_ENV):
        return False
    registry = CollectorRegistry()
    # prometheus_client ships py.typed but leaves MultiProcessCollector.__init__ unannotated
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    try:
        start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        log.error("worker metrics: cannot listen on %s:%s: %s", addr, port, exc)
        return False
    return True


def names(text: str) -> set[str]:
    """Metric family names in a Prometheus text exposition (for tests and `onbrand` checks)."""
    from prometheus_client.parser import text_string_to_metric_families

    return {family.name for family in text_string_to_metric_families(text)}


def sample_total(text: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )
