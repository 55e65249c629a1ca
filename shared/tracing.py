"""OpenTelemetry traces: gateway request → task → task …, one trace per campaign run.

Off by default (ONBRAND_OTEL_EXPORTER=none: the API's no-op tracer, nothing is recorded). The
trace context crosses the broker as a W3C `traceparent` header on every task message
(shared.queue.send injects it; the worker's task_prerun handler extracts it), so each stage's
span is a child of the span that sent it, back to the HTTP request that created the campaign.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Mapping, MutableMapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.config import Settings

log = logging.getLogger(__name__)
TRACER_NAME = "onbrand"
_propagator = TraceContextTextMapPropagator()
_lock = threading.Lock()
_configured: dict[str, Any] = {}


def setup(settings: Settings, service: str) -> bool:
    """Install the configured exporter once per process; returns whether tracing is on."""
    if settings.otel_exporter == "none":
        return False
    with _lock:
        if not _configured:
            trace.set_tracer_provider(_provider(settings, service))
            _configured["service"] = service
    return True


# A review link's token is a credential in the URL path (/review/<token>/...): never in a span, a log line or
# a problem's instance.
_REVIEW_TOKEN = re.compile(r"^/review/[^/]+")


def redacted_path(path: str) -> str:
    return _REVIEW_TOKEN.sub("/review/<token>", path)


class RedactPaths(SpanProcessor):
    """Span processor: url.path without review tokens (set when the request span starts)."""

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        path = (span.attributes or {}).get("url.path")
        if isinstance(path, str) and path.startswith("/review/"):
            span.set_attribute("url.path", redacted_path(path))


def _provider(settings: Settings, service: str) -> Any:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    provider = TracerProvider(
        resource=Resource.create({"service.name": service, "service.namespace": "onbrand"}),
        sampler=ParentBased(TraceIdRatioBased(settings.otel_sample_ratio)),
    )
    provider.add_span_processor(RedactPaths())  # first: runs before the exporter's processor
    provider.add_span_processor(BatchSpanProcessor(_exporter(settings)))
    return provider


def _exporter(settings: Settings) -> Any:
    if settings.otel_exporter == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    # endpoint None: the exporter reads OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, else localhost:4318
    return OTLPSpanExporter(endpoint=settings.otel_endpoint)


def shutdown() -> None:
    """Flush spans still buffered (a process about to exit)."""
    provider = trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


def tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER_NAME)


def inject(carrier: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """The current trace context as message headers ({} when no span is recording)."""
    headers: dict[str, str] = dict(carrier or {})
    _propagator.inject(headers)
    return headers


class _AttrGetter(Getter[Any]):
    """Celery puts custom message headers on task.request as attributes (or dict keys)."""

    def get(self, carrier: Any, key: str) -> list[str] | None:
        value = carrier.get(key) if isinstance(carrier, Mapping) else getattr(carrier, key, None)
        return [value] if isinstance(value, str) else None

    def keys(self, carrier: Any) -> list[str]:
        return list(carrier) if isinstance(carrier, Mapping) else []


def extract(carrier: Any) -> otel_context.Context:
    return _propagator.extract(carrier, getter=_AttrGetter())
