"""The engine's hot path against real Postgres: how many statements a stage task's claim and finish send, and
the Core run writes behind them (claim, fan-out creation) keeping the runs' guarantees."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from sqlalchemy import event, func, select

from shared.db.models import Campaign, CampaignStatus, Candidate, StageRun, StageRunStatus, WebhookDelivery
from shared.db.session import get_engine, session_scope
from shared.stages import progress
from tests.factories import add_endpoint, make_campaign
from tests.sql_events import compiled_statements
from workers.engine import dispatch, flow, gpu_pool, leases, runner, warm
from workers.engine.context import StageContext
from workers.engine.records import claim_run, find_run, lock_campaign


@pytest.fixture
def sent(fresh_db: str, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(runner, "send", lambda *args: calls.append(args))
    monkeypatch.setattr(runner, "dispatch_gpu", lambda offered=None: 0)  # GPU runs: tests/workers/test_dispatch.py
    return calls


# The dispatcher's statements in a finish: its lock, the runs in flight and the waiting runs (one statement), those
# chosen marked sent
DISPATCH = [
    "SELECT PG_ADVISORY_XACT_LOCK AS",
    "SELECT 0 AS",
    "UPDATE STAGE_RUNS SET",
]


@contextmanager
def statements() -> Iterator[list[str]]:
    seen: list[str] = []

    def record(conn: object, cursor: object, statement: str, *_: object) -> None:
        seen.append(" ".join(word.split("(")[0] for word in statement.split()[:3]).upper())  # no bind names

    def commit(conn: object) -> None:
        seen.append("COMMIT")

    event.listen(get_engine(), "before_cursor_execute", record)
    event.listen(get_engine(), "commit", commit)
    try:
        yield seen
    finally:
        event.remove(get_engine(), "before_cursor_execute", record)
        event.remove(get_engine(), "commit", commit)


def _runs(cid: str, stage: str) -> dict[int, StageRun]:
    with session_scope() as session:
        rows = session.scalars(select(StageRun).where(StageRun.campaign_id == uuid.UUID(cid), StageRun.stage == stage))
        return {run.item: run for run in rows}


def _batches(cid: str, n: int) -> None:
    """A campaign past plan: its generate fan-out of n batches created, the first batch's start announced."""
    with session_scope() as session:
        campaign = lock_campaign(session, uuid.UUID(cid))
        assert campaign is not None
        campaign.status, campaign.current_stage = CampaignStatus.RUNNING, "generate"
        flow.record_batches(campaign, 0, n)
        flow.fan_out(session, campaign, "generate", 0)
        flow.stage_started_event(session, campaign, "generate", 0)


def _generate(ctx: StageContext) -> dict[str, Any]:
    ctx.rows.append(
        Candidate(
            id=uuid.uuid5(ctx.campaign.id, f"{ctx.round}:{ctx.item}"),
            tenant_id=ctx.tenant_id,
            campaign_id=ctx.campaign.id,
            batch=ctx.item,
            layout_key=f"k{ctx.item}",
        )
    )
    return {"made": 1}


def test_a_fan_out_item_is_claimed_and_finished_in_a_few_statements(sent: list[tuple[Any, ...]]) -> None:
    cid = make_campaign()
    _batches(cid, 3)
    with statements() as seen:
        assert runner.execute("generate", cid, 0, 1, _generate) == "succeeded"
    # claim: lock the campaign, mark the run running where it is neither done nor held under a live lease (not read
    # first; no event: the stage's start was announced, the campaign is running this stage already: no UPDATE of it);
    # finish: lock, mark succeeded and count the runs for the barrier (not the last) in one statement, upsert the
    # stage's row (no read first); its GPU slot is free: the dispatcher, in the same transaction, gives out the
    # free slots
    assert seen == [
        "SELECT CAMPAIGNS.ID, CAMPAIGNS.TENANT_ID,",
        "UPDATE STAGE_RUNS SET",
        "COMMIT",
        "SELECT CAMPAIGNS.ID, CAMPAIGNS.TENANT_ID,",
        "WITH DONE AS",
        "INSERT INTO CANDIDATES",
        *DISPATCH,
        "COMMIT",
    ], seen
    run = _runs(cid, "generate")[1]
    assert run.status == StageRunStatus.SUCCEEDED and run.attempts == 1 and run.lease_until is None
    assert run.started_at is not None and run.finished_at is not None and run.output == {"made": 1}
    # two batches left, nothing follows yet; the two waiting batches get free slots (64 in tests)
    assert sent == [("onbrand.generate", cid, 0, 0), ("onbrand.generate", cid, 0, 2)]


def test_a_gpu_finish_dispatches_in_its_transaction_and_sends_after_its_commit(
    sent: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = make_campaign()
    _batches(cid, 3)
    committed: list[tuple[int, bool]] = []

    def send(name: str, ident: str, rnd: int, item: int) -> None:
        # what another connection sees when the task is sent: the finish's transaction has committed
        runs = _runs(cid, "generate")
        committed.append((item, runs[item].dispatched_at is not None and runs[0].status == "succeeded"))

    monkeypatch.setattr(runner, "send", send)
    with statements() as seen:
        assert runner.execute("generate", cid, 0, 0, _generate) == "succeeded"
    finish = seen.index("COMMIT", seen.index("COMMIT") + 1)  # the claim's commit, then the finish's
    assert seen[finish - len(DISPATCH) : finish] == DISPATCH  # the dispatcher's work ends the finish's transaction
    assert sum(s.startswith("SELECT PG_ADVISORY") for s in seen) == 1  # and has no transaction of its own
    assert committed == [(1, True), (2, True)]
    with session_scope() as session:  # the lock is the transaction's: released at its commit
        session.execute(select(func.pg_advisory_xact_lock(dispatch.DISPATCH_LOCK)))


def test_a_gpu_finish_whose_slots_are_unknown_leaves_dispatch_to_after_its_commit(
    sent: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = make_campaign()
    _batches(cid, 2)

    def away(settings: object) -> object:
        raise redis.ConnectionError("Redis restarting")

    offered: list[object] = []
    monkeypatch.setattr(gpu_pool, "capacity", away)
    monkeypatch.setattr(runner, "dispatch_gpu", lambda tasks=None: offered.append(tasks) or 0)
    with statements() as seen:
        assert runner.execute("generate", cid, 0, 0, _generate) == "succeeded"
    assert not any(s.startswith("SELECT PG_ADVISORY") for s in seen)
    assert offered == [[]]  # after the commit, as before: it logs the failure and the sweep dispatches again
    assert _runs(cid, "generate")[0].status == StageRunStatus.SUCCEEDED


def test_a_single_item_finish_reads_the_campaign_state_with_its_lock(sent: list[tuple[Any, ...]]) -> None:
    cid = make_campaign(webhook_url="https://campaign.example/hook")
    add_endpoint(cid, "https://hooks.example/all")
    with statements() as seen:
        assert runner.execute("decompose", cid, 0, 0, lambda ctx: {}) == "succeeded"
    # The stage's last item: its events read campaign.state (progress, the next stage's fan-out), loaded with the
    # lock; left unloaded, it took a query of its own and split the campaign's UPDATE in two (an autoflush first).
    finish = seen[seen.index("COMMIT") + 1 :]
    assert finish == [
        "SELECT CAMPAIGNS.ID, CAMPAIGNS.TENANT_ID,",
        "WITH DONE AS",  # the run marked succeeded, the runs counted: the barrier and the event's progress
        "WITH ENDPOINTS AS",  # the stage's completed event: its endpoints chosen and its outbox rows written
        "INSERT INTO STAGE_RUNS",  # the next stage's run
        "UPDATE CAMPAIGNS SET",  # the event's sequence and bookkeeping, in the flush at commit
        "COMMIT",
    ], finish
    # the claim's started event and the finish's completed event, to the campaign's URL and the endpoint each
    assert [task[0] for task in sent].count("onbrand.send_webhook") == 4


def test_a_claim_reads_its_stage_started_events_counts_with_its_update(sent: list[tuple[Any, ...]]) -> None:
    cid = make_campaign()
    add_endpoint(cid, "https://hooks.example/all")
    assert runner.execute("decompose", cid, 0, 0, lambda ctx: {}) == "succeeded"  # retrieve's run waits
    with statements() as seen:
        assert runner.execute("retrieve", cid, 0, 0, lambda ctx: {}) == "succeeded"
    # lock; mark the run running and count the runs (the started event's items and progress) in one statement;
    # the event; the campaign's status, stage and bookkeeping
    assert seen[: seen.index("COMMIT") + 1] == [
        "SELECT CAMPAIGNS.ID, CAMPAIGNS.TENANT_ID,",
        "WITH DONE AS",
        "WITH ENDPOINTS AS",
        "UPDATE CAMPAIGNS SET",
        "COMMIT",
    ]
    with session_scope() as session:
        [started] = session.scalars(
            select(WebhookDelivery.payload).where(
                WebhookDelivery.event_type == "campaign.stage.started",
                WebhookDelivery.payload["stage"].as_string() == "retrieve",
            )
        ).all()
    assert (started["items"], started["progress"]) == (1, progress({"decompose"}, terminal=False))
    assert _runs(cid, "retrieve")[0].status == StageRunStatus.SUCCEEDED


def test_the_last_item_creates_the_next_fan_out_in_one_insert(sent: list[tuple[Any, ...]]) -> None:
    cid = make_campaign()
    _batches(cid, 2)
    assert runner.execute("generate", cid, 0, 0, _generate) == "succeeded"
    with statements() as seen:
        assert runner.execute("generate", cid, 0, 1, _generate) == "succeeded"
    assert seen.count("INSERT INTO STAGE_RUNS") == 1  # qc's two runs, without reading them first
    # the barrier and the event's progress: counted with the run's UPDATE, which the count sees as done
    assert seen.count("WITH DONE AS") == 1 and seen.count("SELECT STAGE_RUNS.STAGE, STAGE_RUNS.ROUND,") == 0
    assert {i: r.status for i, r in _runs(cid, "qc").items()} == {0: "pending", 1: "pending"}


def test_fan_out_again_keeps_the_runs_it_finds(sent: list[tuple[Any, ...]]) -> None:
    cid = make_campaign()
    _batches(cid, 3)
    assert runner.execute("generate", cid, 0, 0, _generate) == "succeeded"
    before = _runs(cid, "generate")
    with session_scope() as session:  # a redelivered plan fans out again
        campaign = lock_campaign(session, uuid.UUID(cid))
        assert campaign is not None
        tasks = flow.fan_out(session, campaign, "generate", 0)
    assert [t[3] for t in tasks] == [0, 1, 2]  # every item's task (the first sends may be the lost ones)
    after = _runs(cid, "generate")
    assert {i: (r.id, r.status) for i, r in after.items()} == {i: (r.id, r.status) for i, r in before.items()}
    assert after[0].status == StageRunStatus.SUCCEEDED


def test_a_claim_without_a_run_creates_it_running_and_a_live_claim_is_not_taken(fresh_db: str) -> None:
    cid = make_campaign()
    with session_scope() as session:
        campaign = lock_campaign(session, uuid.UUID(cid))
        assert campaign is not None
        assert find_run(session, campaign.id, "decompose", 0, 0) is None
        claim_run(session, campaign, None, ("decompose", 0, 0), leases.worker_id())
        run = find_run(session, campaign.id, "decompose", 0, 0)
    assert run is not None and run.status == StageRunStatus.RUNNING and run.attempts == 1
    assert run.dispatched_at is not None and run.claimed_by == leases.worker_id()
    assert run.lease_until is not None
    other = run._replace(claimed_by="another-host:1")
    assert leases.held_elsewhere(other)  # running under a live lease, claimed elsewhere: skipped
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(cid))
        assert campaign is not None
        claim_run(session, campaign, run, ("decompose", 0, 0), leases.worker_id())  # a retry claims it again
        again = find_run(session, campaign.id, "decompose", 0, 0)
    assert again is not None and again.attempts == 2 and again.dispatched_at == run.dispatched_at


def test_the_warm_up_compiles_the_hot_path_and_leaves_nothing_behind(
    sent: list[tuple[Any, ...]], caplog: pytest.LogCaptureFixture
) -> None:
    cid = make_campaign()
    with caplog.at_level(logging.INFO):
        warm.statements()
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]  # a clean start's log
    with session_scope() as session:  # nothing written, and the dispatcher's lock was released
        assert session.scalar(select(func.count()).select_from(StageRun)) == 0
        assert session.scalar(select(func.count()).select_from(WebhookDelivery)) == 0
        assert session.scalar(select(func.pg_try_advisory_xact_lock(dispatch.DISPATCH_LOCK))) is True
    with compiled_statements() as compiled:
        _batches(cid, 3)
        assert "WITH ENDPOINTS AS" not in compiled  # the stage's started event: compiled already
        compiled.clear()
        assert runner.execute("generate", cid, 0, 1, _generate) == "succeeded"
    assert compiled == ["INSERT INTO CANDIDATES"]  # the claim, the finish and the dispatcher: compiled already


def test_claim_and_finish_write_the_campaign_with_statements_the_warm_up_compiled(sent: list[tuple[Any, ...]]) -> None:
    cid = make_campaign()
    with session_scope() as session:  # the first stage's run, waiting (its claim marks it running)
        campaign = lock_campaign(session, uuid.UUID(cid))
        assert campaign is not None
        flow.fan_out(session, campaign, "decompose", 0)
        created = campaign.updated_at
    warm.statements()
    with compiled_statements() as compiled, statements() as seen:
        assert runner.execute("decompose", cid, 0, 0, lambda ctx: {}) == "succeeded"
    assert seen.count("UPDATE CAMPAIGNS SET") == 2  # the claim's and the finish's, one each
    assert "UPDATE CAMPAIGNS SET" not in compiled
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(cid))
        assert campaign is not None
        assert (campaign.status, campaign.current_stage, campaign.event_sequence) == ("running", "decompose", 2)
        assert {"started:decompose:0", "decompose:0"} <= set(campaign.loop["announced"])
        assert campaign.updated_at > created and campaign.error is None
