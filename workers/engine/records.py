"""The rows the engine works on: the locked campaign, its stage runs, and the tasks its outbox rows need."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any, NamedTuple

from sqlalchemy import (
    Row,
    Select,
    Table,
    Update,
    and_,
    bindparam,
    case,
    cast,
    func,
    inspect,
    literal,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB, Insert, insert
from sqlalchemy.orm import Session, defer
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql import ClauseElement, sqltypes

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
_CLAIMED: dict[str, Any] = {
    "status": StageRunStatus.RUNNING,
    "started_at": bindparam("b_at"),
    "attempts": RUNS.c.attempts + 1,
    "lease_until": bindparam("b_lease"),
    "claimed_by": bindparam("b_claimer"),
    # a message that came without the dispatcher holds a slot too
    "dispatched_at": func.coalesce(RUNS.c.dispatched_at, bindparam("b_at")),
}
_CLAIM = update(RUNS).where(RUNS.c.id == bindparam("b_run")).values(_CLAIMED)
# The claim's common case in one statement: the run is marked running unless it succeeded already or runs under a
# live lease (those, and a missing run, are read and decided by the claim: claim_free_run returns False).
_CLAIM_FREE = (
    update(RUNS)
    .where(
        RUNS.c.campaign_id == bindparam("b_campaign"),
        RUNS.c.stage == bindparam("b_stage"),
        RUNS.c.round == bindparam("b_round"),
        RUNS.c.item == bindparam("b_item"),
        RUNS.c.status != StageRunStatus.SUCCEEDED,
        or_(
            RUNS.c.status != StageRunStatus.RUNNING,
            RUNS.c.lease_until.is_(None),
            RUNS.c.lease_until <= bindparam("b_at"),
        ),
    )
    .values(_CLAIMED)
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


def _counted(change: Update, status: StageRunStatus) -> Select[Any]:
    """`change` (an UPDATE of the run b_campaign/b_stage/b_round/b_item to `status`) and the campaign's runs counted
    by stage, round and status, in one statement: run_counts as they are once the UPDATE is done. The count reads the
    statement's snapshot, taken after the caller locked the campaign (every other claim and finish of it has
    committed or waits), in which this run still has its old status: counted with `status` here, which is what the
    UPDATE beside it makes it. `updated`, the last column: whether the UPDATE found the run (else the counts are not
    used)."""
    done = change.returning(RUNS.c.id).cte("done")
    this_run = and_(
        RUNS.c.stage == bindparam("b_stage"), RUNS.c.round == bindparam("b_round"), RUNS.c.item == bindparam("b_item")
    )
    after = case((this_run, literal(status.value)), else_=RUNS.c.status)
    updated = select(func.count()).select_from(done).scalar_subquery().label("updated")
    return (
        select(RUNS.c.stage, RUNS.c.round, after, func.count(), updated)
        .where(RUNS.c.campaign_id == bindparam("b_campaign"))
        .group_by(text("1, 2, 3"))
    )


# The finish's run marked succeeded and the campaign's runs counted (the barrier, the events' progress) at once.
_SUCCEEDED_COUNTED = _counted(_SUCCEEDED, StageRunStatus.SUCCEEDED)
# The claim's common case and the counts its stage's started event reads (the first claim of a stage's round).
_CLAIM_FREE_COUNTED = _counted(_CLAIM_FREE, StageRunStatus.RUNNING)
# A claimed run that did not exist yet (the campaign's first, a message that came before its run).
_INSERT_RUN = insert(RUNS)
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


# The campaign columns the engine's claims and finishes change (status and stage, the loop's bookkeeping, the events'
# sequence, a failure, the end): written by write_campaign as a Core UPDATE of those that changed, built once per set
# of them (a claim and a finish change the same few sets: workers.engine.warm compiles them before the first task).
CAMPAIGN_WRITES = (
    "status",
    "current_stage",
    "round",
    "loop",
    "event_sequence",
    "error",
    "completed_at",
    "review_state",
)
WARM_CAMPAIGN_WRITES = (
    ("status", "current_stage", "loop", "event_sequence"),  # a campaign's first claim
    ("current_stage", "loop", "event_sequence"),  # a stage's first claim
    ("loop", "event_sequence"),  # a stage's last finish: its completed event
    ("event_sequence",),  # a finish whose bookkeeping an earlier query's autoflush wrote: its event
    ("loop",),  # ... and the reverse (rank's loop decision after its events)
)


def write_campaign(session: Session, campaign: Campaign) -> None:
    """The campaign's changes written now, as one UPDATE of the columns that changed (and updated_at, as the ORM's
    flush sets it), and the object expunged: the ORM's flush (its unit of work, a statement compiled per set of
    columns the first time a process meets it) does not write it again. Left to the flush when something else
    changed, or a value is an SQL expression."""
    state = inspect(campaign)
    if state.session is not session:
        return
    pending = set(state.committed_state)
    if not pending <= set(CAMPAIGN_WRITES) or any(isinstance(state.dict.get(a), ClauseElement) for a in pending):
        return
    changed = tuple(c for c in CAMPAIGN_WRITES if c in pending and state.attrs[c].history.has_changes())
    if changed:
        values = {f"b_{c}": state.dict[c] for c in changed}
        session.connection().execute(_campaign_update(changed), {"b_id": campaign.id, **values})
    session.expunge(campaign)


@cache
def _campaign_update(columns: tuple[str, ...]) -> Update:
    written: dict[str, Any] = {c: bindparam(f"b_{c}", type_=_CAMPAIGNS.c[c].type) for c in columns}
    return update(_CAMPAIGNS).where(_CAMPAIGNS.c.id == bindparam("b_id")).values({**written, "updated_at": func.now()})


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


def claim_free_run(
    session: Session, campaign_id: uuid.UUID, key: tuple[str, int, int], claimer: str, *, count: bool = False
) -> tuple[bool, Counts | None]:
    """Mark the run of `key` (stage, round, item) running for `claimer` under a fresh lease if it is neither
    succeeded nor running under a live lease, without reading it first; whether it did, and with `count` (its
    stage's started event is due) the campaign's runs counted as they are then (run_counts), in the same statement.
    When it did not, the claim reads the run (find_run) and decides: a succeeded run, one held elsewhere, one whose
    claimer on this host is gone (leases.held_elsewhere), or none yet."""
    _flush_runs(session)
    stage, rnd, item = key
    at, lease = now(), lease_from_now()
    params = {"b_campaign": campaign_id, "b_stage": stage, "b_round": rnd, "b_item": item}
    params |= {"b_at": at, "b_lease": lease, "b_claimer": claimer}
    if not count:
        return bool(session.connection().execute(_CLAIM_FREE, params).rowcount), None
    counts = _counts_of(session.connection().execute(_CLAIM_FREE_COUNTED, params).all())
    return counts is not None, counts


def _counts_of(rows: Sequence[Row[str, int, str, int, int]]) -> Counts | None:
    """run_counts from a _counted statement's rows; None when its UPDATE found no run."""
    if not rows or not rows[0][4]:
        return None
    counts: Counts = defaultdict(dict)
    for name, of_round, status, n, _ in rows:
        counts[(name, of_round)][StageRunStatus(status)] = n
    return counts


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
    session.connection().execute(_INSERT_RUN, values)


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


def succeeded(
    session: Session, campaign: Campaign, stage: str, rnd: int, item: int, output: dict[str, Any]
) -> Counts | None:
    """Mark a claimed run succeeded with its output (the run is not read: its claim created it) and count the
    campaign's runs as they are now, in one statement; the counts (run_counts), or None when the run had not been
    claimed (a test driving finish alone: created as it ends, counted by whoever needs counts)."""
    _flush_runs(session)
    params = {
        "b_campaign": campaign.id,
        "b_stage": stage,
        "b_round": rnd,
        "b_item": item,
        "b_at": now(),
        "b_output": output,
    }
    counts = _counts_of(session.connection().execute(_SUCCEEDED_COUNTED, params).all())
    if counts is not None:
        return counts
    run = get_run(session, campaign, stage, rnd, item)
    run.status, run.finished_at, run.output, run.error = StageRunStatus.SUCCEEDED, now(), output, None
    return None


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
    """Upsert a stage's rows by primary key (a retried task rewrites the same rows) as Core statements on the
    session's connection, one per table and set of columns: no read first, no ORM merge or flush.

    A row made by the stage (generate's candidates, the LLM call log) is an `INSERT … ON CONFLICT (id) DO
    UPDATE` of the columns it sets (those it leaves unset keep their stored or default values, as merge keeps
    them). A row the stage read and changed (qc's and rank's candidates, handed over detached) is an UPDATE of
    what it assigned and of its JSON values (changed in place, unseen by the ORM); a row that is gone by then is
    upserted whole. A row never overwrites another tenant's. Rows the session holds are not refreshed: the
    finish loads none of these before; ORM queries after this read the database."""
    by_shape: Groups = defaultdict(list)
    merged: list[Base] = []
    for row in rows:
        shape = _shape(type(row))
        state = inspect(row)
        values = {column: state.dict[attr] for attr, column in shape.columns if attr in state.dict}
        if shape.key is None or values.get(shape.key) is None or (shape.tenant and shape.tenant not in values):
            merged.append(row)  # a composite key, no key yet, or no tenant to scope by: merged as before
            continue
        if state.key is None:  # made by the stage
            by_shape[("upsert", shape, tuple(values))].append((values, values))
            continue
        changed = set(state.committed_state)
        columns = tuple(c for a, c in shape.columns if a in state.dict and (a in changed or c in shape.mutable))
        if columns:
            by_shape[("update", shape, columns)].append(({c: values[c] for c in columns}, values))
    for (kind, shape, columns), batch in sorted(_widened(by_shape).items(), key=lambda entry: entry[0][1].order):
        if kind == "upsert":
            _upsert(session, shape, columns, [values for values, _ in batch])
        else:
            _update(session, shape, columns, batch)
    for row in merged:
        session.merge(row)


Groups = dict[tuple[str, "Shape", tuple[str, ...]], list[tuple[dict[str, Any], dict[str, Any]]]]


def _widened(groups: Groups) -> Groups:
    """A table's changed rows in one UPDATE, not one per set of changed columns (rank assigns a rank to some
    candidates, a score to others): the union of the columns they changed, each row's own values (a column a row
    did not change is written as it was read). A row that lacks one of them (not loaded) keeps its own set."""
    widened: Groups = defaultdict(list)
    updates: dict[Shape, list[tuple[tuple[str, ...], list[tuple[dict[str, Any], dict[str, Any]]]]]] = defaultdict(list)
    for (kind, shape, columns), batch in groups.items():
        if kind == "update":
            updates[shape].append((columns, batch))
        else:
            widened[(kind, shape, columns)] = batch
    for shape, parts in updates.items():
        union = tuple(c for _, c in shape.columns if any(c in columns for columns, _ in parts))
        for columns, batch in parts:
            for _, whole in batch:
                chosen = union if all(c in whole for c in union) else columns
                widened[("update", shape, chosen)].append(({c: whole[c] for c in chosen}, whole))
    return widened


@dataclass(frozen=True, eq=False)  # one per mapped class (_shape): compared and hashed by identity
class Shape:
    """What store_rows needs of a mapped class, worked out once."""

    table: Table
    key: str | None  # the one primary key column; None when composite
    tenant: str | None  # the tenant column, when the table has one
    columns: tuple[tuple[str, str], ...]  # (attribute, column) of every column attribute
    mutable: frozenset[str]  # JSON and ARRAY columns: a value changed in place is not in the ORM's history
    order: int  # the table's place in the schema's dependency order (rows referenced first)


@cache
def _shape(cls: type[Base]) -> Shape:
    mapper = inspect(cls)
    table: Table = mapper.local_table  # type: ignore[assignment]  # declared as FromClause; a Table
    keys = mapper.primary_key
    columns = tuple((prop.key, prop.columns[0].key) for prop in mapper.column_attrs if prop.columns[0].table is table)
    mutable = frozenset(c.key for c in table.columns if isinstance(c.type, (sqltypes.JSON, sqltypes.ARRAY)))
    order = Base.metadata.sorted_tables.index(table)
    tenant = "tenant_id" if "tenant_id" in table.c else None
    return Shape(table, keys[0].key if len(keys) == 1 else None, tenant, columns, mutable, order)


def _upsert(session: Session, shape: Shape, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    session.connection().execute(_upsert_statement(shape, columns), rows)


@cache
def _upsert_statement(shape: Shape, columns: tuple[str, ...]) -> Insert:
    # Built once per table and set of columns: building a statement cost more CPU than executing it.
    statement = insert(shape.table)
    assert shape.key is not None
    written = {c: statement.excluded[c] for c in columns if c != shape.key}
    if not written:
        return statement.on_conflict_do_nothing(index_elements=[shape.key])
    same_tenant = shape.table.c[shape.tenant] == statement.excluded[shape.tenant] if shape.tenant else None
    return statement.on_conflict_do_update(index_elements=[shape.key], set_=written, where=same_tenant)


def _update(
    session: Session, shape: Shape, columns: tuple[str, ...], batch: list[tuple[dict[str, Any], dict[str, Any]]]
) -> None:
    assert shape.key is not None
    params = [
        {
            **{f"b_{c}": v for c, v in changed.items()},
            "b_key": whole[shape.key],
            "b_tenant": whole[shape.tenant] if shape.tenant else None,
        }
        for changed, whole in batch
    ]
    done = session.connection().execute(_update_statement(shape, columns), params)
    if done.rowcount < len(batch):  # a row gone since the stage read it: written whole (the others again, alike)
        for whole_columns, rows in _by_columns([whole for _, whole in batch]).items():
            _upsert(session, shape, whole_columns, rows)


def _by_columns(rows: list[dict[str, Any]]) -> dict[tuple[str, ...], list[dict[str, Any]]]:
    grouped: dict[tuple[str, ...], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        grouped[tuple(row)].append(row)
    return grouped


@cache
def _update_statement(shape: Shape, columns: tuple[str, ...]) -> Update:
    assert shape.key is not None
    table = shape.table
    where = [table.c[shape.key] == bindparam("b_key")]
    if shape.tenant:
        where.append(table.c[shape.tenant] == bindparam("b_tenant"))
    return update(table).where(*where).values({c: bindparam(f"b_{c}") for c in columns if c != shape.key})


def warm_up(session: Session) -> None:
    """This module's hot-path statements executed once each for a campaign that does not exist (workers.engine.warm:
    compiled and cached, nothing read or written). Not a fan-out's INSERT of its runs: refused by the campaign's
    foreign key, its error ends psycopg's pipeline with a warning in the log at every start."""
    nobody, at = uuid.uuid4(), now()
    lock_campaign(session, nobody)
    lock_campaign_lean(session, nobody)
    find_run(session, nobody, "warm-up", 0, 0)
    run_counts(session, nobody)
    connection = session.connection()
    connection.execute(_CLAIM, {"b_run": nobody, "b_at": at, "b_lease": at, "b_claimer": "warm-up"})
    claim_free_run(session, nobody, ("warm-up", 0, 0), "warm-up")
    claim_free_run(session, nobody, ("warm-up", 0, 0), "warm-up", count=True)
    done = {"b_campaign": nobody, "b_stage": "warm-up", "b_round": 0, "b_item": 0, "b_at": at, "b_output": {}}
    connection.execute(_SUCCEEDED_COUNTED, done).all()
    connection.execute(_PATCH_STATE, {"b_id": nobody, "b_patch": {}})
    for columns in WARM_CAMPAIGN_WRITES:
        values: dict[str, Any] = {f"b_{c}": {} if c == "loop" else None for c in columns}
        connection.execute(_campaign_update(columns), {"b_id": nobody, **values})
