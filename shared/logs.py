"""Structured logs: one JSON object per line, carrying who and what a line is about.

Context (tenant, campaign, stage, task, request) lives in a ContextVar, so it follows a request
through FastAPI's thread pool and a task through its stage function without being passed around;
the trace and span ids of the current OpenTelemetry span are added to every line, so a log line
leads to its trace. Gateway, workers and beat call configure() once at start-up.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

from shared.config import Settings

# One dict per request or task, set by clear() at its start and filled in place by bind(): FastAPI runs
# sync dependencies in copies of the request's context, and those copies share the dict, so a tenant
# bound while authenticating is on every later line of the request.
_context: ContextVar[dict[str, str] | None] = ContextVar("onbrand_log_context", default=None)
# LogRecord attributes that are not extra fields given by the caller.
# (color_message: uvicorn's copy of the message with terminal colour codes.)
_RECORD_KEYS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "color_message",
}


def _fields(fields: dict[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in fields.items() if v is not None}


def clear() -> None:
    """Start a fresh context (a new request or task)."""
    _context.set({})


def bind(**fields: Any) -> None:
    """Add fields to this request's or task's log context (None values are dropped)."""
    current = _context.get()
    if current is None:
        _context.set(_fields(fields))
    else:
        current.update(_fields(fields))


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """The fields for the duration of a block, then the context as it was."""
    token = _context.set({**(_context.get() or {}), **_fields(fields)})
    try:
        yield
    finally:
        _context.reset(token)


def context() -> dict[str, str]:
    return dict(_context.get() or {})


def trace_ids() -> dict[str, str]:
    span = trace.get_current_span().get_span_context()
    if not span.is_valid:
        return {}
    return {"trace_id": format(span.trace_id, "032x"), "span_id": format(span.span_id, "016x")}


class JsonFormatter(logging.Formatter):
    """ts, level, logger, message, the bound context, trace ids, extra= fields and the exception."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": record.process,
            **context(),
            **trace_ids(),
        }
        line.update({k: v for k, v in vars(record).items() if k not in _RECORD_KEYS and not k.startswith("_")})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Plain lines with the context appended as key=value (development)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        extra = " ".join(f"{k}={v}" for k, v in {**context(), **trace_ids()}.items() if k != "span_id")
        return f"{super().format(record)} {extra}".rstrip()


def configure(settings: Settings) -> None:
    """Root logger to stderr in the configured format; every library's logger propagates to it."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
