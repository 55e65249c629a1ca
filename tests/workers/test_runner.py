"""The durable stage runner against real Postgres: idempotency, fan-out barrier, cancel, failure."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select

from shared.db.models import Campaign, StageRun, WebhookDelivery
from shared.db.session import session_scope
from tests.factories import make_campaign
from workers.engine import runner
from workers.engine.context import StageContext, StageError
from workers.engine.runner import execute


@pytest.fixture
def sent(fresh_db: str, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(runner, "send", lambda *args: calls.append(args))
    return calls


def ok(ctx: StageContext) -> dict[str, Any]:
    ctx.state_patch[ctx.stage] = {"done": True}
    return {"ok": True}


def runs(campaign_id: str, stage: str) -> list[StageRun]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(StageRun).where(StageRun.campaign_id == uuid.UUID(campaign_id), StageRun.stage == stage)
            )
        )


def test_success_sends_next_stage_after_commit_and_rerun_is_noop(sent: list[tuple[Any, ...]]) -> None:
    cid = make_campaign()
    calls = {"n": 0}

    def counted(ctx: StageContext) -> dict[str, Any]:
        calls["n"] += 1
        return ok(ctx)

    assert execute("decompose", cid, 0, 0, counted) == "succeeded"
    assert ("onbrand.retrieve", cid, 0, 0) in sent
    assert runs(cid, "retrieve")[0].status == "pending"  # created before the send, in the same commit
    sent.clear()
    assert execute("decompose", cid, 0, 0, counted) == "skipped"  # redelivered message
    assert calls["n"] == 1
    assert ("onbrand.retrieve", cid, 0, 0) in sent  # re-sent in case the first send was lost


def test_fan_out_advances_only_after_the_last_item(sent: list[tuple[Any, ...]]) -> None:
    cid = make_campaign()

    def plan(ctx: StageContext) -> dict[str, Any]:
        ctx.batches = 3
        return {}

    execute("plan", cid, 0, 0, plan)
    assert [s for s in sent if s[0] == "onbrand.generate"] == [("onbrand.generate", cid, 0, i) for i in range(3)]
    sent.clear()
    execute("generate", cid, 0, 2, ok)
    execute("generate", cid, 0, 0, ok)
    assert not [s for s in sent if s[0] == "onbrand.qc"]
    execute("generate", cid, 0, 1, ok)
    assert [s for s in sent if s[0] == "onbrand.qc"] == [("onbrand.qc", cid, 0, i) for i in range(3)]


def test_cancelled_campaign_runs_nothing(sent: list[tuple[Any, ...]]) -> None:
    cid = make_campaign()
    with session_scope() as session:
        session.get(Campaign, uuid.UUID(cid)).status = "cancelled"
    assert execute("decompose", cid, 0, 0, ok) == "skipped"
    assert sent == [] and runs(cid, "decompose") == []


def test_stage_error_fails_campaign_and_writes_outbox(sent: list[tuple[Any, ...]]) -> None:
    cid = make_campaign(webhook_url="https://example.com/hook")

    def broken(ctx: StageContext) -> dict[str, Any]:
        raise StageError("no_product", "nothing to place")

    assert execute("retrieve", cid, 0, 0, broken) == "failed"
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(cid))
        deliveries = session.scalars(select(WebhookDelivery).where(WebhookDelivery.campaign_id == campaign.id)).all()
        assert campaign.status == "failed" and campaign.error["code"] == "no_product"
        deliveries = sorted(deliveries, key=lambda d: d.payload["sequence"])
        assert [d.event_type for d in deliveries] == ["campaign.stage.started", "campaign.failed"]
    assert sent == [("onbrand.send_webhook", str(d.id)) for d in deliveries]


def test_stage_completed_event_is_announced_once(sent: list[tuple[Any, ...]]) -> None:
    cid = make_campaign(webhook_url="https://example.com/hook")
    execute("decompose", cid, 0, 0, ok)
    execute("decompose", cid, 0, 0, ok)
    with session_scope() as session:
        events = session.execute(
            select(WebhookDelivery.event_type, WebhookDelivery.payload).where(
                WebhookDelivery.campaign_id == uuid.UUID(cid)
            )
        ).all()
    ordered = sorted((payload["sequence"], event_type) for event_type, payload in events)
    assert ordered == [(1, "campaign.stage.started"), (2, "campaign.stage.completed")]  # a rerun adds none


def _rank_round(cid: str, rnd: int) -> None:
    """A rank item of round rnd finished with no result written (too few candidates passed)."""
    assert execute("rank", cid, rnd, 0, ok) == "succeeded"


def test_too_few_results_retry_then_revise_then_deliver_each_decided_once(sent: list[tuple[Any, ...]]) -> None:
    cid = make_campaign()
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(cid))
        campaign.max_retry_attempts, campaign.max_prompt_revisions = 1, 1
    _rank_round(cid, 0)
    assert ("onbrand.plan", cid, 1, 0) in sent  # attempt 2 with the same caption: plan again
    sent.clear()
    assert execute("rank", cid, 0, 0, ok) == "skipped" and sent == [("onbrand.plan", cid, 1, 0)]  # same decision
    sent.clear()
    _rank_round(cid, 1)
    assert ("onbrand.revise", cid, 2, 0) in sent  # attempts spent: revise the caption
    sent.clear()
    _rank_round(cid, 2)
    assert ("onbrand.plan", cid, 3, 0) in sent  # a retry of the revised caption
    sent.clear()
    _rank_round(cid, 3)
    assert ("onbrand.deliver", cid, 3, 0) in sent  # both budgets spent: deliver what passed
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(cid))
        assert campaign.round == 3 and campaign.loop["revision"] == 1
