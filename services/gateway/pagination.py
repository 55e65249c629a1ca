"""Keyset (cursor) pagination: stable under inserts, no OFFSET scans.

A cursor is the opaque, url-safe encoding of the sort-key values of the last item of a
page; the next page is every row whose sort-key tuple is greater than it. All keys sort
ascending (descending orders are expressed by negating the expression), so a single row
comparison `(k1, k2, ...) > (v1, v2, ...)` is enough.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import ColumnElement, Select, literal, tuple_
from sqlalchemy.orm import Session

from services.gateway.errors import validation_problem

T = TypeVar("T")
M = TypeVar("M")

LimitQuery = Annotated[int, Query(ge=1, le=100, description="Page size.")]
CursorQuery = Annotated[str | None, Query(max_length=512, description="`next_cursor` of the previous page.")]


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None


@dataclass(frozen=True)
class SortKey(Generic[M]):
    expr: ColumnElement[Any]
    dump: Callable[[M], Any]  # row -> JSON value stored in the cursor
    load: Callable[[Any], Any]  # cursor JSON value -> bind parameter


def created_keys(model: Any) -> list[SortKey[Any]]:
    """The default order: oldest first, id as the tie-breaker (created_at is per transaction)."""
    return [
        SortKey(model.created_at, lambda o: o.created_at.isoformat(), datetime.fromisoformat),
        SortKey(model.id, lambda o: str(o.id), uuid.UUID),
    ]


def encode_cursor(values: Sequence[Any]) -> str:
    raw = json.dumps(list(values), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, keys: Sequence[SortKey[Any]]) -> list[Any]:
    try:
        values = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(values, list) or len(values) != len(keys):
            raise ValueError("wrong arity")
        return [key.load(value) for key, value in zip(keys, values, strict=True)]
    except (ValueError, TypeError, binascii.Error):
        invalid = {"loc": ("query", "cursor"), "msg": "Invalid cursor", "type": "value_error"}
        raise validation_problem([invalid]) from None


def paginate(
    session: Session, stmt: Select[Any], keys: Sequence[SortKey[M]], limit: int, cursor: str | None
) -> tuple[list[M], str | None]:
    """Run `stmt` for one page; return its rows and the cursor of the next page (None at the end)."""
    exprs = [key.expr for key in keys]
    if cursor:
        values = decode_cursor(cursor, keys)
        bounds = [literal(value, expr.type) for value, expr in zip(values, exprs, strict=True)]
        stmt = stmt.where(tuple_(*exprs) > tuple_(*bounds))
    rows: list[M] = list(session.scalars(stmt.order_by(*exprs).limit(limit + 1)))
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor([key.dump(last) for key in keys])
