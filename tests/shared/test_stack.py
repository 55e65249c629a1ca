"""The embedded stack starts real Postgres+pgvector and Redis servers on loopback, is
idempotent, restarts only what died, and `down` stops exactly what `up` started."""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from shared.cli import stack
from shared.config import Settings


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait_closed(port: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while _accepts(port):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    # Explicit URLs from the caller's environment would make `up` treat servers as external.
    monkeypatch.delenv("ONBRAND_DATABASE_URL", raising=False)
    monkeypatch.delenv("ONBRAND_REDIS_URL", raising=False)
    s = Settings(home=tmp_path / "home", _env_file=None)
    yield s
    stack.down(s)  # never leave servers behind, whatever the test did


def _check_servers(info: dict[str, Any]) -> None:
    with psycopg.connect(info["database_url"], connect_timeout=5) as conn:
        row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    assert row is not None and row[0]
    assert redis.Redis.from_url(info["redis_url"], socket_timeout=5).ping()


@pytest.mark.slow
def test_up_is_real_idempotent_and_down_stops_it(settings: Settings) -> None:
    with ThreadPoolExecutor(2) as pool:  # concurrent ups must serialize on the lock, not race
        first, second = pool.map(lambda _: stack.up(settings), range(2))
    assert first == second
    _check_servers(first)
    assert settings.db_url == first["database_url"] and settings.broker_url == first["redis_url"]

    again = stack.up(settings)
    for name in ("postgres", "redis"):
        assert (again[name]["port"], again[name]["pid"]) == (first[name]["port"], first[name]["pid"])
    st = stack.status(settings)
    assert st["postgres"]["running"] and st["redis"]["running"]

    pg_port, redis_port = first["postgres"]["port"], first["redis"]["port"]
    stack.down(settings)
    assert _wait_closed(pg_port) and _wait_closed(redis_port)
    assert not settings.stack_file.exists()
    assert stack.down(settings)  # harmless, still says something
    assert stack.status(settings)["recorded"] is False


@pytest.mark.slow
def test_up_restarts_only_the_dead_server(settings: Settings) -> None:
    first = stack.up(settings)
    os.kill(first["redis"]["pid"], signal.SIGKILL)
    assert _wait_closed(first["redis"]["port"])
    assert stack.status(settings)["redis"]["running"] is False

    second = stack.up(settings)
    assert second["postgres"]["pid"] == first["postgres"]["pid"]
    assert second["redis"]["pid"] != first["redis"]["pid"]
    _check_servers(second)


def test_explicit_urls_are_external(tmp_path: Path) -> None:
    s = Settings(
        home=tmp_path, database_url="postgresql://u@db.invalid/x", redis_url="redis://cache.invalid/0", _env_file=None
    )
    info = stack.up(s)
    assert info["postgres"] == {"external": True} and info["redis"] == {"external": True}
    assert "database_url" not in info and "redis_url" not in info
    assert not (tmp_path / "pg").exists() and not (tmp_path / "redis").exists()
    assert s.db_url == "postgresql://u@db.invalid/x"  # the explicit URL still wins
    assert all("external" in line for line in stack.down(s))


def test_explicit_database_url_starts_only_redis(tmp_path: Path) -> None:
    s = Settings(home=tmp_path, database_url="postgresql://u@db.invalid/x", _env_file=None)
    try:
        info = stack.up(s)
        assert info["postgres"] == {"external": True}
        assert not (tmp_path / "pg").exists()
        assert redis.Redis.from_url(info["redis_url"], socket_timeout=5).ping()
    finally:
        stack.down(s)
    assert _wait_closed(info["redis"]["port"])
