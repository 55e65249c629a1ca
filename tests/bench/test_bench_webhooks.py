"""Webhook delivery cost on the 2-core machines: one attempt end to end (lock the row, sign, POST through
the egress guard to a local receiver, log the attempt, commit), emitting a campaign event to several
endpoints, and the dispatcher claiming a backlog of due retries (one UPDATE ... SKIP LOCKED batch).

No target is set by the issue; the figures size the webhooks queue: a worker process sends about
1000 / (attempt ms) deliveries a second to a fast receiver.
"""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from shared import outbox, webhooks
from shared.config import get_settings
from shared.db.models import Campaign, WebhookDelivery
from shared.db.session import session_scope
from tests.factories import Receiver, add_endpoint, make_campaign
from workers.jobs import webhooks as sender

pytestmark = pytest.mark.bench


@pytest.fixture
def loopback(fresh_db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("ONBRAND_EGRESS_ALLOWLIST", "127.0.0.0/8")
    monkeypatch.setattr(sender, "send", lambda *a: None)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _emit(campaign_id: str) -> list[uuid.UUID]:
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(campaign_id))
        return webhooks.emit(
            session,
            campaign,
            "campaign.stage.completed",
            {"stage": "qc", "round": 0, "status": "running", "progress": 0.7},
        )


def _ms(samples: list[float]) -> str:
    return f"median {statistics.median(samples):.2f} ms, p90 {sorted(samples)[int(len(samples) * 0.9)]:.2f} ms"


def test_bench_webhook_delivery(loopback: None, capsys: Any) -> None:
    receiver = Receiver()
    cid = make_campaign()
    for _ in range(3):
        add_endpoint(cid, receiver.url)
    emit_ms, attempt_ms = [], []
    for _ in range(100):
        started = time.perf_counter()
        ids = _emit(cid)
        emit_ms.append((time.perf_counter() - started) * 1000)
        for delivery_id in ids:
            started = time.perf_counter()
            assert sender.deliver(str(delivery_id)) == "delivered"
            attempt_ms.append((time.perf_counter() - started) * 1000)
    with session_scope() as session:  # a backlog of 5000 due retries for the dispatcher
        session.add_all(
            webhooks.outbox_rows(
                webhooks.new_event_id(),
                "campaign.completed",
                {"x": 1},
                session.get(Campaign, uuid.UUID(cid)).tenant_id,
                uuid.UUID(cid),
                [(receiver.url, None)] * 5000,
            )
        )
        session.execute(update(WebhookDelivery).where(WebhookDelivery.status == "pending").values(leased_until=None))
    started = time.perf_counter()
    claimed = sum(sender.dispatch_due(at=outbox.utcnow() + timedelta(seconds=1)) for _ in range(10))
    dispatch_s = time.perf_counter() - started
    assert claimed == 5000 and len(receiver.requests) == 300
    with capsys.disabled():
        print(f"\nemit to 3 endpoints: {_ms(emit_ms)}")
        print(
            f"one delivery attempt (lock, sign, POST, log, commit): {_ms(attempt_ms)} "
            f"-> ~{1000 / statistics.median(attempt_ms):.0f} deliveries/s per worker process"
        )
        print(
            f"dispatcher: {claimed} due rows claimed and sent in {dispatch_s * 1000:.0f} ms "
            f"({dispatch_s * 1e6 / claimed:.0f} us per row)"
        )
