"""The real thing for tests: databases on the session's embedded Postgres, and a running system
(gateway + Celery workers as separate OS processes talking over TCP). The fixtures that hold them
are in tests/conftest.py."""

from __future__ import annotations

import json
import os
import pwd
import shlex
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest

from shared.cli import stack
from shared.cli.procs import Processes, base_env, free_port, run_cli
from shared.config import Settings, get_settings


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
    # In-process tests drive stages by hand and expect every item of a fan-out sent at once: a GPU pool as wide
    # as they need (the dispatcher's fairness has its own tests, and running systems use the registered workers).
    monkeypatch.setenv("ONBRAND_GPU_DISPATCH_SLOTS", "64")
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
        # The limiter runs (headers, buckets) but does not throttle tests that burst one key (the search
        # evaluation, batch uploads); tests/gateway/test_limits.py pins the production behaviour.
        "ONBRAND_RATE_LIMIT_PER_SECOND": "1000",
        "ONBRAND_RATE_LIMIT_BURST": "2000",
        "ONBRAND_WRITE_RATE_LIMIT_PER_SECOND": "1000",
        "ONBRAND_WRITE_RATE_LIMIT_BURST": "2000",
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


# ---------------------------------------------------------------- crashing the embedded servers (the chaos benchmark)
# A SIGKILLed server comes back on its own port and data dir, as a restarted pod or systemd unit does: clients
# keep their URLs. stack.up() would pick another port when TIME_WAIT sockets still hold the old one.


def kill_postgres(settings: Settings, timeout: float = 30.0) -> int:
    """SIGKILL the postmaster (no checkpoint, no shutdown), then wait for its orphaned backends to notice and
    exit: a new postmaster refuses a data dir whose shared memory is still attached."""
    data = Path(stack.status(settings)["postgres"]["data_dir"])
    pid = int((data / "postmaster.pid").read_text().split()[0])
    children = psutil.Process(pid).children(recursive=True)
    os.kill(pid, signal.SIGKILL)
    _, alive = psutil.wait_procs(children, timeout=timeout)
    for child in alive:  # stuck backends of the postmaster we killed, nothing else
        child.kill()
    return pid


def restart_postgres(settings: Settings) -> None:
    """pg_ctl start on the recorded port and data dir (crash recovery replays the WAL), as the Postgres user."""
    info = stack.status(settings)["postgres"]
    data = Path(info["data_dir"])
    socket_dir = (data / "postmaster.pid").read_text().splitlines()[4]  # the stale lock file names it
    opts = f"-c listen_addresses={stack.HOST} -p {info['port']} -k {shlex.quote(socket_dir)}"
    log = Path(settings.home) / "logs" / "postgres.log"
    pg_ctl = str(Path(info["bin_dir"]) / "pg_ctl")
    cmd = [pg_ctl, "-w", "-t", "60", "-D", str(data), "-l", str(log), "-o", opts, "start"]
    env = {"PATH": f"{info['bin_dir']}:/usr/bin:/bin", "LC_ALL": "C", "LANG": "C"}
    done = subprocess.run(
        cmd, cwd=data, env=env, capture_output=True, text=True, timeout=90, start_new_session=True, **_as_pg_user()
    )
    if done.returncode != 0:
        raise RuntimeError(f"pg_ctl start failed: {done.stdout}{done.stderr}\n{log.read_text()[-2000:]}")
    stack.up(settings)  # adopts the running postmaster: stack.json gets its new pid


def kill_redis(settings: Settings) -> int:
    """SIGKILL redis-server: the AOF keeps what was fsynced (everysec)."""
    server = psutil.Process(int(stack.status(settings)["redis"]["pid"]))
    server.kill()
    server.wait(10)
    return server.pid


def restart_redis(settings: Settings) -> None:
    """redis-server on the recorded port and dir with the stack's flags (AOF on): it replays the AOF."""
    info = stack.status(settings)["redis"]
    rdir, port = Path(info["dir"]), int(info["port"])
    (rdir / "redis.pid").unlink(missing_ok=True)
    log = Path(settings.home) / "logs" / "redis.log"
    args = ["--port", str(port), "--bind", stack.HOST, "--dir", str(rdir), "--daemonize", "yes"]
    args += [
        "--pidfile",
        str(rdir / "redis.pid"),
        "--logfile",
        str(log),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
    ]
    args += ["--maxmemory-policy", "noeviction", "--save", ""]
    subprocess.run([str(stack.redis_server_bin()), *args], check=True, timeout=30, start_new_session=True)
    deadline = time.monotonic() + 60
    while not _redis_answers(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"redis did not come back on {port}:\n{log.read_text()[-2000:]}")
        time.sleep(0.1)
    stack.up(settings)  # adopts it: stack.json gets its new pid, so stack.down stops it


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection((stack.HOST, port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _as_pg_user() -> dict[str, Any]:
    """initdb/postgres refuse root: as root, run pg_ctl as the stack's Postgres account."""
    if os.geteuid() != 0:
        return {}
    account = pwd.getpwnam(stack.PG_USER)
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
