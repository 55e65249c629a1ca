"""Concurrent writes grouped into one round trip, as Postgres groups concurrent commits.

A burst of campaign creations reaches a gateway process together (32 clients at once in the gateway benchmark). One
connection and one round trip each cost the event loop a pool checkout, often a wait for a free connection, and the
driver's send, wait and fetch per statement: measured in process, 1.20 ms of CPU per creation, 0.80-0.91 ms with
the statements grouped (README, "Gateway against its framework"). Here the writes that arrive while a group is in
flight go out together in the next, on one connection, in pipeline mode: one round trip for the group.

Each statement is followed by a Sync, so each is its own implicit transaction, as if sent alone: a procedure may
COMMIT in it (CALL onbrand_create_campaign, migration 0019), and one statement's error (a quota refused at commit, a
concurrent request's Idempotency-Key) aborts only that statement. A lone writer waits for no one. The group's
statements run one after another in one backend; the next group starts when this one is back, or once this one has
been out long enough to count as held up (a tenant's lock held elsewhere).

libpq's pipeline mode directly (psycopg.pq), not psycopg's Pipeline: that one sends no Sync between statements, so
they would share a transaction, in which a procedure may not commit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg import abc, pq
from psycopg.adapt import Transformer
from psycopg_pool import AsyncConnectionPool

Rows = list[tuple[Any, ...]]
Outcome = Rows | Exception


# A group is back in milliseconds (tens on a saturated event loop). One out longer than this is held up (a tenant's lock
# held elsewhere): the writes behind it go out in another group rather than wait for it. More groups at once in normal
# running would split them smaller and set backends contending for the same tenant's lock: two measured slower.
HELD_UP_S = 0.25
MOST_GROUPS = 4  # out at once, held up or not: the async pool's connections serve the reads too


class Writer:
    """One event loop's writes to one database: what arrives while a group is out goes in the next."""

    def __init__(self, pool: Callable[[], Awaitable[AsyncConnectionPool]]) -> None:
        self._pool = pool
        self._waiting: list[tuple[bytes, bytes, asyncio.Future[Rows]]] = []
        self._drainers: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak references to tasks
        self._held_up = 0  # drainers whose group has been out longer than HELD_UP_S

    async def write(self, sql: str, document: bytes) -> Rows:
        """`sql` with one parameter ($1, text format: `document`), run in its own transaction: its rows, or its error
        as psycopg raises it (the class of its SQLSTATE, with diag)."""
        done: asyncio.Future[Rows] = asyncio.get_running_loop().create_future()
        self._waiting.append((sql.encode(), document, done))
        self._start_if_needed()
        return await done

    def _start_if_needed(self) -> None:
        """A drainer for the waiting writes when none is free to take them next (none at all, or all held up)."""
        if self._waiting and len(self._drainers) == self._held_up and len(self._drainers) < MOST_GROUPS:
            self._drainers.add(asyncio.create_task(self._drain()))

    async def _drain(self) -> None:
        group: list[tuple[bytes, bytes, asyncio.Future[Rows]]] = []
        try:
            while self._waiting:
                group, self._waiting = self._waiting, []
                outcomes = await self._out([(sql, document) for sql, document, _ in group])
                for (_, _, done), outcome in zip(group, outcomes, strict=True):
                    if done.done():
                        continue  # its caller was cancelled: the statement ran all the same
                    if isinstance(outcome, Exception):
                        done.set_exception(outcome)
                    else:
                        done.set_result(outcome)
        finally:
            # Out of the count before any other task runs: a write that finds the waiting list empty-handed starts
            # a drainer of its own, rather than counting on one that has already looked for the last time.
            self._drainers.discard(asyncio.current_task())  # type: ignore[arg-type,unused-ignore]
            for _, _, done in group:  # cancelled (the loop is closing): no caller waits forever
                done.cancel()

    async def _out(self, statements: list[tuple[bytes, bytes]]) -> list[Outcome]:
        """_run, counted as held up once it has been out longer than HELD_UP_S."""
        held_up = False

        def hold() -> None:
            nonlocal held_up
            held_up = True
            self._held_up += 1
            self._start_if_needed()

        timer = asyncio.get_running_loop().call_later(HELD_UP_S, hold)
        try:
            return await self._run(statements)
        finally:
            timer.cancel()
            if held_up:
                self._held_up -= 1

    async def _run(self, statements: list[tuple[bytes, bytes]]) -> list[Outcome]:
        """Each statement's rows or error; an error of the connection (or no connection) for each of them."""
        pool = await self._pool()
        try:
            conn = await pool.getconn()
        except Exception as exc:  # PoolTimeout, every connection busy: a 503 for each
            return [exc] * len(statements)
        try:
            return await _pipelined(conn, statements)
        except psycopg.OperationalError as exc:  # the connection broke: its idle siblings may have too
            await pool.check()
            return [exc] * len(statements)
        except BaseException as exc:  # cancelled too (the loop closing): mid-pipeline
            await conn.close()  # its protocol state is unknown: not back into the pool
            if not isinstance(exc, Exception):
                raise
            return [exc] * len(statements)
        finally:
            await pool.putconn(conn)


async def _pipelined(conn: psycopg.AsyncConnection[Any], statements: list[tuple[bytes, bytes]]) -> list[Outcome]:
    pgconn = conn.pgconn
    pgconn.enter_pipeline_mode()
    for sql, document in statements:
        pgconn.send_query_params(sql, [document])
        pgconn.pipeline_sync()  # its own implicit transaction
    results = await _results(pgconn, len(statements))
    pgconn.exit_pipeline_mode()
    transformer = Transformer(conn)
    return [_outcome(transformer, conn.info.encoding, statement) for statement in results]


async def _results(pgconn: pq.abc.PGconn, count: int) -> list[list[pq.abc.PGresult]]:
    """Send what is queued and read the results of `count` statements, each ended by its Sync."""
    loop = asyncio.get_running_loop()
    while pgconn.flush():  # more to send: the socket is full (a large group)
        await _ready(loop, pgconn.socket, write=True)  # and read meanwhile: a server blocked on sending reads no more
        pgconn.consume_input()
    results: list[list[pq.abc.PGresult]] = []
    statement: list[pq.abc.PGresult] = []
    while len(results) < count:
        if pgconn.is_busy():
            await _ready(loop, pgconn.socket, write=False)
            pgconn.consume_input()
            continue
        result = pgconn.get_result()
        if result is None:  # the end of one statement's results; its Sync comes next
            continue
        if result.status == pq.ExecStatus.PIPELINE_SYNC:
            results.append(statement)
            statement = []
        else:
            statement.append(result)
    return results


async def _ready(loop: asyncio.AbstractEventLoop, fd: int, *, write: bool) -> None:
    """Until `fd` is readable (or writable, with `write`)."""
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(fd, wake)
    if write:
        loop.add_writer(fd, wake)
    try:
        await ready
    finally:
        loop.remove_reader(fd)
        if write:
            loop.remove_writer(fd)


def _outcome(transformer: abc.Transformer, encoding: str, results: list[pq.abc.PGresult]) -> Outcome:
    for result in results:
        if result.status == pq.ExecStatus.FATAL_ERROR:
            return psycopg.errors.error_from_result(result, encoding=encoding)
        if result.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            return psycopg.InternalError(f"unexpected result status {pq.ExecStatus(result.status).name}")
    if not results or results[-1].status != pq.ExecStatus.TUPLES_OK:
        return []
    transformer.set_pgresult(results[-1])
    rows: Rows = transformer.load_rows(0, results[-1].ntuples, tuple)
    return rows
