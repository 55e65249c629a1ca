"""RFC 9457 problem details (application/problem+json) for every error the gateway returns.

Each problem carries a stable machine-readable `code` next to the RFC fields, so clients
branch on `code` and never on `title` or `detail` (which are for humans and may change).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from psycopg import OperationalError as PsycopgOperationalError
from sqlalchemy.exc import OperationalError as SqlOperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.db.outage import database_unavailable
from shared.tracing import redacted_path

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"

# Fallback code and title for HTTP errors raised by the framework itself (404 route, 405, ...).
_STATUS_CODES: dict[int, tuple[str, str]] = {
    400: ("bad_request", "Bad request"),
    401: ("unauthorized", "Unauthorized"),
    403: ("forbidden", "Forbidden"),
    404: ("not_found", "Not found"),
    405: ("method_not_allowed", "Method not allowed"),
    409: ("conflict", "Conflict"),
    413: ("payload_too_large", "Payload too large"),
    415: ("unsupported_media_type", "Unsupported media type"),
    422: ("validation_error", "Validation error"),
    429: ("rate_limited", "Too many requests"),
    503: ("unavailable", "Service unavailable"),
}

# Field error types that are themselves stable codes: a 422 made only of such errors carries that code.
UNKNOWN_PRESET = "unknown_preset"
_FIELD_CODES = frozenset({UNKNOWN_PRESET})


class ProblemError(StarletteHTTPException):
    """An error a service raises to end the request with a problem response.

    It subclasses Starlette's HTTPException so it also passes through places that
    only re-raise HTTP errors (for example FastAPI's request-body parsing).
    """

    def __init__(
        self,
        status: int,
        code: str,
        title: str,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(status_code=status, detail=detail, headers=dict(headers) if headers else None)
        self.code, self.title, self.extra = code, title, dict(extra or {})


def not_found(resource: str) -> ProblemError:
    # Another tenant's object is reported exactly like a missing one, so ids leak nothing.
    return ProblemError(404, "not_found", "Not found", f"{resource} not found.")


def unknown_reference(field: str, detail: str) -> ProblemError:
    return ProblemError(422, "unknown_reference", "Unknown reference", detail, extra={"field": field})


def conflict(detail: str) -> ProblemError:
    return ProblemError(409, "conflict", "Conflict", detail)


def validation_problem(errors: Sequence[Mapping[str, Any]]) -> ProblemError:
    """A 422 validation_error with explicit field errors, for checks done outside pydantic."""
    return ProblemError(
        422,
        "validation_error",
        "Validation error",
        _validation_detail(errors),
        extra={"errors": [_field_error(e) for e in errors]},
    )


def problem_body(
    status: int, code: str, title: str, detail: str | None, instance: str, extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "type": f"urn:onbrand:problem:{code}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": instance,
        "code": code,
        **(extra or {}),
    }


def problem_response(
    request: Request,
    status: int,
    code: str,
    title: str,
    detail: str | None = None,
    *,
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    body = problem_body(status, code, title, detail, redacted_path(request.url.path), extra)
    return JSONResponse(body, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_MEDIA_TYPE)


def _field_error(error: Mapping[str, Any]) -> dict[str, Any]:
    # Only loc/msg/type: pydantic's `input` and `ctx` could echo secrets or large payloads back.
    return {"loc": list(error.get("loc", ())), "msg": str(error.get("msg", "")), "type": str(error.get("type", ""))}


def _validation_detail(errors: Sequence[Mapping[str, Any]]) -> str:
    count = len(errors)
    return f"The request has {count} invalid field{'s' if count != 1 else ''}."


async def _problem_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(
        request, exc.status_code, exc.code, exc.title, exc.detail, headers=exc.headers, extra=exc.extra
    )


async def _http_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code, title = _STATUS_CODES.get(exc.status_code, ("http_error", "HTTP error"))
    detail = exc.detail if isinstance(exc.detail, str) else None
    return problem_response(request, exc.status_code, code, title, detail, headers=exc.headers)


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    types = {str(e.get("type", "")) for e in errors}
    code = types.pop() if len(types) == 1 and types <= _FIELD_CODES else "validation_error"
    return problem_response(
        request,
        422,
        code,
        "Validation error",
        _validation_detail(errors),
        extra={"errors": [_field_error(e) for e in errors]},
    )


# Seconds a client should wait before retrying while the database is unreachable (a restart takes seconds).
DATABASE_RETRY_AFTER_S = 5


def database_unavailable_response(request: Request) -> JSONResponse:
    return problem_response(
        request,
        503,
        "database_unavailable",
        "Database unavailable",
        "The database cannot be reached right now; retry after the time in Retry-After.",
        headers={"Retry-After": str(DATABASE_RETRY_AFTER_S)},
    )


async def _database_handler(request: Request, exc: Exception) -> JSONResponse:
    if not database_unavailable(exc):
        return await _unhandled_handler(request, exc)
    log.warning("database unavailable on %s %s: %s", request.method, redacted_path(request.url.path), exc)
    return database_unavailable_response(request)


async def _unhandled_handler(request: Request, exc: Exception) -> JSONResponse:
    if database_unavailable(exc):  # raised outside the routes (a middleware): still a 503
        return await _database_handler(request, exc)
    log.exception("unhandled error on %s %s", request.method, redacted_path(request.url.path), exc_info=exc)
    return problem_response(request, 500, "internal_error", "Internal error", "An unexpected error occurred.")


def install(app: FastAPI) -> None:
    """Route every error through problem+json, overriding FastAPI's default JSON shapes."""
    app.add_exception_handler(ProblemError, _problem_handler)
    app.add_exception_handler(StarletteHTTPException, _http_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    for outage in (SqlOperationalError, PoolTimeoutError, PsycopgOperationalError):
        app.add_exception_handler(outage, _database_handler)
    app.add_exception_handler(Exception, _unhandled_handler)
