"""Pure ASGI middleware: request metrics and log context; a request-body ceiling.

Pure ASGI rather than BaseHTTPMiddleware: no extra task per request and streaming bodies
pass through untouched.
"""

from __future__ import annotations

import json
import time
import uuid
from functools import cache
from typing import Any

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.errors import PROBLEM_MEDIA_TYPE, ProblemError, problem_body
from shared import logs
from shared.tracing import redacted_path

# Module level: prometheus metrics are process-wide, and create_app may run more than once.
REQUESTS = Counter("onbrand_http_requests_total", "HTTP requests handled.", ["method", "route", "status"])
LATENCY = Histogram(
    "onbrand_http_request_duration_seconds",
    "HTTP request latency.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)


def route_template(scope: Scope) -> str:
    # The template ("/v1/campaigns/{campaign_id}"), never the raw path: ids would explode cardinality.
    route = scope.get("route")
    return getattr(route, "path", None) or "<unmatched>"


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status, start = 500, time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        logs.clear()  # a fresh log context per request (the tenant is bound once authenticated)
        logs.bind(request_id=uuid.uuid4().hex[:16])
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            method, route = scope["method"], route_template(scope)
            _counter(method, route, status).inc()
            _latency(method, route).observe(time.perf_counter() - start)


# A labelled child per label set, looked up once: labels() takes a lock and validates its arguments each call. The
# label sets are bounded (route templates, methods, statuses), as the metrics' cardinality already requires.
@cache
def _counter(method: str, route: str, status: int) -> Any:
    return REQUESTS.labels(method, route, str(status))


@cache
def _latency(method: str, route: str) -> Any:
    return LATENCY.labels(method, route)


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyLimitMiddleware:
    """Refuse request bodies over max_bytes without reading them into memory or onto disk.

    A declared Content-Length over the limit is refused before any byte is read; a chunked
    body is cut off as soon as it crosses the limit (ProblemError passes through FastAPI's
    body parsing as an HTTP error and becomes a 413 problem).
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(scope, send)
            return
        await self.app(scope, self._counting(receive), send)

    def _too_large(self) -> ProblemError:
        return ProblemError(
            413, "payload_too_large", "Payload too large", f"The request body is larger than {self.max_bytes} bytes."
        )

    def _counting(self, receive: Receive) -> Receive:
        received = 0

        async def wrapped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()
            return message

        return wrapped

    async def _refuse(self, scope: Scope, send: Send) -> None:
        exc = self._too_large()
        body = json.dumps(
            problem_body(413, exc.code, exc.title, exc.detail, redacted_path(scope.get("path", "")))
        ).encode()
        # Connection: close because the unread body is still on the wire.
        headers = [
            (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
