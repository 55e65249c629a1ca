"""Sending outbox rows against a real HTTP receiver: signing, retries, failure, refusal, sweeps."""
from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread
from typing import Any

import pytest
from sqlalchemy import select, update
from standardwebhooks import Webhook

import shared.queue
from shared import webhooks
from shared.config import get_settings
from shared.db.models import Campaign, WebhookDelivery, WebhookEndpoint
from shared.db.session import session_scope
from tests.test_runner import make_campaign
from workers.stages import pipeline
from workers.stages import webhooks as sender
from workers.stages.runner import now


class Receiver:
    """Answers with the queued status codes (then 204) and keeps what it got."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses, self.requests = statuses, []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                body = self.rfile.read(int(self.headers["content-length"])).decode()
                receiver.requests.append((dict(self.headers), body))
                self.send_response(receiver.statuses.pop(0) if receiver.statuses else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"


@pytest.fixture
def loopback_ok(fresh_db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[Any, ...]]]:
    monkeypatch.setenv("ONBRAND_EGRESS_ALLOWLIST", "127.0.0.0/8")
    get_settings.cache_clear()
    sent: list[tuple[Any, ...]] = []
    monkeypatch.setattr(sender, "send", lambda *a: sent.append(a))
    yield sent
    get_settings.cache_clear()


def queue_event(url: str) -> tuple[str, str, str]:
    """A campaign with an endpoint at url and one emitted event; returns (delivery id, secret, event id)."""
    cid = make_campaign()
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(cid))
        endpoint = WebhookEndpoint(tenant_id=campaign.tenant_id, url=url, secret=webhooks.new_secret(),
                                   event_types=["campaign.*"])
        session.add(endpoint)
        session.flush()
        [delivery_id] = webhooks.emit(session, campaign, "campaign.completed", {"status": "completed"})
        event_id = session.get(WebhookDelivery, delivery_id).event_id
    return str(delivery_id), endpoint.secret, event_id


def delivery(delivery_id: str) -> WebhookDelivery:
    with session_scope() as session:
        return session.get(WebhookDelivery, uuid.UUID(delivery_id))


def test_signed_delivery_verifies_with_standardwebhooks(loopback_ok: list[Any]) -> None:
    receiver = Receiver([])
    delivery_id, secret, event_id = queue_event(receiver.url)
    assert sender.deliver(delivery_id) == ("delivered", None)
    headers, body = receiver.requests[0]
    event = Webhook(secret).verify(body, {k.lower(): v for k, v in headers.items()})
    assert event["type"] == "campaign.completed" and headers["webhook-id"] == event_id
    assert delivery(delivery_id).status == "delivered"
    assert sender.deliver(delivery_id) == ("skipped", None)  # a redelivered task sends nothing twice
    assert len(receiver.requests) == 1


def test_failures_are_retried_with_the_same_event_id_then_given_up(loopback_ok: list[Any],
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONBRAND_WEBHOOK_MAX_ATTEMPTS", "3")
    get_settings.cache_clear()
    receiver = Receiver([500, 503, 500])
    delivery_id, _, event_id = queue_event(receiver.url)
    outcome, delay = sender.deliver(delivery_id)
    assert outcome == "retry" and delay is not None and delay >= 1
    assert sender.deliver(delivery_id)[0] == "retry"
    assert sender.deliver(delivery_id) == ("failed", None)
    row = delivery(delivery_id)
    assert row.attempts == 3 and row.last_status_code == 500 and row.status == "failed"
    assert {h["webhook-id"] for h, _ in receiver.requests} == {event_id}


def test_private_targets_are_refused_without_the_dev_setting(fresh_db: str) -> None:
    receiver = Receiver([])
    delivery_id, _, _ = queue_event(receiver.url)
    private = "the URL's host resolves to a private address"
    assert sender.target_refused(receiver.url, get_settings()) == private
    assert sender.target_refused("ftp://example.com/x", get_settings()) == "only http and https URLs are allowed"
    assert sender.deliver(delivery_id)[0] == "retry"
    assert receiver.requests == []  # nothing ever reached the loopback receiver
    assert delivery(delivery_id).last_error == f"url_private_address: {private}"


def test_sweeps_resend_what_a_lost_send_left_behind(loopback_ok: list[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    delivery_id, _, _ = queue_event("http://127.0.0.1:9/hook")
    queued = make_campaign()
    old = now() - timedelta(minutes=5)
    with session_scope() as session:
        session.execute(update(WebhookDelivery).values(next_attempt_at=old))
        session.execute(update(Campaign).where(Campaign.id == uuid.UUID(queued)).values(created_at=old))
    assert sender.sweep() == 1 and loopback_ok == [("onbrand.send_webhook", uuid.UUID(delivery_id))]
    sent: list[tuple[Any, ...]] = []
    monkeypatch.setattr(shared.queue, "send", lambda *a: sent.append(a))  # imported at call time
    assert pipeline.restart_stalled() == 1
    assert sent == [("onbrand.decompose", uuid.UUID(queued), 0, 0)]
    with session_scope() as session:
        assert session.scalars(select(Campaign.status).where(Campaign.id == uuid.UUID(queued))).one() == "queued"
