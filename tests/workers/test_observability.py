"""Observability in process: one trace from a gateway request through a real Celery worker (real
Redis in between, spans kept by an in-memory exporter), JSON log lines carrying tenant and trace ids,
the worker's heartbeat, queue depths on /metrics, and the `onbrand probe` commands.

The same over real processes (OTLP to a local collector, worker /metrics after a campaign) is in
tests/e2e/test_e2e.py."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from shared import logs, metrics, queue
from shared.cli.procs import base_env, onbrand_cmd
from shared.config import Settings
from tests.factories import Receiver, Tenant
from tests.system import clear_caches

_EXPORTER = InMemorySpanExporter()


def memory_exporter() -> InMemorySpanExporter:
    """The process's SDK tracer provider (set once per process) with the in-memory exporter on it."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        trace.set_tracer_provider(TracerProvider())
        provider = trace.get_tracer_provider()
    if not getattr(provider, "_onbrand_memory", False):
        provider.add_span_processor(SimpleSpanProcessor(_EXPORTER))
        provider._onbrand_memory = True  # type: ignore[attr-defined]
    _EXPORTER.clear()
    return _EXPORTER


def private_redis(env: dict[str, str], monkeypatch: pytest.MonkeyPatch, db: int) -> str:
    """A Redis database of this test's own: the session's end-to-end workers share the server's db 0
    and would consume (or add to) what this test queues."""
    import redis

    if not env["ONBRAND_REDIS_URL"].startswith("redis://"):
        pytest.skip("needs a TCP Redis URL")
    url = env["ONBRAND_REDIS_URL"].rsplit("/", 1)[0] + f"/{db}"
    redis.Redis.from_url(url).flushdb()
    monkeypatch.setenv("ONBRAND_REDIS_URL", url)
    clear_caches()
    queue.producer.cache_clear()
    return url


@pytest.fixture
def worker(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A real Celery worker (the production app, its signals and bootsteps) in a thread of this process,
    consuming the webhooks queue of the test's Redis."""
    from celery.contrib.testing.worker import start_worker

    monkeypatch.setenv("ONBRAND_EGRESS_ALLOWLIST", "127.0.0.0/8")
    url = private_redis(env, monkeypatch, 14)
    from workers.celery_app import app as celery_app

    celery_app.conf.broker_url = url
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level  # the worker sets up logging as in production
    try:
        with start_worker(
            celery_app,
            pool="solo",
            concurrency=1,
            perform_ping_check=False,
            queues=("webhooks",),
            loglevel="INFO",
            shutdown_timeout=15,
        ) as running:
            yield running
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        queue.producer.cache_clear()
        clear_caches()


@pytest.fixture
def json_lines() -> Iterator[io.StringIO]:
    """What the root logger writes, through the production JSON formatter."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    level, root.level = root.level, logging.INFO
    yield out
    root.removeHandler(handler)
    root.setLevel(level)


def wait_for(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout:.0f} s")


def ancestors(span: ReadableSpan, spans: tuple[ReadableSpan, ...]) -> list[int]:
    by_id = {s.context.span_id: s for s in spans}
    found, parent = [], span.parent
    while parent is not None:
        found.append(parent.span_id)
        parent = by_id[parent.span_id].parent if parent.span_id in by_id else None
    return found


def span_named(spans: tuple[ReadableSpan, ...], name: str) -> ReadableSpan:
    matches = [s for s in spans if s.name == name]
    assert len(matches) == 1, (name, [s.name for s in spans])
    return matches[0]


def test_one_trace_from_request_through_the_worker(
    worker: Any, app: Any, acme: Tenant, json_lines: io.StringIO
) -> None:
    exporter = memory_exporter()
    receiver = Receiver()
    with TestClient(app) as client:
        hook = client.post("/v1/webhook-endpoints", json={"url": receiver.url}, headers=acme.auth).json()
        exporter.clear()
        # A caller's own trace (W3C trace context: version, trace id, parent id, flags): the request joins it.
        caller = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        sent = client.post(f"/v1/webhook-endpoints/{hook['id']}/test", headers={**acme.auth, "traceparent": caller})
    assert sent.status_code == 202, sent.text
    wait_for(lambda: receiver.requests)
    spans = wait_for(lambda: (s := exporter.get_finished_spans()) and any(x.name.startswith("run ") for x in s) and s)

    [request] = [s for s in spans if s.kind == SpanKind.SERVER]
    send = span_named(spans, "send onbrand.send_webhook")
    run = span_named(spans, "run onbrand.send_webhook")
    assert request.name == "POST /v1/webhook-endpoints/{endpoint_id}/test"
    assert (send.kind, run.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert format(request.context.trace_id, "032x") == "0af7651916cd43dd8448eb211c80319c"
    assert request.parent.span_id == int("b7ad6b7169203331", 16)
    assert {s.context.trace_id for s in spans} == {request.context.trace_id}  # nothing outside the caller's trace
    assert request.context.span_id in ancestors(send, spans)  # sent after commit, inside the request
    assert run.parent.span_id == send.context.span_id  # the header crossed Redis to the worker
    assert request.attributes["http.route"] == "/v1/webhook-endpoints/{endpoint_id}/test"
    assert request.attributes["http.response.status_code"] == 202
    assert any(s.attributes.get("onbrand.tenant_id") == str(acme.id) for s in spans)
    assert run.attributes["onbrand.delivery_id"] == sent.json()["id"]
    assert run.attributes["celery.state"] == "success"

    # The worker's log line for the task carries the same trace, the task and the tenant.
    trace_id = format(run.context.trace_id, "032x")
    lines = [json.loads(line) for line in json_lines.getvalue().splitlines() if line.startswith("{")]
    done = [line for line in lines if line.get("task") == "onbrand.send_webhook" and "succeeded" in line["message"]]
    assert done, lines[-5:]
    assert done[-1]["trace_id"] == trace_id and done[-1]["tenant_id"] == str(acme.id)
    assert done[-1]["delivery_id"] == sent.json()["id"] and done[-1]["level"] == "INFO"


def test_worker_touches_its_heartbeat_from_its_event_loop(
    env: dict[str, str], worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = Path(env["ONBRAND_HOME"]) / "worker.heartbeat"
    wait_for(path.exists)
    os.utime(path, (time.time() - 3600, time.time() - 3600))  # make it stale; the worker must renew it
    monkeypatch.setenv("ONBRAND_HEARTBEAT_SECONDS", "0.2")  # read by the probe only: the worker keeps 10 s
    assert probe(env, "heartbeat", "--max-age", "60").returncode == 1
    wait_for(lambda: time.time() - path.stat().st_mtime < 60, timeout=20)
    assert probe(env, "heartbeat", "--max-age", "60").returncode == 0


def probe(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        onbrand_cmd("probe", *args),
        env=base_env(Path(env["ONBRAND_HOME"]), **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_probe_heartbeat(tmp_path: Path) -> None:
    env = {"ONBRAND_HOME": str(tmp_path)}
    missing = probe(env, "heartbeat")
    assert missing.returncode == 1 and "no heartbeat file" in missing.stderr
    beat = tmp_path / "beat.heartbeat"
    beat.touch()
    assert probe(env, "heartbeat", "--process", "beat").returncode == 0
    os.utime(beat, (time.time() - 300, time.time() - 300))
    stale = probe(env, "heartbeat", "--process", "beat", "--max-age", "120")
    assert stale.returncode == 1 and "300 s ago" in stale.stderr.replace("299", "300").replace("301", "300")
    assert probe(env, "heartbeat", "--process", "gateway").returncode == 2  # a usage error, named


def test_probe_http(tmp_path: Path) -> None:
    receiver = Receiver()  # answers 501 to GET (it only implements POST)
    down = probe({"ONBRAND_HOME": str(tmp_path)}, "http", "--url", "http://127.0.0.1:9/healthz", "--timeout", "2")
    assert down.returncode == 1 and "unhealthy" in down.stderr
    wrong = probe({"ONBRAND_HOME": str(tmp_path)}, "http", "--url", receiver.url)
    assert wrong.returncode == 1 and "HTTP 501" in wrong.stderr


def test_metrics_show_queue_depths(app: Any, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    import redis

    url = private_redis(env, monkeypatch, 15)
    app.state.settings = app.state.settings.model_copy(update={"redis_url": url})
    client = redis.Redis.from_url(url)
    try:
        for _ in range(3):
            queue.send("onbrand.generate", uuid.uuid4(), 0, 0)
        queue.send("onbrand.embed_assets", uuid.uuid4(), priority=queue.BULK_PRIORITY)  # its own priority list
        with TestClient(app) as http:
            text = http.get("/metrics").text
    finally:
        client.flushdb()
        queue.producer.cache_clear()
    assert metrics.sample_total(text, "onbrand_queue_depth", queue="generate") == 3
    assert metrics.sample_total(text, "onbrand_queue_depth", queue="retrieval") == 1
    assert metrics.sample_total(text, "onbrand_queue_depth", queue="qc") == 0
    assert {"onbrand_queue_depth", "onbrand_tasks_in_flight", "onbrand_http_requests"} <= metrics.names(text)


def test_metrics_survive_a_broker_outage(app: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    app.state.settings = app.state.settings.model_copy(update={"redis_url": "redis://127.0.0.1:9/0"})
    with TestClient(app) as http:
        response = http.get("/metrics")
    assert response.status_code == 200
    assert "onbrand_http_requests" in metrics.names(response.text)
    assert "onbrand_queue_depth" not in metrics.names(response.text)


def test_text_format_and_bound_context(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.TextFormatter())
    log = logging.getLogger("onbrand.test")
    log.addHandler(handler)
    log.propagate = False
    try:
        logs.clear()
        logs.bind(tenant_id="t-1", campaign_id=None)
        with logs.bound(stage="qc"):
            log.warning("inside")
        log.warning("outside")
    finally:
        log.removeHandler(handler)
        log.propagate = True
        logs.clear()
    inside, outside = out.getvalue().splitlines()
    assert inside.endswith("inside tenant_id=t-1 stage=qc") and outside.endswith("outside tenant_id=t-1")
    assert "campaign_id" not in inside


def test_tracing_is_off_by_default() -> None:
    from shared import tracing

    assert Settings().otel_exporter == "none"
    assert tracing.setup(Settings(), "onbrand-test") is False
