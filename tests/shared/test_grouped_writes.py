"""shared.db.grouped through shared.db.aio.write: concurrent writes share round trips, each statement stays its own
transaction (a procedure may commit in it, an error aborts only it), a broken connection fails only its group."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Iterator
from datetime import datetime
from typing import Any

import psycopg
import pytest

from shared.config import Settings
from shared.db import aio, grouped

# A procedure that commits inside, as onbrand_create_campaign does, and answers after its commit.
_SCHEMA = """
CREATE TABLE grouped_t (k text PRIMARY KEY, n int NOT NULL CHECK (n >= 0));
CREATE PROCEDURE grouped_p(doc jsonb, INOUT committed_at timestamptz DEFAULT NULL) LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO grouped_t VALUES (doc->>'k', (doc->>'n')::int);
    COMMIT;
    committed_at := clock_timestamp();
END $$;
"""
_CALL = "CALL grouped_p($1::jsonb)"


@pytest.fixture
def settings(fresh_db: str) -> Iterator[Settings]:
    with psycopg.connect(aio.libpq_url(fresh_db), autocommit=True) as conn:
        conn.execute(_SCHEMA)
    yield Settings(database_url=fresh_db)


def _call(k: str, n: int = 1) -> aio.Call:
    return aio.Call(_CALL, json.dumps({"k": k, "n": n}).encode())


def _keys(settings: Settings) -> set[str]:
    with psycopg.connect(aio.libpq_url(settings.db_url)) as conn:
        return {k for (k,) in conn.execute("SELECT k FROM grouped_t")}


@pytest.fixture
def groups(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of each group sent."""
    sizes: list[int] = []
    pipelined = grouped._pipelined

    async def spy(conn: Any, statements: list[tuple[bytes, bytes]]) -> list[grouped.Outcome]:
        sizes.append(len(statements))
        return await pipelined(conn, statements)

    monkeypatch.setattr(grouped, "_pipelined", spy)
    return sizes


async def _closing(work: Awaitable[list[Any]]) -> list[Any]:
    try:
        return await work
    finally:
        await aio.close_all()


async def _together(settings: Settings, *calls: aio.Call) -> list[Any]:
    """Each call's rows or error, the calls made together."""
    return list(await asyncio.gather(*(aio.write(settings, c) for c in calls), return_exceptions=True))


def test_concurrent_writes_share_round_trips_and_each_gets_its_rows(settings: Settings, groups: list[int]) -> None:
    keys = [f"k{i}" for i in range(30)]

    async def scenario() -> list[Any]:
        await aio.write(settings, _call("warm"))  # the pool open, its connection idle
        lone = asyncio.ensure_future(aio.write(settings, _call(keys[0])))
        while len(groups) < 2:  # until its group is in flight: it waited for no one
            await asyncio.sleep(0)
        burst = [aio.write(settings, _call(k)) for k in keys[1:]]
        return list(await asyncio.gather(lone, *burst))

    outcomes = asyncio.run(_closing(scenario()))
    assert all(isinstance(rows, list) and len(rows) == 1 for rows in outcomes), outcomes
    assert all(isinstance(rows[0][0], datetime) for rows in outcomes)
    assert _keys(settings) == {"warm", *keys}
    assert groups == [1, 1, 29]  # the burst arrived while the lone write was in flight: one round trip for all


def test_a_failing_statement_aborts_only_itself(settings: Settings, groups: list[int]) -> None:
    asyncio.run(_closing(_together(settings, _call("taken"))))
    calls = [_call("a"), _call("taken"), _call("b"), _call("negative", -1), _call("c")]
    outcomes = asyncio.run(_closing(_together(settings, _call("first"), *calls)))
    assert groups[-1] == 1 + len(calls)  # one group
    duplicate, refused = outcomes[2], outcomes[4]
    assert isinstance(duplicate, psycopg.errors.UniqueViolation)
    assert duplicate.diag.constraint_name == "grouped_t_pkey"  # what the creation's replay path reads
    assert isinstance(refused, psycopg.errors.CheckViolation)
    assert all(isinstance(outcomes[i], list) for i in (0, 1, 3, 5)), outcomes
    assert _keys(settings) == {"taken", "first", "a", "b", "c"}


def test_a_broken_connection_fails_its_group_and_the_next_write_gets_a_fresh_one(settings: Settings) -> None:
    async def scenario() -> list[Any]:
        await aio.write(settings, _call("warm"))  # the pool's connection, open and idle
        with psycopg.connect(aio.libpq_url(settings.db_url), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        broken = await asyncio.gather(
            *(aio.write(settings, _call(f"lost{i}")) for i in range(3)), return_exceptions=True
        )
        after = await asyncio.gather(aio.write(settings, _call("after")), return_exceptions=True)
        return list(broken), list(after)

    async def closing() -> tuple[list[Any], list[Any]]:
        try:
            return await scenario()
        finally:
            await aio.close_all()

    broken, after = asyncio.run(closing())
    assert broken and all(isinstance(o, psycopg.OperationalError) for o in broken), broken
    assert isinstance(after[0], list), after
    assert "after" in _keys(settings) and not any(k.startswith("lost") for k in _keys(settings))


def test_a_cancelled_caller_leaves_the_others_their_answers(settings: Settings) -> None:
    async def scenario() -> list[Any]:
        first = asyncio.ensure_future(aio.write(settings, _call("lone")))
        await asyncio.sleep(0)  # its group is in flight; these wait for the next
        waiting = [asyncio.ensure_future(aio.write(settings, _call(k))) for k in ("x", "y", "z")]
        await asyncio.sleep(0)
        waiting[1].cancel()
        return list(await asyncio.gather(first, *waiting, return_exceptions=True))

    outcomes = asyncio.run(_closing(scenario()))
    assert isinstance(outcomes[2], asyncio.CancelledError)
    assert all(isinstance(outcomes[i], list) for i in (0, 1, 3)), outcomes
    assert {"lone", "x", "z"} <= _keys(settings)


def test_a_lone_write_is_sent_at_once(settings: Settings, groups: list[int]) -> None:
    for k in (str(uuid.uuid4()), str(uuid.uuid4())):
        asyncio.run(_closing(_together(settings, _call(k))))
    assert groups == [1, 1]


def test_a_group_held_up_by_a_lock_does_not_hold_up_the_next(settings: Settings) -> None:
    """A creation waiting on a lock (here: the same key, inserted and not yet committed by another transaction) holds
    up only its own group: a write arriving meanwhile goes out in another once that one counts as held up."""

    async def scenario() -> list[Any]:
        await aio.write(settings, _call("warm"))
        with psycopg.connect(aio.libpq_url(settings.db_url)) as holder:
            holder.execute("INSERT INTO grouped_t VALUES ('held', 1)")  # uncommitted: the CALL below waits on it
            held = asyncio.ensure_future(aio.write(settings, _call("held")))
            await _until_waiting_on_a_lock(settings)
            free = await asyncio.wait_for(aio.write(settings, _call("free")), timeout=10)
            assert not held.done()
            holder.rollback()
        return [free, await asyncio.wait_for(held, timeout=10)]

    free, held = asyncio.run(_closing(scenario()))
    assert isinstance(free, list) and isinstance(held, list)
    assert {"held", "free"} <= _keys(settings)


async def _until_waiting_on_a_lock(settings: Settings) -> None:
    probe = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
    with psycopg.connect(aio.libpq_url(settings.db_url), autocommit=True) as conn:
        for _ in range(500):
            if conn.execute(probe).fetchone() != (0,):
                return
            await asyncio.sleep(0.02)
    raise AssertionError("the write never waited on the lock")
