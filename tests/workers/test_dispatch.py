"""Fair GPU dispatch (workers.engine.dispatch): the choice itself (pure), then against real Postgres (waiting runs,
slots, priority, cancelled campaigns, the sweep) and the pool's registry in real Redis (workers.engine.gpu_pool)."""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from shared.config import Settings, get_settings
from shared.db.models import Campaign, CampaignPriority, CampaignStatus, StageRun, StageRunStatus, Tenant
from shared.db.session import session_scope
from tests.factories import make_campaign
from tests.system import migrated_db
from workers.engine import dispatch, gpu_pool, runner
from workers.engine.context import now
from workers.engine.dispatch import Pool, Waiting, pick
from workers.engine.gpu_pool import Capacity
from workers.engine.records import get_run, lock_campaign

A, B, C = (uuid.UUID(int=i) for i in (1, 2, 3))


def waiting(tenant: uuid.UUID, n: int, queue: str = "generate") -> list[Waiting]:
    return [Waiting(uuid.uuid4(), tenant, queue, (f"onbrand.{queue}", str(tenant), 0, i)) for i in range(n)]


def pool(total: int, **in_flight: int) -> Pool:
    tenants = {"A": A, "B": B, "C": C}
    by_tenant = Counter({tenants[name]: n for name, n in in_flight.items()})
    return Pool(Capacity.uniform(total), by_tenant, Counter({"generate": sum(in_flight.values())}))


# ---------------------------------------------------------------- the choice


def test_a_free_slot_goes_to_the_tenant_with_fewer_runs_in_flight() -> None:
    # A's backlog of 30 holds both slots until one frees; that slot goes to B's single run, not A's next.
    chosen = pick({A: waiting(A, 30), B: waiting(B, 1)}, pool(2, A=1), {}, {})
    assert [run.tenant_id for run in chosen] == [B]


def test_empty_slots_alternate_between_tenants_and_follow_their_shares() -> None:
    chosen = pick({A: waiting(A, 10), B: waiting(B, 10)}, pool(4), {}, {})
    assert Counter(run.tenant_id for run in chosen) == {A: 2, B: 2}
    weighted = pick({A: waiting(A, 10), B: waiting(B, 10)}, pool(6), {A: 2.0, B: 1.0}, {})
    assert Counter(run.tenant_id for run in weighted) == {A: 4, B: 2}


def test_ties_go_to_the_tenant_served_fewer_gpu_seconds_and_order_within_a_tenant_is_kept() -> None:
    runs_a, runs_b = waiting(A, 3), waiting(B, 3)
    chosen = pick({A: runs_a, B: runs_b}, pool(1), {}, {A: 120.0, B: 30.0})
    assert chosen == [runs_b[0]]  # B's first run: its own order (priority, oldest campaign) is kept
    chosen = pick({A: runs_a, B: runs_b}, pool(1), {A: 10.0}, {A: 120.0, B: 30.0})
    assert chosen == [runs_a[0]]  # per share: A's 120 s over a share of 10 is less than B's 30 s


def test_a_full_queue_is_skipped_for_the_tenants_run_in_another() -> None:
    # Only two processes take qc (say, a split deployment) and both are busy: A's qc run waits, its generate goes.
    full = Pool(Capacity(4, {"segment": 4, "generate": 4, "qc": 2}), Counter({B: 2}), Counter({"qc": 2}))
    qc, generate = waiting(A, 1, "qc"), waiting(A, 1, "generate")
    assert pick({A: qc + generate}, full, {}, {}) == generate


def test_nothing_is_chosen_without_a_free_slot() -> None:
    assert pick({A: waiting(A, 3), B: waiting(B, 3)}, pool(2, A=1, B=1), {}, {}) == []


# ---------------------------------------------------------------- against Postgres


@pytest.fixture(scope="module")
def database(stack_urls: dict[str, str]) -> Iterator[str]:
    with pytest.MonkeyPatch.context() as mp, migrated_db(stack_urls, mp) as url:
        yield url


@pytest.fixture
def slots(database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[Any, ...]]]:
    """Two GPU slots; the runner's sends recorded. Each test starts with no GPU run of another test in flight."""
    monkeypatch.setenv("ONBRAND_GPU_DISPATCH_SLOTS", "2")
    get_settings.cache_clear()
    with session_scope() as session:
        session.execute(update(Campaign).values(status=CampaignStatus.CANCELLED))
    sent: list[tuple[Any, ...]] = []
    monkeypatch.setattr(runner, "send", lambda *args: sent.append(args))
    yield sent
    get_settings.cache_clear()


def gpu_campaign(
    batches: int, tenant: uuid.UUID | None = None, priority: CampaignPriority = CampaignPriority.STANDARD
) -> str:
    """A running campaign with `batches` generate runs waiting (as plan's fan-out leaves them)."""
    cid = make_campaign()
    with session_scope() as session:
        campaign = lock_campaign(session, uuid.UUID(cid))
        assert campaign is not None
        if tenant is not None:
            campaign.tenant_id = tenant
        campaign.status, campaign.priority = CampaignStatus.RUNNING, priority
        session.flush()
        for item in range(batches):
            get_run(session, campaign, "generate", 0, item)
    return cid


def tenant_of(cid: str) -> uuid.UUID:
    with session_scope() as session:
        tenant = session.scalar(select(Campaign.tenant_id).where(Campaign.id == uuid.UUID(cid)))
        assert tenant is not None
        return tenant


def runs(cid: str) -> list[StageRun]:
    with session_scope() as session:
        rows = session.scalars(select(StageRun).where(StageRun.campaign_id == uuid.UUID(cid)).order_by(StageRun.item))
        found = list(rows)
        session.expunge_all()
        return found


def finish(task: tuple[Any, ...]) -> None:
    with session_scope() as session:
        session.execute(
            update(StageRun)
            .where(StageRun.campaign_id == uuid.UUID(task[1]), StageRun.stage == "generate", StageRun.item == task[3])
            .values(status=StageRunStatus.SUCCEEDED, started_at=now() - timedelta(seconds=5), finished_at=now())
        )


def test_gpu_runs_wait_unsent_and_a_freed_slot_goes_to_the_other_tenant(slots: list[tuple[Any, ...]]) -> None:
    backlog = gpu_campaign(5)
    assert all(run.dispatched_at is None and run.lease_until is None for run in runs(backlog))  # waiting, no lease

    first = dispatch.dispatch()
    assert first == [("onbrand.generate", backlog, 0, 0), ("onbrand.generate", backlog, 0, 1)]  # two slots
    assert dispatch.dispatch() == []  # full
    assert all(run.lease_until is not None for run in runs(backlog)[:2])

    single = gpu_campaign(1)  # another tenant's campaign arrives behind the backlog
    finish(first[0])
    assert dispatch.dispatch() == [("onbrand.generate", single, 0, 0)]  # not the backlog's third run
    finish(first[1])
    assert dispatch.dispatch() == [("onbrand.generate", backlog, 0, 2)]


def test_priority_orders_a_tenants_own_campaigns_not_other_tenants(slots: list[tuple[Any, ...]]) -> None:
    batch = gpu_campaign(2, priority=CampaignPriority.BATCH)
    tenant = tenant_of(batch)
    interactive = gpu_campaign(2, tenant=tenant, priority=CampaignPriority.INTERACTIVE)
    assert [task[1] for task in dispatch.dispatch()] == [interactive, interactive]  # newer, but interactive

    for task in [("onbrand.generate", interactive, 0, 0), ("onbrand.generate", interactive, 0, 1)]:
        finish(task)
    other = gpu_campaign(2, priority=CampaignPriority.BATCH)  # another tenant's batch work still gets its share
    assert sorted(task[1] for task in dispatch.dispatch()) == sorted([batch, other])


def test_weights_come_from_the_tenants_limits(slots: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONBRAND_GPU_DISPATCH_SLOTS", "3")
    get_settings.cache_clear()
    heavy, light = gpu_campaign(5), gpu_campaign(5)
    with session_scope() as session:
        session.execute(update(Tenant).where(Tenant.id == tenant_of(heavy)).values(limits={"gpu_share": 2.0}))
    assert Counter(task[1] for task in dispatch.dispatch()) == {heavy: 2, light: 1}


def test_cancelled_campaigns_neither_wait_nor_hold_slots(slots: list[tuple[Any, ...]]) -> None:
    cancelled = gpu_campaign(3)
    assert len(dispatch.dispatch()) == 2
    with session_scope() as session:
        session.execute(
            update(Campaign).where(Campaign.id == uuid.UUID(cancelled)).values(status=CampaignStatus.CANCELLED)
        )
    live = gpu_campaign(3)
    assert [task[1] for task in dispatch.dispatch()] == [live, live]  # its two sent runs no longer count


def test_the_runner_dispatches_when_a_stage_creates_gpu_runs_and_when_one_ends(slots: list[tuple[Any, ...]]) -> None:
    cid = gpu_campaign(0)
    with session_scope() as session:
        campaign = lock_campaign(session, uuid.UUID(cid))
        assert campaign is not None
        for item in range(3):
            get_run(session, campaign, "qc", 0, item)
    runner.send_all([("onbrand.qc", cid, 0, item) for item in range(3)])
    assert slots == [("onbrand.qc", cid, 0, 0), ("onbrand.qc", cid, 0, 1)]  # the third waits for a slot

    with session_scope() as session:
        session.execute(
            update(StageRun)
            .where(StageRun.campaign_id == uuid.UUID(cid), StageRun.item == 0)
            .values(status=StageRunStatus.SUCCEEDED, finished_at=now())
        )
    slots.clear()
    runner.send_all([], freed=True)
    assert slots == [("onbrand.qc", cid, 0, 2)]


def test_the_sweep_leaves_waiting_runs_to_the_dispatcher_and_fills_free_slots(
    slots: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = gpu_campaign(3)
    with session_scope() as session:  # created long ago: a lease would have lapsed long since
        session.execute(update(StageRun).values(queued_at=now() - timedelta(hours=1)))
    monkeypatch.setattr(dispatch, "dispatch", lambda offered=None, settings=None: [])  # a dispatcher that is down
    runner.restart_stalled()
    assert slots == []  # not re-sent as if lost: never sent
    monkeypatch.undo()
    monkeypatch.setenv("ONBRAND_GPU_DISPATCH_SLOTS", "2")
    monkeypatch.setattr(runner, "send", lambda *args: slots.append(args))
    runner.restart_stalled()
    assert slots == [("onbrand.generate", cid, 0, 0), ("onbrand.generate", cid, 0, 1)]


# ---------------------------------------------------------------- the pool's registry (real Redis)


@pytest.fixture
def registry(stack_urls: dict[str, str]) -> Iterator[Settings]:
    # a Redis db of its own; no fixed slots (other fixtures of this module set them in the environment)
    settings = Settings(redis_url=stack_urls["redis_url"].rsplit("/", 1)[0] + "/7", gpu_dispatch_slots=None)
    client = gpu_pool._client(settings.broker_url)
    client.flushdb()
    yield settings
    client.flushdb()


def test_capacity_is_the_registered_gpu_workers_concurrency(registry: Settings) -> None:
    assert gpu_pool.capacity(registry) == Capacity.uniform(1)  # none alive: one slot, so work shows in the queues
    assert not gpu_pool.register(registry, "cpu@a", ["llm", "webhooks"], 8)  # consumes no GPU queue
    assert gpu_pool.register(registry, "gpu@a", ["segment", "generate", "qc", "llm"], 2)
    assert gpu_pool.register(registry, "qc@b", ["qc"], 1)
    assert gpu_pool.capacity(registry) == Capacity(3, {"segment": 2, "generate": 2, "qc": 3})
    # the previous release's registry is still written (its dispatchers count these workers during a rollout)
    legacy = gpu_pool._client(registry.broker_url).get(gpu_pool.LEGACY_PREFIX + "qc@b")
    assert legacy is not None and json.loads(legacy) == {"queues": ["qc"], "concurrency": 1}
    gpu_pool.unregister(registry, "gpu@a")
    assert gpu_pool.capacity(registry) == Capacity(1, {"segment": 0, "generate": 0, "qc": 1})
    assert gpu_pool._client(registry.broker_url).get(gpu_pool.LEGACY_PREFIX + "gpu@a") is None
    fixed = registry.model_copy(update={"gpu_dispatch_slots": 5})
    assert gpu_pool.capacity(fixed) == Capacity.uniform(5)


def test_capacity_is_one_script_call_whatever_else_redis_holds(registry: Settings) -> None:
    client = gpu_pool._client(registry.broker_url)
    client.mset({f"onbrand:gpu-pool:{i}": "not an entry" for i in range(2000)})  # what a SCAN would wade through
    assert gpu_pool.register(registry, "gpu@a", ["generate"], 2)
    gpu_pool.capacity(registry)  # the script loaded
    client.config_resetstat()
    assert gpu_pool.capacity(registry) == Capacity(2, {"segment": 0, "generate": 2, "qc": 0})
    called = {name: stats["calls"] for name, stats in client.info("commandstats").items()}
    # one round trip: the script (its TIME and HGETALL count too, and the CONFIG RESETSTAT before), no SCAN or MGET
    assert called == {"cmdstat_config": 1, "cmdstat_evalsha": 1, "cmdstat_time": 1, "cmdstat_hgetall": 1}, called


def test_a_killed_nodes_entry_is_dropped_by_the_next_registration(
    registry: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(gpu_pool, "POOL_TTL_S", 1)
    assert gpu_pool.register(registry, "gpu@killed", ["generate"], 4)
    time.sleep(1.2)  # its entry expired: Redis's clock, not this process's
    assert gpu_pool.register(registry, "gpu@alive", ["qc"], 1)
    client = gpu_pool._client(registry.broker_url)
    assert set(client.hgetall(gpu_pool.POOL_KEY)) == {b"gpu@alive"}
    assert 0 < client.ttl(gpu_pool.POOL_KEY) <= 1  # the hash itself goes once no node renews
    assert gpu_pool.capacity(registry) == Capacity(1, {"segment": 0, "generate": 0, "qc": 1})


def test_a_registration_expires_unless_renewed(registry: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_pool, "POOL_TTL_S", 1)
    monkeypatch.setattr(gpu_pool, "RENEW_S", 0.3)
    stop = gpu_pool.keep_registered(registry, "gpu@c", ["generate"], 4)
    time.sleep(1.5)  # renewed past its first expiry
    assert gpu_pool.capacity(registry).total == 4
    stop.set()
    time.sleep(1.5)
    assert gpu_pool.capacity(registry).total == 1  # a killed worker's slots leave on their own
