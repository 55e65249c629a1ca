"""The OpenAPI document says what the 422s really are: RFC 9457 problem+json, not FastAPI's JSON shape.

FastAPI documents every validation error as `application/json` (its HTTPValidationError); the
gateway answers `application/problem+json` (errors.py). Clients and schemathesis read the document,
so it must name the media type that is sent.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI

from services.gateway.errors import PROBLEM_MEDIA_TYPE

PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "code"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": ["string", "null"]},
        "instance": {"type": "string"},
        "code": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}


def _as_problems(schema: dict[str, Any]) -> dict[str, Any]:
    for item in schema.get("paths", {}).values():
        for operation in item.values():
            content = operation.get("responses", {}).get("422", {}).get("content")
            if isinstance(content, dict) and "application/json" in content:
                del content["application/json"]
                content[PROBLEM_MEDIA_TYPE] = {"schema": PROBLEM_SCHEMA}
    return schema


def install(app: FastAPI) -> None:
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _as_problems(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
