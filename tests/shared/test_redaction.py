"""A review link's token is a credential in the URL: spans, log lines and problem instances never carry it."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from shared.tracing import RedactPaths, redacted_path

TOKEN = "0f1e2d3c4b5a69788796a5b4c3d2e1f0.1800000000.c2lnbmF0dXJl"


def test_review_tokens_are_cut_from_paths_and_nothing_else_is() -> None:
    assert redacted_path(f"/review/{TOKEN}") == "/review/<token>"
    assert redacted_path(f"/review/{TOKEN}/results/abc/decision") == "/review/<token>/results/abc/decision"
    assert redacted_path("/v1/campaigns/abc/review-links") == "/v1/campaigns/abc/review-links"


def test_request_spans_are_exported_without_the_token() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(RedactPaths())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    with tracer.start_as_current_span("GET /review/{token}", attributes={"url.path": f"/review/{TOKEN}/state"}):
        pass
    with tracer.start_as_current_span("GET /v1/campaigns", attributes={"url.path": "/v1/campaigns"}):
        pass
    paths = [s.attributes["url.path"] for s in exporter.get_finished_spans()]
    assert paths == ["/review/<token>/state", "/v1/campaigns"]
    assert not any(TOKEN in str(s.to_json()) for s in exporter.get_finished_spans())
