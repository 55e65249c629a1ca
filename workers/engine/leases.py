"""Stage-run leases: Postgres, not the broker, knows which work is in flight and whether anyone still does it.

A run gets `lease_until` when it is created (about to be sent) and when it is claimed; the running task renews
it every third of the lease from a heartbeat thread. The stalled sweep (`lapsed_runs`) re-sends every pending or
running run of a live campaign whose lease lapsed, and moves the lease on so that one lapse sends once. A claim
skips a run that is running under a live lease: someone has it (see `held_elsewhere`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import or_, select, update

from shared.config import get_settings
from shared.db.models import TERMINAL_STATUSES, Campaign, StageRun, StageRunStatus
from shared.db.session import session_scope
from shared.stages import stage
from workers.engine.context import Task, now
from workers.engine.records import RunRow, lease_from_now

log = logging.getLogger("onbrand.stages")

SWEEP_BATCH = 500


def worker_id() -> str:
    """This process as a claimer ("host:pid"); read at call time: every forked pool process has its own pid."""
    return f"{socket.gethostname()}:{os.getpid()}"


def held_elsewhere(run: StageRun | RunRow) -> bool:
    """A running run under a live lease is someone else's, unless its claimer was a process on this host that
    is gone (a killed pool process whose message came straight back): then it is taken over at once instead of
    after the lease."""
    if run.status != StageRunStatus.RUNNING or run.lease_until is None or run.lease_until <= now():
        return False
    return not _claimer_gone(run.claimed_by)


def _claimer_gone(claimed_by: str | None) -> bool:
    host, _, pid = (claimed_by or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return False  # another host's process (or this one): only its lease can tell
    return not _process_alive(int(pid))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    try:  # a killed child its parent has not reaped yet is a zombie: gone for our purpose
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return True  # no /proc (not Linux): kill(0) said it exists


@contextmanager
def heartbeat(campaign_id: uuid.UUID, stage_name: str, rnd: int, item: int) -> Iterator[None]:
    """Renew the run's lease every third of it while the block runs (a model may compute for minutes)."""
    stop = threading.Event()
    interval = get_settings().stage_lease_seconds / 3
    me = worker_id()

    def beat() -> None:
        while not stop.wait(interval):
            try:
                renew(campaign_id, stage_name, rnd, item, me)
            except Exception as exc:  # a database outage: keep computing, the finish will retry
                log.warning("heartbeat of %s/%s:%s:%s failed: %s", campaign_id, stage_name, rnd, item, exc)

    thread = threading.Thread(target=beat, name=f"onbrand-heartbeat-{stage_name}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


def renew(campaign_id: uuid.UUID, stage_name: str, rnd: int, item: int, claimer: str) -> bool:
    """Move the lease on while `claimer` still holds the run; False when the sweep gave it to another."""
    with session_scope() as session:
        result = session.execute(
            update(StageRun)
            .where(
                StageRun.campaign_id == campaign_id,
                StageRun.stage == stage_name,
                StageRun.round == rnd,
                StageRun.item == item,
                StageRun.status == StageRunStatus.RUNNING,
                StageRun.claimed_by == claimer,
            )
            .values(lease_until=lease_from_now())
        )
        return bool(getattr(result, "rowcount", 0))


def lapsed_runs() -> list[Task]:
    """Sent runs of live campaigns, pending or running, whose lease lapsed (or that never had one): their tasks, with
    the lease moved on (a running one goes back to pending, so the re-sent task may claim it). A GPU run keeps its
    dispatcher slot: it is re-sent, not queued again. Rows another sweep holds are skipped, not waited for."""
    at = now()
    with session_scope() as session:
        runs = session.scalars(
            select(StageRun)
            .join(Campaign, Campaign.id == StageRun.campaign_id)
            .where(
                StageRun.status.in_([StageRunStatus.PENDING, StageRunStatus.RUNNING]),
                StageRun.dispatched_at.is_not(None),  # a GPU run waiting for a slot is the dispatcher's
                or_(StageRun.lease_until.is_(None), StageRun.lease_until < at),
                Campaign.status.not_in(TERMINAL_STATUSES),
            )
            .order_by(StageRun.lease_until.nulls_first())
            .limit(SWEEP_BATCH)
            .with_for_update(of=StageRun, skip_locked=True)
        ).all()
        for run in runs:
            if run.status == StageRunStatus.RUNNING:
                log.warning("stage run %s/%s:%s:%s lost its lease (held by %s): re-sent", *_key(run), run.claimed_by)
                run.status, run.claimed_by = StageRunStatus.PENDING, None
            run.lease_until = lease_from_now()
        return [(stage(run.stage).task, str(run.campaign_id), run.round, run.item) for run in runs]


def _key(run: StageRun) -> tuple[object, ...]:
    return run.campaign_id, run.stage, run.round, run.item
