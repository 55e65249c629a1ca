"""What the engine's connections execute, recorded for tests that pin statements."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine.interfaces import CacheStats

from shared.db.session import get_engine


@contextmanager
def compiled_statements() -> Iterator[list[str]]:
    """The statements compiled while the block runs (a miss in the engine's compiled cache), by their first three
    words: what a new pool process would pay for on first use."""
    compiled: list[str] = []

    def record(conn: object, cursor: object, statement: str, parameters: object, context: Any, *_: object) -> None:
        if context.cache_hit is CacheStats.CACHE_MISS:
            compiled.append(" ".join(statement.split()[:3]).upper())

    event.listen(get_engine(), "before_cursor_execute", record)
    try:
        yield compiled
    finally:
        event.remove(get_engine(), "before_cursor_execute", record)
