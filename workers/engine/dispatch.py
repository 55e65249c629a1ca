"""Fair dispatch of GPU work between tenants.

A GPU stage's run (segment, plan, generate, qc: shared.queue.GPU_STAGES) is created waiting, unsent
(`dispatched_at` null). `dispatch()` fills the GPU pool's free slots (workers.engine.gpu_pool) with waiting runs,
one slot at a time, each to the tenant with the fewest runs in flight per unit of its share (weighted max-min
fairness of the slots; ties go to the tenant with the fewest GPU-seconds per share over the last FAIR_WINDOW).
Within a tenant the order is: campaign priority, then the oldest campaign (finish what was started first), then
round, stage and item.

Why slots and not queue order: a Redis list is first-come-first-served and cannot be reordered once a message is in
it, so 50 campaigns sent before another tenant's one would all run first. A message sent only when a worker can take
it leaves the choice to the moment a GPU frees up. The cost is three statements per GPU run ended, in the
transaction of the finish that ended it (`dispatch_in`).

It runs under a transaction-level advisory lock (two dispatchers never fill one slot twice) and is called when a
stage creates GPU runs, when a GPU run ends (both in the finish's transaction), and by the stalled sweep: a lost
call costs one sweep period. A finish that waits for the lock holds its campaign's row; a dispatcher holding the
lock locks no campaign row and only writes runs that wait unsent, which no finish has written (a fan-out's new runs
are invisible to it until their commit; ON CONFLICT DO NOTHING locks none): no cycle of waits.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    CompoundSelect,
    DateTime,
    Integer,
    Select,
    Table,
    and_,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    null,
    or_,
    select,
    text,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.orm import Session

from shared import limits, metrics
from shared.config import Settings, get_settings
from shared.db.models import (
    TERMINAL_STATUSES,
    Campaign,
    CampaignPriority,
    StageRun,
    StageRunStatus,
    Tenant,
)
from shared.db.session import session_scope
from shared.queue import GPU_STAGES
from shared.stages import PIPELINE, stage
from workers.engine import gpu_pool
from workers.engine.context import Task, now
from workers.engine.records import lease_from_now

log = logging.getLogger("onbrand.dispatch")

DISPATCH_LOCK = 0x0B_D15A  # pg_advisory_xact_lock key: one dispatcher at a time
FAIR_WINDOW = timedelta(minutes=10)  # GPU-seconds served this far back break ties between tenants
PRIORITY_ORDER = {p: i for i, p in enumerate(CampaignPriority)}  # interactive first, batch last


@dataclass(frozen=True)
class Waiting:
    """A GPU stage run waiting for a slot."""

    run_id: uuid.UUID
    tenant_id: uuid.UUID
    queue: str
    task: Task
    queued_at: datetime | None = None


@dataclass
class Pool:
    """What is in flight now (per tenant and per GPU queue), and what may be."""

    capacity: gpu_pool.Capacity
    by_tenant: Counter[uuid.UUID]
    by_queue: Counter[str]

    def room(self, queue: str) -> bool:
        total = sum(self.by_queue.values())
        return total < self.capacity.total and self.by_queue[queue] < self.capacity.per_queue.get(queue, 0)

    def take(self, run: Waiting) -> None:
        self.by_tenant[run.tenant_id] += 1
        self.by_queue[run.queue] += 1


def pick(
    waiting: dict[uuid.UUID, list[Waiting]],
    pool: Pool,
    shares: dict[uuid.UUID, float],
    served: dict[uuid.UUID, float],
) -> list[Waiting]:
    """Fill the free slots: each to the tenant with the fewest in flight per share, then the fewest GPU-seconds
    served per share, then by id (deterministic); that tenant's first waiting run whose queue has room."""
    queues = {tenant: list(runs) for tenant, runs in waiting.items()}
    chosen: list[Waiting] = []
    while True:
        best: tuple[tuple[float, float, str], Waiting] | None = None
        for tenant, runs in queues.items():
            run = next((r for r in runs if pool.room(r.queue)), None)
            if run is None:
                continue
            share = shares.get(tenant, 1.0)
            key = (pool.by_tenant[tenant] / share, served.get(tenant, 0.0) / share, str(tenant))
            if best is None or key < best[0]:
                best = (key, run)
        if best is None:
            return chosen
        run = best[1]
        queues[run.tenant_id].remove(run)
        pool.take(run)
        chosen.append(run)


def dispatch(offered: list[Task] | None = None, settings: Settings | None = None) -> list[Task]:
    """Mark the chosen waiting runs sent (with a lease) and return their tasks, to send after the commit.

    `offered`: GPU tasks a transaction asked to send. Those whose runs wait are the dispatcher's to choose from;
    those already sent and still pending are returned again (a redelivered predecessor re-sends its successors:
    the first send may be the one that was lost; the claim makes a duplicate harmless)."""
    settings = settings or get_settings()
    capacity = gpu_pool.capacity(settings)
    with session_scope() as session:
        return dispatch_in(session, capacity, offered, settings)


def dispatch_in(
    session: Session, capacity: gpu_pool.Capacity, offered: list[Task] | None = None, settings: Settings | None = None
) -> list[Task]:
    """dispatch() in the caller's transaction: a GPU stage's finish gives out the slot its run frees (and to the
    runs it creates) before its own commit, not in a transaction of its own after it. The advisory lock is held
    until that commit; the tasks are sent after it. The runs the caller changed through the ORM must be flushed
    (these are Core queries)."""
    connection = session.connection()
    connection.execute(LOCK)
    again = _sent_pending(session, offered or [])
    pool, waiting = _pool(session, capacity)
    if sum(pool.by_queue.values()) >= capacity.total:
        return again
    tenants = list(waiting)
    # One tenant waiting: nothing to share, its own order decides (two queries fewer per GPU run ended).
    shared = len(tenants) > 1
    if shared:
        shares, served = _shares(session, tenants, settings or get_settings()), _served(session, tenants)
    else:
        shares, served = {}, {}
    chosen = pick(waiting, pool, shares, served) if waiting else []
    if chosen:
        params = {"runs": [r.run_id for r in chosen], "at": now(), "lease": lease_from_now()}
        connection.execute(SENT, params)
        _observe_waits(chosen)
    return again + [run.task for run in chosen]


def _sent_pending(session: Session, offered: list[Task]) -> list[Task]:
    """The offered tasks whose runs were sent and are still pending (not claimed)."""
    if not offered:
        return []
    campaigns = list({uuid.UUID(task[1]) for task in offered})
    rows = session.connection().execute(SENT_PENDING, {"campaigns": campaigns}).all()
    sent = {(stage(name).task, str(campaign), rnd, item) for campaign, name, rnd, item in rows}
    return [task for task in offered if task in sent]


def _live_gpu_runs() -> ColumnElement[bool]:
    return and_(StageRun.stage.in_(GPU_STAGES), Campaign.status.not_in(TERMINAL_STATUSES))


def _in_flight_query() -> Select[uuid.UUID, str, int]:
    return (
        select(StageRun.tenant_id, StageRun.stage, func.count())
        .join(Campaign, Campaign.id == StageRun.campaign_id)
        .where(
            _live_gpu_runs(),
            StageRun.dispatched_at.is_not(None),
            StageRun.status.in_([StageRunStatus.PENDING, StageRunStatus.RUNNING]),
        )
        .group_by(StageRun.tenant_id, StageRun.stage)
    )


def _waiting_query() -> Select[Any]:
    """Each tenant's waiting runs ranked in its own order, the first :per_tenant of each."""
    priority = case(PRIORITY_ORDER, value=Campaign.priority, else_=len(PRIORITY_ORDER))
    stage_order = case({name: i for i, name in enumerate(PIPELINE)}, value=StageRun.stage)
    order = func.row_number().over(
        partition_by=StageRun.tenant_id,
        order_by=(priority, Campaign.created_at, Campaign.id, StageRun.round, stage_order, StageRun.item),
    )
    ranked = (
        select(
            StageRun.id,
            StageRun.tenant_id,
            StageRun.stage,
            StageRun.campaign_id,
            StageRun.round,
            StageRun.item,
            StageRun.queued_at,
            order.label("position"),
        )
        .join(Campaign, Campaign.id == StageRun.campaign_id)
        .where(_live_gpu_runs(), StageRun.dispatched_at.is_(None), StageRun.status == StageRunStatus.PENDING)
        .subquery()
    )
    return select(ranked).where(ranked.c.position <= bindparam("per_tenant")).order_by(ranked.c.position)


def _pool_query() -> CompoundSelect:
    """_in_flight_query's and _waiting_query's rows in one statement (one snapshot, one round trip): `kind` 0, a
    tenant's runs in flight per stage (`n` of them); `kind` 1, a waiting run at its tenant's `n`th place."""
    in_flight = _in_flight_query().subquery()
    waiting = _waiting_query().subquery()
    none: dict[str, Any] = {"id": PG_UUID(as_uuid=True), "campaign_id": PG_UUID(as_uuid=True)}
    none |= {"round": Integer(), "item": Integer(), "queued_at": DateTime(timezone=True)}
    flight_cols = [cast(null(), type_).label(name) for name, type_ in none.items()]
    return union_all(
        select(
            literal_column("0").label("kind"),
            flight_cols[0],
            in_flight.c.tenant_id,
            in_flight.c.stage,
            *flight_cols[1:],
            in_flight.c.count.label("n"),
        ),
        select(
            literal_column("1"),
            waiting.c.id,
            waiting.c.tenant_id,
            waiting.c.stage,
            waiting.c.campaign_id,
            waiting.c.round,
            waiting.c.item,
            waiting.c.queued_at,
            waiting.c.position,
        ),
    ).order_by(text("1"), text("9"))


_RUNS: Table = StageRun.__table__  # type: ignore[assignment]  # declared as FromClause; a Table
# Built once: these run every time a GPU run ends, and building them (CASE maps, a window) cost ~1 ms of CPU each
# time, more than executing them. The Core ones run on the session's connection (no ORM execution around them).
POOL = _pool_query()
LOCK = select(func.pg_advisory_xact_lock(DISPATCH_LOCK))
SENT = (
    update(_RUNS)
    .where(_RUNS.c.id.in_(bindparam("runs", expanding=True)))
    .values(dispatched_at=bindparam("at"), lease_until=bindparam("lease"))
)
SENT_PENDING = select(_RUNS.c.campaign_id, _RUNS.c.stage, _RUNS.c.round, _RUNS.c.item).where(
    _RUNS.c.campaign_id.in_(bindparam("campaigns", expanding=True)),
    _RUNS.c.stage.in_(sorted(GPU_STAGES)),
    _RUNS.c.dispatched_at.is_not(None),
    _RUNS.c.status == StageRunStatus.PENDING,
)


def warm_up(session: Session) -> None:
    """dispatch_in's statements executed once each, matching no run (workers.engine.warm: compiled and cached). The
    advisory lock is held until the caller's transaction ends."""
    nobody, at = uuid.uuid4(), now()
    connection = session.connection()
    connection.execute(LOCK)
    connection.execute(SENT_PENDING, {"campaigns": [nobody]})
    connection.execute(POOL, {"per_tenant": 0})
    connection.execute(SENT, {"runs": [nobody], "at": at, "lease": at})


def _pool(session: Session, capacity: gpu_pool.Capacity) -> tuple[Pool, dict[uuid.UUID, list[Waiting]]]:
    """The runs sent and not finished (a run re-sent by the sweep or waiting for a Celery retry keeps its slot), and
    each tenant's first waiting runs in its own order, as many as there are slots (no tenant can take more), read
    in one statement."""
    pool = Pool(capacity, Counter(), Counter())
    waiting: dict[uuid.UUID, list[Waiting]] = {}
    for kind, run_id, tenant, name, campaign_id, rnd, item, queued_at, n in session.connection().execute(
        POOL, {"per_tenant": capacity.total}
    ):
        if kind == 0:
            pool.by_tenant[tenant] += n
            pool.by_queue[stage(name).queue] += n
        else:
            task = (stage(name).task, str(campaign_id), rnd, item)
            waiting.setdefault(tenant, []).append(Waiting(run_id, tenant, stage(name).queue, task, queued_at))
    return pool, waiting


def _shares(session: Session, tenants: list[uuid.UUID], settings: Settings) -> dict[uuid.UUID, float]:
    rows = session.execute(select(Tenant.id, Tenant.limits).where(Tenant.id.in_(tenants))).all()
    return {tenant: limits.effective(settings, overrides).gpu_share for tenant, overrides in rows}


def _served(session: Session, tenants: list[uuid.UUID]) -> dict[uuid.UUID, float]:
    """GPU-seconds each tenant's runs computed within FAIR_WINDOW (running ones up to now)."""
    at = now()
    start = at - FAIR_WINDOW
    until = func.coalesce(StageRun.finished_at, at)
    seconds = func.sum(func.extract("epoch", until - func.greatest(StageRun.started_at, start)))
    rows = session.execute(
        select(StageRun.tenant_id, seconds)
        .where(
            StageRun.tenant_id.in_(tenants),
            StageRun.stage.in_(GPU_STAGES),
            StageRun.started_at.is_not(None),
            or_(StageRun.finished_at > start, StageRun.status == StageRunStatus.RUNNING),
        )
        .group_by(StageRun.tenant_id)
    ).all()
    return {tenant: float(total or 0.0) for tenant, total in rows}


def _observe_waits(chosen: list[Waiting]) -> None:
    """onbrand_gpu_dispatch_wait_seconds: from a run's creation to its dispatch, by stage."""
    at = now()
    for run in chosen:
        if run.queued_at is not None:
            name = _STAGE_OF_TASK[run.task[0]]
            metrics.GPU_DISPATCH_WAIT.labels(name).observe(max(0.0, (at - run.queued_at).total_seconds()))


_STAGE_OF_TASK = {stage(name).task: name for name in PIPELINE}
