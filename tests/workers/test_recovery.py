"""Nothing lost, quickly: stage-run leases, heartbeats, the re-send sweep and cancel's revokes, against real
Postgres (and real Redis for the revoke broadcast)."""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import psycopg
import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import update

from shared.config import get_settings
from shared.db.models import Brand, Campaign, CampaignStatus, StageRun, StageRunStatus
from shared.db.session import session_scope
from shared.queue import stage_task_id
from tests.factories import Tenant, make_campaign
from tests.system import migrated_db
from workers.engine import runner
from workers.engine.context import StageContext, now
from workers.engine.records import get_run, lock_campaign
from workers.engine.runner import execute

LEASE_S = 3  # short, so lapses happen within the test; heartbeats every second


@pytest.fixture(scope="module")
def database(stack_urls: dict[str, str]) -> Iterator[str]:
    """One migrated database for the module (each test works on its own campaigns): a new one per test would
    cost more than the tests."""
    with pytest.MonkeyPatch.context() as mp, migrated_db(stack_urls, mp) as url:
        yield url


@pytest.fixture
def resent(database: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[Any, ...]]]:
    """The tasks the runner and the sweep send, recorded instead of sent."""
    monkeypatch.setenv("ONBRAND_STAGE_LEASE_SECONDS", str(LEASE_S))
    get_settings.cache_clear()
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(runner, "send", lambda *args: calls.append(args))
    yield calls
    get_settings.cache_clear()


def ok(ctx: StageContext) -> dict[str, Any]:
    ctx.state_patch[ctx.stage] = {"done": True}
    return {"ok": True}


def set_run(campaign_id: str, stage: str, **values: Any) -> None:
    """Create (or change) the stage run (round 0, item 0) with `values`."""
    with session_scope() as session:
        campaign = lock_campaign(session, uuid.UUID(campaign_id))
        assert campaign is not None
        run = get_run(session, campaign, stage, 0, 0)
        for name, value in values.items():
            setattr(run, name, value)


def the_run(campaign_id: str, stage: str) -> StageRun:
    with session_scope() as session:
        run = session.query(StageRun).filter_by(campaign_id=uuid.UUID(campaign_id), stage=stage).one()
        session.expunge(run)
        return run


def sweep(campaign_id: str, resent: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """What one pass of the stalled sweep re-sends for this campaign (other tests' campaigns share the DB)."""
    resent.clear()
    runner.restart_stalled()
    return [task for task in resent if task[1] == campaign_id]


def dead_local_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()  # exited and reaped: the pid names no process
    return process.pid


def test_pending_run_past_its_lease_is_resent_once(resent: list[tuple[Any, ...]]) -> None:
    cid = make_campaign()
    set_run(cid, "retrieve", lease_until=now() - timedelta(seconds=1))
    cancelled = make_campaign()
    set_run(cancelled, "retrieve", lease_until=now() - timedelta(seconds=1))
    with session_scope() as session:
        session.execute(update(Campaign).where(Campaign.id == uuid.UUID(cancelled)).values(status="cancelled"))

    assert sweep(cid, resent) == [("onbrand.retrieve", cid, 0, 0)]
    assert not [task for task in resent if task[1] == cancelled]  # a cancelled campaign's run is left alone
    assert the_run(cid, "retrieve").lease_until > now()  # moved on: one lapse sends once
    assert sweep(cid, resent) == []


def test_running_run_with_a_live_heartbeat_is_neither_resent_nor_claimed_twice(
    resent: list[tuple[Any, ...]],
) -> None:
    cid = make_campaign()
    started, release = threading.Event(), threading.Event()
    outcome: list[str] = []

    def slow(ctx: StageContext) -> dict[str, Any]:
        started.set()
        release.wait(20)
        return ok(ctx)

    worker = threading.Thread(target=lambda: outcome.append(execute("decompose", cid, 0, 0, slow)))
    worker.start()
    try:
        assert started.wait(10)
        time.sleep(LEASE_S * 1.5)  # past the lease taken at the claim: only the heartbeats keep it live
        assert the_run(cid, "decompose").lease_until > now()
        assert sweep(cid, resent) == []
        assert execute("decompose", cid, 0, 0, ok) == "skipped"  # a duplicate message: someone has it
    finally:
        release.set()
        worker.join(20)
    run = the_run(cid, "decompose")
    assert outcome == ["succeeded"] and run.status == StageRunStatus.SUCCEEDED and run.attempts == 1
    assert run.lease_until is None


def test_lost_send_after_commit_is_recovered_by_the_sweep(resent: list[tuple[Any, ...]]) -> None:
    cid = make_campaign()
    assert execute("decompose", cid, 0, 0, ok) == "succeeded"
    # the send after the commit was lost (Redis lost its last second): nothing but the sweep knows
    assert the_run(cid, "retrieve").status == StageRunStatus.PENDING
    assert sweep(cid, resent) == []  # within its lease: the send may still be on its way
    time.sleep(LEASE_S + 0.2)
    assert sweep(cid, resent) == [("onbrand.retrieve", cid, 0, 0)]
    assert execute("retrieve", cid, 0, 0, ok) == "succeeded"


def test_run_of_a_dead_worker_is_resent_when_its_lease_lapses_and_then_runs(resent: list[tuple[Any, ...]]) -> None:
    cid = make_campaign()
    lapsed = now() - timedelta(seconds=1)
    running = {"status": StageRunStatus.RUNNING, "attempts": 1, "dispatched_at": lapsed}  # claimed: it holds a GPU slot
    set_run(cid, "segment", **running, claimed_by="gone-host:7", lease_until=lapsed)
    with session_scope() as session:
        session.execute(update(Campaign).where(Campaign.id == uuid.UUID(cid)).values(status=CampaignStatus.RUNNING))

    assert sweep(cid, resent) == [("onbrand.segment", cid, 0, 0)]
    assert the_run(cid, "segment").status == StageRunStatus.PENDING  # free for the re-sent task to claim
    assert execute("segment", cid, 0, 0, ok) == "succeeded"
    assert the_run(cid, "segment").attempts == 2


def test_claim_takes_over_at_once_from_a_killed_local_process_but_not_from_a_live_lease_elsewhere(
    resent: list[tuple[Any, ...]],
) -> None:
    live = now() + timedelta(seconds=60)
    elsewhere = make_campaign()
    set_run(elsewhere, "segment", status=StageRunStatus.RUNNING, claimed_by="other-host:1", lease_until=live)
    assert execute("segment", elsewhere, 0, 0, ok) == "skipped"

    killed = make_campaign()  # a SIGKILLed pool process on this host: its message comes straight back
    gone = f"{socket.gethostname()}:{dead_local_pid()}"
    set_run(killed, "segment", status=StageRunStatus.RUNNING, claimed_by=gone, lease_until=live)
    assert execute("segment", killed, 0, 0, ok) == "succeeded"


def test_a_failed_attempt_frees_the_run_for_its_retry(resent: list[tuple[Any, ...]]) -> None:
    cid = make_campaign()

    def broken(ctx: StageContext) -> dict[str, Any]:
        raise RuntimeError("model server down")

    with pytest.raises(RuntimeError):
        execute("decompose", cid, 0, 0, broken)
    runner.record_failure("decompose", cid, 0, 0, "RuntimeError: model server down")  # what the task does
    run = the_run(cid, "decompose")
    assert run.status == StageRunStatus.PENDING and run.lease_until > now()
    assert execute("decompose", cid, 0, 0, ok) == "succeeded"  # the Celery retry


def refused_connection() -> Exception:
    """A real connection-level error: what psycopg raises for a port nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    try:
        psycopg.connect(f"postgresql://nobody@127.0.0.1:{closed}/none", connect_timeout=2)
    except psycopg.OperationalError as exc:
        return exc
    raise AssertionError("a closed port accepted a connection")


@pytest.mark.parametrize(("error", "fails"), [(refused_connection(), False), (RuntimeError("model crashed"), True)])
def test_only_a_real_stage_error_fails_the_campaign_after_the_last_retry(
    resent: list[tuple[Any, ...]], worker_app: Any, monkeypatch: pytest.MonkeyPatch, error: Exception, fails: bool
) -> None:
    """Postgres down through the whole backoff (it came back just now) is no reason to fail a campaign: the
    run's lease lapses and the sweep re-sends it. Any other error on the last retry fails it."""
    import workers.tasks

    cid = make_campaign()

    def broken(*args: Any) -> str:
        raise error

    monkeypatch.setattr(workers.tasks, "execute", broken)
    result = workers.tasks.STAGE_TASKS["decompose"].apply(args=[cid, 0, 0], retries=3)  # the last retry
    assert result.failed()
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(cid))
        assert campaign is not None
        assert (campaign.status == CampaignStatus.FAILED) is fails


def revoke_broadcasts(pubsub: Any, deadline_s: float = 5.0) -> list[dict[str, Any]]:
    """The revoke commands published on Celery's broadcast (pidbox) channel, as every worker receives them."""
    found: list[dict[str, Any]] = []
    end = time.monotonic() + deadline_s
    while time.monotonic() < end and len(found) < 2:
        message = pubsub.get_message(timeout=0.2)
        if not message or message["type"] != "pmessage":
            continue
        envelope = json.loads(message["data"])
        body = envelope["body"]
        if envelope.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        command = json.loads(body)
        if command.get("method") == "revoke":
            found.append(command["arguments"])
    return found


def test_cancel_revokes_queued_and_running_gpu_work(client: TestClient, acme: Tenant, env: dict[str, str]) -> None:
    with session_scope() as session:
        brand = Brand(tenant_id=acme.id, name="Stride")
        session.add(brand)
        session.flush()
        campaign = Campaign(tenant_id=acme.id, brand_id=brand.id, brief="a shoe", sizes=[], status="running")
        session.add(campaign)
        session.flush()
        cid = campaign.id
        for stage, item, status in [
            ("generate", 0, StageRunStatus.RUNNING),
            ("generate", 1, StageRunStatus.PENDING),
            ("caption", 0, StageRunStatus.RUNNING),  # CPU work: revoked, not killed
            ("plan", 0, StageRunStatus.SUCCEEDED),  # done: nothing to revoke
        ]:
            session.add(StageRun(tenant_id=acme.id, campaign_id=cid, stage=stage, item=item, status=status))
    listener = redis.Redis.from_url(env["ONBRAND_REDIS_URL"])
    pubsub = listener.pubsub()
    pubsub.psubscribe("*pidbox*")
    pubsub.get_message(timeout=1)  # the subscription's confirmation
    try:
        response = client.post(f"/v1/campaigns/{cid}/cancel", headers=acme.auth)
        assert response.status_code == 200, response.text
        revokes = revoke_broadcasts(pubsub)
    finally:
        pubsub.close()
        listener.close()
    by_terminate = {bool(r["terminate"]): sorted(r["task_id"]) for r in revokes}
    assert by_terminate == {
        False: sorted([stage_task_id("onbrand.generate", cid, 0, 1), stage_task_id("onbrand.caption", cid, 0, 0)]),
        True: [stage_task_id("onbrand.generate", cid, 0, 0)],
    }
    assert [r["signal"] for r in revokes if r["terminate"]] == ["SIGKILL"]
