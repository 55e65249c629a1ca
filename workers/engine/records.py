"""The rows the engine works on: the locked campaign, its stage runs, and the tasks its outbox rows need."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import Table, bindparam, cast, func, inspect, select, update
from sqlalchemy.dialects.postgresql import JSONB, insert
from sqlalchemy.orm import Session, defer
from sqlalchemy.orm.attributes import set_committed_value

from shared import limits, metrics
from shared.config import get_settings
from shared.db.models import Base, Campaign, StageRun, StageRunStatus
from shared.queue import GPU_STAGES
from workers.engine.context import Task, now

# The hot path's statements (every stage task runs them), built once with bind parameters: building a statement
# (coercions, bind parameters, its cache key) cost more CPU than executing it. Runs are read and written as Core
# rows on the session's connection, not as ORM objects: no identity map, no unit of work, no autoflush.
RUNS: Table = StageRun.__table__  # type: ignore[assignment]  # declared as FromClause; a Table
_LOCK = select(Campaign).where(Campaign.id == bindparam("id")).with_for_update()
# The finish's lock: campaign.state (every stage's output, the largest column) is loaded only if something reads
# it; a fan-out item that publishes nothing and is not the last never does.
_LOCK_LEAN = select(Campaign).options(defer(Campaign.state)).where(Campaign.id == bindparam("id")).with_for_update()
_CAMPAIGNS: Table = Campaign.__table__  # type: ignore[assignment]  # declared as FromClause; a Table
_PATCH_STATE = (
    update(_CAMPAIGNS)
    .where(_CAMPAIGNS.c.id == bindparam("b_id"))
    .values(state=func.coalesce(_CAMPAIGNS.c.state, cast({}, JSONB)).op("||")(bindparam("b_patch", type_=JSONB)))
)
_RUN = select(
    RUNS.c.id, RUNS.c.status, RUNS.c.attempts, RUNS.c.lease_until, RUNS.c.claimed_by, RUNS.c.dispatched_at
).where(
    RUNS.c.campaign_id == bindparam("campaign"),
    RUNS.c.stage == bindparam("stage"),
    RUNS.c.round == bindparam("round"),
    RUNS.c.item == bindparam("item"),
)
_COUNTS = (
    select(RUNS.c.stage, RUNS.c.round, RUNS.c.status, func.count())
    .where(RUNS.c.campaign_id == bindparam("campaign"))
    .group_by(RUNS.c.stage, RUNS.c.round, RUNS.c.status)
)
_CLAIM = (
    update(RUNS)
    .where(RUNS.c.id == bindparam("b_run"))
    .values(
        status=StageRunStatus.RUNNING,
        started_at=bindparam("b_at"),
        attempts=RUNS.c.attempts + 1,
        lease_until=bindparam("b_lease"),
        claimed_by=bindparam("b_claimer"),
        # a message that came without the dispatcher holds a slot too
        dispatched_at=func.coalesce(RUNS.c.dispatched_at, bindparam("b_at")),
    )
)
_SUCCEEDED = (
    update(RUNS)
    .where(
        RUNS.c.campaign_id == bindparam("b_campaign"),
        RUNS.c.stage == bindparam("b_stage"),
        RUNS.c.round == bindparam("b_round"),
        RUNS.c.item == bindparam("b_item"),
    )
    .values(
        status=StageRunStatus.SUCCEEDED,
        finished_at=bindparam("b_at"),
        output=bindparam("b_output"),
        error=None,
        lease_until=None,
    )
)
# New runs of a fan-out; those that exist (a redelivered predecessor fans out again) are left as they are.
_CREATE = insert(RUNS).on_conflict_do_nothing(index_elements=["campaign_id", "stage", "round", "item"])


class RunRow(NamedTuple):
    """A stage run as the claim reads it (what leases.held_elsewhere looks at)."""

    id: uuid.UUID
    status: StageRunStatus
    attempts: int
    lease_until: datetime | None
    claimed_by: str | None
    dispatched_at: datetime | None


def lock_campaign(session: Session, campaign_id: uuid.UUID) -> Campaign | None:
    return session.scalars(_LOCK, {"id": campaign_id}).first()


def lock_campaign_lean(session: Session, campaign_id: uuid.UUID) -> Campaign | None:
    """lock_campaign with campaign.state left unloaded until read (a query then)."""
    return session.scalars(_LOCK_LEAN, {"id": campaign_id}).first()


def patch_state(session: Session, campaign: Campaign, patch: dict[str, Any]) -> None:
    """Merge stage outputs into campaign.state (top-level keys replaced) in the database, sending only the patch:
    not the whole state read back and rewritten. A state already loaded in this session gets the same merge."""
    session.connection().execute(_PATCH_STATE, {"b_id": campaign.id, "b_patch": patch})
    if "state" not in inspect(campaign).unloaded:
        set_committed_value(campaign, "state", {**(campaign.state or {}), **patch})


def find_run(session: Session, campaign_id: uuid.UUID, stage: str, rnd: int, item: int) -> RunRow | None:
    _flush_runs(session)
    params = {"campaign": campaign_id, "stage": stage, "round": rnd, "item": item}
    row = session.connection().execute(_RUN, params).first()
    return None if row is None else RunRow(*row)


def claim_run(
    session: Session, campaign: Campaign, run: RunRow | None, key: tuple[str, int, int], claimer: str
) -> None:
    """Mark the run (found by find_run) running for `claimer` under a fresh lease; created so when it is missing
    (a message that came before its run, a test driving one stage). `key`: its (stage, round, item)."""
    at, lease = now(), lease_from_now()
    if run is not None:
        session.connection().execute(_CLAIM, {"b_run": run.id, "b_at": at, "b_lease": lease, "b_claimer": claimer})
        return
    values = _new_values(campaign, *key)
    values.update(status=StageRunStatus.RUNNING, started_at=at, attempts=1, lease_until=lease, claimed_by=claimer)
    values["dispatched_at"] = values["dispatched_at"] or at
    session.connection().execute(insert(RUNS).values(**values))


def create_runs(session: Session, campaign: Campaign, stage: str, rnd: int, items: list[int]) -> None:
    """The runs of these items, created where missing, in one statement (no read: a conflict leaves a run as it is)."""
    if items:
        _flush_runs(session)
        session.connection().execute(_CREATE, [_new_values(campaign, stage, rnd, item) for item in items])


Counts = dict[tuple[str, int], dict[StageRunStatus, int]]


def run_counts(session: Session, campaign_id: uuid.UUID) -> Counts:
    """Every stage run of the campaign counted by (stage, round) and status, in one query: what the barrier
    (stage_items) and progress read."""
    _flush_runs(session)
    counts: Counts = defaultdict(dict)
    for name, rnd, status, n in session.connection().execute(_COUNTS, {"campaign": campaign_id}):
        counts[(name, rnd)][StageRunStatus(status)] = n
    return counts


def _flush_runs(session: Session) -> None:
    """Run rows changed through the ORM (get_run's callers) reach the database before a Core statement reads or
    writes runs on the session's connection (Core statements do not autoflush)."""
    if any(isinstance(row, StageRun) for row in (*session.new, *session.dirty)):
        session.flush()


def get_run(session: Session, campaign: Campaign, stage: str, rnd: int, item: int) -> StageRun:
    return get_runs(session, campaign, stage, rnd, [item])[0]


def get_runs(session: Session, campaign: Campaign, stage: str, rnd: int, items: list[int]) -> list[StageRun]:
    """The stage runs of these items, created where missing: one query and one flush for a whole fan-out."""
    if not items:
        return []
    found = {
        run.item: run
        for run in session.scalars(
            select(StageRun).where(
                StageRun.campaign_id == campaign.id,
                StageRun.stage == stage,
                StageRun.round == rnd,
                StageRun.item.in_(items) if len(items) > 1 else StageRun.item == items[0],
            )
        )
    }
    missing = [_new_run(campaign, stage, rnd, item) for item in items if item not in found]
    if missing:
        session.add_all(missing)
        session.flush()
        found.update((run.item, run) for run in missing)
    return [found[item] for item in items]


def _new_run(campaign: Campaign, stage: str, rnd: int, item: int) -> StageRun:
    return StageRun(**_new_values(campaign, stage, rnd, item))


def _new_values(campaign: Campaign, stage: str, rnd: int, item: int) -> dict[str, Any]:
    # Times from the clock, not now(): now() is the transaction's start, not the send time. A new run is about
    # to be sent (or claimed): its lease starts now, so a lost send is re-sent by the sweep. A GPU stage's run
    # waits unsent, with no lease, until the fair dispatcher gives it a slot (workers.engine.dispatch).
    sent = None if stage in GPU_STAGES else now()
    return {
        "id": uuid.uuid4(),
        "tenant_id": campaign.tenant_id,
        "campaign_id": campaign.id,
        "stage": stage,
        "round": rnd,
        "item": item,
        "status": StageRunStatus.PENDING,
        "attempts": 0,
        "output": {},
        "queued_at": now(),
        "dispatched_at": sent,
        "lease_until": lease_from_now() if sent else None,
    }


def succeeded(session: Session, campaign: Campaign, stage: str, rnd: int, item: int, output: dict[str, Any]) -> None:
    """Mark a claimed run succeeded with its output: one UPDATE, the run is not read (its claim created it)."""
    _flush_runs(session)
    params = {
        "b_campaign": campaign.id,
        "b_stage": stage,
        "b_round": rnd,
        "b_item": item,
        "b_at": now(),
        "b_output": output,
    }
    done = session.connection().execute(_SUCCEEDED, params)
    if not done.rowcount:  # never claimed (a test driving finish alone): created as it ends
        run = get_run(session, campaign, stage, rnd, item)
        run.status, run.finished_at, run.output, run.error = StageRunStatus.SUCCEEDED, now(), output, None


def lease_from_now() -> datetime:
    """The end of a lease taken now (a send, a claim, a heartbeat); from the clock, not the transaction's start."""
    return now() + timedelta(seconds=get_settings().stage_lease_seconds)


def stage_items(session: Session, campaign_id: uuid.UUID, stage: str, rnd: int) -> tuple[int, int]:
    """(succeeded, total) stage runs of a stage in a round."""
    return items_of(run_counts(session, campaign_id), stage, rnd)


def items_of(counts: Counts, stage: str, rnd: int) -> tuple[int, int]:
    """(succeeded, total) stage runs of a stage in a round, from run_counts."""
    of_stage = counts.get((stage, rnd), {})
    return of_stage.get(StageRunStatus.SUCCEEDED, 0), sum(of_stage.values())


def webhook_tasks(delivery_ids: list[uuid.UUID]) -> list[Task]:
    return [("onbrand.send_webhook", str(d), 0, 0) for d in delivery_ids]


def campaign_finished(session: Session, campaign: Campaign) -> None:
    """A campaign's terminal transition (called where its status is set, in that transaction): counted, and its
    images settled in the quota's ledger."""
    metrics.campaign_finished(campaign.status, campaign.created_at)
    limits.settle_campaign(session, campaign.id)


def store_rows(session: Session, rows: list[Base]) -> None:
    """Upsert a stage's rows by primary key (a retried task rewrites the same rows), as session.merge does, in a
    few statements instead of two per row: the rows that exist already are read in one query per table, so that
    merge finds them in the session instead of reading each; new ones are added; nothing is flushed until all are
    in, so the flush batches the INSERTs and UPDATEs (a qc batch: 2 statements, not 9 SELECTs and 9 UPDATEs)."""
    by_table: dict[type[Base], dict[object, Base]] = defaultdict(dict)
    keyless: list[Base] = []
    for row in rows:
        key = _primary_key(row)
        if key is None:
            keyless.append(row)  # no key yet (or a composite one): merged as before
        else:
            by_table[type(row)][key] = row
    with session.no_autoflush:
        for table, keyed in by_table.items():
            column = inspect(table).primary_key[0]
            # held here: the session's identity map keeps unmodified rows only weakly
            loaded = list(session.scalars(select(table).where(column.in_(list(keyed)))))
            found = {_primary_key(r) for r in loaded}
            for key, row in keyed.items():
                if key in found or not inspect(row).transient:
                    session.merge(row)  # found: merged into the row loaded above, no query of its own
                else:
                    session.add(row)
        for row in keyless:
            session.merge(row)


def _primary_key(row: Base) -> object | None:
    """A row's one-column primary key, None when it has none yet or a composite one."""
    key = inspect(type(row)).primary_key_from_instance(row)
    return key[0] if len(key) == 1 else None
