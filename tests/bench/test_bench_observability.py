"""What observability costs per event on the 2-core machines: a task send's producer span and
traceparent injection (tracing off, the default, and on with a batch exporter), one JSON log line, and
a histogram observation in a worker's multiprocess mode (a subprocess: the mode is chosen at import).

No target is set by the issue; the figures say the instrumentation is negligible next to a stage
(tens of milliseconds at the least) and a webhook attempt (~8 ms, test_bench_webhooks.py).
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from shared import logs, tracing

pytestmark = pytest.mark.bench
N = 20_000


def per_call_us(fn: object, n: int = N) -> float:
    start = time.perf_counter()
    for _ in range(n):
        fn()  # type: ignore[operator]
    return (time.perf_counter() - start) / n * 1e6


def _send_span(tracer: object) -> None:
    with tracer.start_as_current_span("send onbrand.qc", kind=SpanKind.PRODUCER):  # type: ignore[attr-defined]
        tracing.inject()


def test_bench_observability_overhead() -> None:
    off = per_call_us(lambda: _send_span(tracing.tracer()))  # no provider installed: the API's no-op
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter(), max_queue_size=N * 2))
    on = per_call_us(lambda: _send_span(provider.get_tracer("onbrand")))
    provider.shutdown()
    formatter = logs.JsonFormatter()
    logs.clear()
    logs.bind(tenant_id="9f6c", campaign_id="4b1e", stage="qc", task="onbrand.qc")
    record = logging.LogRecord("onbrand.stages", logging.INFO, __file__, 1, "stage %s done", ("qc",), None)
    log_us = per_call_us(lambda: formatter.format(record))
    logs.clear()
    code = (
        "import os, tempfile, time; os.environ['PROMETHEUS_MULTIPROC_DIR'] = tempfile.mkdtemp(); "
        "from shared.metrics import STAGE_DURATION as h; c = h.labels('qc', 'succeeded'); n = 20000; "
        "t = time.perf_counter(); [c.observe(0.2) for _ in range(n)]; "
        "print((time.perf_counter() - t) / n * 1e6)"
    )
    observe_us = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    print(
        f"\nobservability per event: task-send span + traceparent {off:.1f} µs (tracing off), "
        f"{on:.1f} µs (on, batch exporter); JSON log line {log_us:.1f} µs; "
        f"histogram observe (worker multiprocess mode) {observe_us:.1f} µs"
    )
    assert 0 < off < on and log_us > 0 and observe_us > 0
