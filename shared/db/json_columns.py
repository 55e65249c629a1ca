"""JSON as the database's JSON and JSONB columns take and give it: orjson's C codec in place of the standard library's.

Used by the sync engine (shared.db.session: every ORM and Core statement), the gateway's async pool (shared.db.aio:
the status poll's JSON) and the campaign creation's jsonb document. The workers' claims and finishes write and read
JSON columns on every task (a candidate's qc, integrity, generation and placement; the campaign's state; outbox
payloads): the standard library's encoder was ~6 % of a task's profiled engine time, its decoder ~3 %. orjson
encodes ~10x and decodes ~4x faster (a 4 kB qc value: 54 -> 5 and 32 -> 8 us on these cores), straight to the bytes
psycopg sends.

Values the standard library encodes are encoded alike: dict keys that are not strings as text, int and str
subclasses (enums) by value, float subclasses (numpy's float64) as numbers. What it refused, this encodes: numpy's
other scalars and arrays as numbers, UUIDs and datetimes as text (RFC 3339). NaN and infinities become null (the
standard library writes NaN, which Postgres's JSON input rejects).
"""

from __future__ import annotations

from typing import Any

import orjson

_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def dumps(value: Any) -> bytes:
    return orjson.dumps(value, default=_as_number, option=_OPTIONS)


loads = orjson.loads  # a C function: psycopg keys its loader classes by it (no frame of ours per value)


def _as_number(value: Any) -> float:
    """What orjson leaves to `default` that the standard library encodes: a float subclass, as its value."""
    if isinstance(value, float):
        return float(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")
