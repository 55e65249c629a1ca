"""Reads on the event loop: async psycopg with prepared statements, for the gateway's most frequent requests.

A status poll or a brand read through the ORM session costs several times the Python of the query itself (statement
construction, unit of work, entity loading, a thread-pool hop each way). The hottest reads run here instead: plain
SQL, tenant-scoped like every query, on a small async pool per event loop, each statement prepared by Postgres
after its first few executions on a connection. The queries one response needs go out in one pipeline: one round
trip. The one write here is the campaign creation (write(): a single CALL that commits, grouped with the loop's
concurrent creations, shared.db.grouped); other writes stay on the ORM session, in the request's transaction
(services/gateway/unit_of_work.py).

A connection broken by a Postgres restart fails its statement with OperationalError, as the sync pool's do; the
pool's idle connections are then checked and the read is retried once. What still fails reaches the gateway's 503
handler, as does psycopg_pool.PoolTimeout when every connection stays busy for db_async_wait_s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, LiteralString

import psycopg
from psycopg.rows import RowFactory, tuple_row
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from sqlalchemy.engine import make_url

from shared.config import Settings
from shared.db import grouped, json_columns

_pools: dict[tuple[asyncio.AbstractEventLoop, str], AsyncConnectionPool] = {}
_writers: dict[tuple[asyncio.AbstractEventLoop, str], grouped.Writer] = {}


@dataclass(frozen=True)
class Read:
    """One query: its SQL (static text, %(name)s placeholders), parameters and row factory."""

    sql: LiteralString
    params: dict[str, Any]
    row: RowFactory[Any] = field(default=tuple_row)


def libpq_url(url: str) -> str:
    """The SQLAlchemy URL (postgresql+psycopg://, postgres://) as libpq takes it."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _pool(settings: Settings) -> AsyncConnectionPool:
    # One pool per event loop: a connection belongs to the loop that opened it (uvicorn runs one loop per worker
    # process; a test runs several apps, each on its own loop).
    loop = asyncio.get_running_loop()
    pool = _pools.get((loop, settings.db_url))
    if pool is None:
        _forget_closed_loops()
        pool = AsyncConnectionPool(
            libpq_url(settings.db_url),
            min_size=1,
            max_size=settings.db_async_pool_size,
            kwargs={"autocommit": True, "connect_timeout": 5},
            open=False,
            timeout=settings.db_async_wait_s,
            configure=_configure,
        )
        _pools[(loop, settings.db_url)] = pool
        await pool.open()
    return pool


async def _configure(conn: psycopg.AsyncConnection[Any]) -> None:
    set_json_loads(json_columns.loads, conn)  # JSON and JSONB values decoded as the sync engine decodes them


def _forget_closed_loops() -> None:
    """Drop the pools of loops that closed without close_all (an app never shut down): their connections close
    as they are collected."""
    for key in [k for k in _pools if k[0].is_closed()]:
        del _pools[key]
    for key in [k for k in _writers if k[0].is_closed()]:
        del _writers[key]


async def fetch_all(settings: Settings, reads: Sequence[Read]) -> list[list[Any]]:
    """Each read's rows, the reads sent together in one pipeline (one round trip), each in autocommit."""
    try:
        return await _fetch(settings, reads)
    except PoolTimeout:
        raise  # every connection busy: waiting again would only double the wait before the 503
    except psycopg.OperationalError:
        # A connection from before a Postgres restart, and likely its idle siblings too: check those (a ping each,
        # replacing the dead), then retry once. Still failing: Postgres is down, a 503.
        await (await _pool(settings)).check()
        return await _fetch(settings, reads)


async def fetch(settings: Settings, read: Read) -> list[Any]:
    return (await fetch_all(settings, [read]))[0]


async def _fetch(settings: Settings, reads: Sequence[Read]) -> list[list[Any]]:
    pool = await _pool(settings)
    # getconn/putconn, not pool.connection(): its `async with conn` ends in a commit() that takes the connection's
    # lock and a wait even in autocommit, where there is nothing to commit. putconn checks the connection's state.
    conn = await pool.getconn()
    try:
        if len(reads) == 1:
            cursor = conn.cursor(row_factory=reads[0].row)
            await cursor.execute(reads[0].sql, reads[0].params)
            return [await cursor.fetchall()]
        async with conn.pipeline():
            cursors = [conn.cursor(row_factory=read.row) for read in reads]
            for cursor, read in zip(cursors, reads, strict=True):
                await cursor.execute(read.sql, read.params)
        return [await cursor.fetchall() for cursor in cursors]
    finally:
        await pool.putconn(conn)


@dataclass(frozen=True)
class Call:
    """A statement that is its own transaction (a procedure that commits, like a campaign creation, migration 0019),
    with one jsonb parameter, $1, given as JSON text."""

    sql: LiteralString
    document: bytes


async def write(settings: Settings, call: Call) -> list[tuple[Any, ...]]:
    """Run `call` in its own transaction, its rows; grouped with this event loop's concurrent writes into one round
    trip (shared.db.grouped). Its own error is raised as psycopg raises it (the class of its SQLSTATE, with diag);
    a broken connection as OperationalError to each statement of the group, and the pool's idle connections are
    checked then, for the next request.

    Not retried: a connection lost after the statement went out leaves its outcome unknown (the client retries, with
    an Idempotency-Key for a creation)."""
    key = (asyncio.get_running_loop(), settings.db_url)
    writer = _writers.get(key)
    if writer is None:
        writer = _writers[key] = grouped.Writer(partial(_pool, settings))
    return await writer.write(call.sql, call.document)


async def close_all() -> None:
    """Close the pools this event loop opened (the gateway's shutdown)."""
    loop = asyncio.get_running_loop()
    for key in [k for k in _writers if k[0] is loop]:
        del _writers[key]
    for key in [k for k in _pools if k[0] is loop]:
        await _pools.pop(key).close()
