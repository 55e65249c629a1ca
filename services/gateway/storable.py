"""Text Postgres cannot store is refused at the edge: one check for every route and every input.

Postgres text and jsonb hold neither NUL (U+0000) nor lone UTF-16 surrogates (U+D800-U+DFFF, which
Python's json module decodes from `"\\ud800"` and no UTF-8 encoder writes). Left alone, such a string
passes pydantic and fails inside the database as a 500. `reject_unstorable_text` runs as an
app-wide dependency, after FastAPI has parsed the body (its parse is cached on the request, so
nothing is read twice) and before any endpoint touches the session: path and query parameters,
JSON bodies, and multipart fields, including the JSON a field carries (asset metadata), where an
escaped `\\u0000` only becomes NUL once decoded.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.datastructures import UploadFile

from services.gateway.errors import validation_problem

Loc = tuple[str | int, ...]


def storable(text: str) -> bool:
    """True when Postgres can store `text`: no NUL and valid UTF-8 (no lone surrogate)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")  # the C encoder: a lone surrogate is the only thing it refuses
    except UnicodeEncodeError:
        return False
    return True


def unstorable_locations(value: Any, loc: Loc) -> Iterator[Loc]:
    """Where in a decoded JSON value (strings, keys, lists, objects) an unstorable string sits."""
    if isinstance(value, str):
        if not storable(value):
            yield loc
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and not storable(key):
                yield (*loc, "<key>")
            yield from unstorable_locations(item, (*loc, str(key)))
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        for index, item in enumerate(value):
            yield from unstorable_locations(item, (*loc, index))


def _embedded_json(text: str) -> Any:
    # A multipart field documented as JSON (metadata): its escapes decode to what the service stores.
    if text.lstrip()[:1] not in ("{", "["):
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None  # not JSON after all: the endpoint reports it in its own words


async def _body_locations(request: Request) -> list[Loc]:
    route = request.scope.get("route")
    if not isinstance(route, APIRoute) or route.body_field is None:
        return []  # the route reads no body: nothing of it reaches the database
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        found: list[Loc] = []
        for name, field in (await request.form()).multi_items():  # cached: FastAPI parsed it already
            if isinstance(field, UploadFile):
                continue  # file bytes are decoded as images, never stored as text
            found += unstorable_locations(field, ("body", name))
            found += unstorable_locations(_embedded_json(field), ("body", name))
        return found
    try:
        body = await request.json()  # cached: FastAPI parsed it already for a JSON body
    except ValueError:
        return []  # not JSON: FastAPI has answered (or will answer) with its own 422
    return list(unstorable_locations(body, ("body",)))


def _problems(locations: Sequence[Loc]) -> list[dict[str, Any]]:
    return [
        {
            "loc": loc,
            "msg": "Text must not contain NUL characters or unpaired surrogates (it cannot be stored).",
            "type": "unstorable_text",
        }
        for loc in locations
    ]


async def reject_unstorable_text(request: Request) -> None:
    """App-wide dependency: a 422 validation_error naming each field that holds unstorable text."""
    found = [loc for name, v in request.path_params.items() for loc in unstorable_locations(v, ("path", name))]
    found += [loc for name, v in request.query_params.multi_items() for loc in unstorable_locations(v, ("query", name))]
    found += await _body_locations(request)
    if found:
        raise validation_problem(_problems(found))
