"""The real thing for tests: databases on the session's embedded Postgres, and a running system
(gateway + Celery workers as separate OS processes talking over TCP). The fixtures that hold them
are in tests/conftest.py."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from shared.cli.procs import Processes, base_env, free_port, run_cli
from shared.config import get_settings


def create_database(stack_urls: dict[str, str], name: str) -> str:
    admin = stack_urls["database_url"].rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return stack_urls["database_url"].rsplit("/", 1)[0] + f"/{name}"


def clear_caches() -> None:
    """Forget the cached settings, engine, session factory, producer and storage: the next call
    reads the (monkeypatched) ONBRAND_* environment again."""
    from shared.db import session
    from shared.queue import producer
    from shared.storage import get_storage

    get_settings.cache_clear()
    session.get_engine.cache_clear()
    session._factory.cache_clear()
    producer.cache_clear()
    get_storage.cache_clear()


@contextmanager
def migrated_db(stack_urls: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A new, migrated database; in-process code (get_settings/get_engine) points at it."""
    url = create_database(stack_urls, f"t_{uuid.uuid4().hex[:12]}")
    monkeypatch.setenv("ONBRAND_DATABASE_URL", url)
    monkeypatch.setenv("ONBRAND_REDIS_URL", stack_urls["redis_url"])
    clear_caches()
    run_cli({**os.environ}, "migrate")
    try:
        yield url
    finally:
        clear_caches()


@dataclass
class System:
    url: str
    env: dict[str, str]
    procs: Processes
    home: Path

    def tenant(self, name: str = "acme") -> dict[str, str]:
        return json.loads(run_cli(self.env, "tenants", "create", name))


@contextmanager
def running_system(stack_urls: dict[str, str], home: Path, database: str, **env: str) -> Iterator[System]:
    """Gateway + a cpu worker (with the sweeps) + a gpu worker against a dedicated database."""
    port = free_port()
    settings = {
        "ONBRAND_DATABASE_URL": create_database(stack_urls, database),
        "ONBRAND_REDIS_URL": stack_urls["redis_url"],
        "ONBRAND_PUBLIC_URL": f"http://127.0.0.1:{port}",
        "ONBRAND_EGRESS_ALLOWLIST": "127.0.0.0/8",
        "ONBRAND_BROKER_VISIBILITY_TIMEOUT": "20",
        "ONBRAND_BROKER_RESTORE_THROTTLE": "1",
        # 2 shared cores under a parallel test load: a query embedding can take seconds
        "ONBRAND_SEARCH_EMBED_TIMEOUT_SECONDS": "15",
    }
    base = base_env(home, **{**settings, **env})  # env wins: e.g. another Redis db for a second system
    run_cli(base, "migrate")
    procs = Processes(env=base, logs=home / "logs")
    try:
        url = procs.gateway(port)
        procs.worker("cpu", beat=True)
        procs.worker("gpu")
        yield System(url=url, env=base, procs=procs, home=home)
    finally:
        procs.stop_all()
