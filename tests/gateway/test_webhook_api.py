"""The webhook endpoint API in process (TestClient, real Postgres): v1a keys, PATCH and re-enabling,
secret rotation, test events, the delivery log (filled by real attempts against a local receiver)
and replays; tenant scoping throughout."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from standardwebhooks import Webhook

from shared.db.models import WebhookDelivery
from shared.db.session import session_scope
from tests.factories import Receiver, SentTasks, Tenant, assert_problem, post_campaign
from tests.system import clear_caches
from workers.jobs import webhooks as sender


@pytest.fixture
def loopback(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("ONBRAND_EGRESS_ALLOWLIST", "127.0.0.0/8")
    monkeypatch.setattr(sender, "send", lambda *a: None)
    clear_caches()
    yield
    monkeypatch.delenv("ONBRAND_EGRESS_ALLOWLIST")
    clear_caches()


def new_endpoint(client: TestClient, tenant: Tenant, url: str = "https://example.com/hook", **body: Any) -> Any:
    response = client.post("/v1/webhook-endpoints", json={"url": url, **body}, headers=tenant.auth)
    assert response.status_code == 201, response.text
    return response.json()


def test_v1a_endpoint_has_a_public_key_and_never_shows_secrets_again(client: TestClient, acme: Tenant) -> None:
    created = new_endpoint(client, acme, v1a=True)
    assert created["secret"].startswith("whsec_") and created["public_key"].startswith("whpk_")
    fetched = client.get(f"/v1/webhook-endpoints/{created['id']}", headers=acme.auth).json()
    assert fetched["public_key"] == created["public_key"] and "secret" not in fetched
    assert new_endpoint(client, acme)["public_key"] is None


def test_patch_disables_and_re_enables(client: TestClient, acme: Tenant, globex: Tenant) -> None:
    hook = new_endpoint(client, acme)
    path = f"/v1/webhook-endpoints/{hook['id']}"
    paused = client.patch(path, json={"enabled": False, "event_types": ["campaign.completed"]}, headers=acme.auth)
    assert paused.status_code == 200, paused.text
    body = paused.json()
    assert (body["enabled"], body["disabled_reason"], body["event_types"]) == (
        False,
        "disabled through the API",
        ["campaign.completed"],
    )
    resumed = client.patch(path, json={"enabled": True}, headers=acme.auth).json()
    assert resumed["enabled"] and resumed["disabled_at"] is None and resumed["disabled_reason"] is None
    bad = client.patch(path, json={"event_types": ["campaign.complete"]}, headers=acme.auth)
    assert [e["loc"] for e in assert_problem(bad, 422, "validation_error")["errors"]] == [["body", "event_types", 0]]
    private = client.patch(path, json={"url": "http://10.0.0.5/h"}, headers=acme.auth)
    assert [e["loc"] for e in assert_problem(private, 422, "validation_error")["errors"]] == [["body", "url"]]
    assert_problem(client.patch(path, json={"enabled": False}, headers=globex.auth), 404, "not_found")


def test_rotate_secret(client: TestClient, acme: Tenant, globex: Tenant) -> None:
    hook = new_endpoint(client, acme, v1a=True)
    path = f"/v1/webhook-endpoints/{hook['id']}/rotate-secret"
    rotated = client.post(path, headers=acme.auth)
    assert rotated.status_code == 200, rotated.text
    body = rotated.json()
    assert body["secret"] != hook["secret"] and body["public_key"] != hook["public_key"]
    expires = datetime.fromisoformat(body["previous_secret_expires_at"])
    assert 86000 < (expires - datetime.now(UTC)).total_seconds() <= 86400  # the default day of grace
    now_only = client.post(path, json={"grace_period_seconds": 0}, headers=acme.auth).json()
    assert datetime.fromisoformat(now_only["previous_secret_expires_at"]) <= datetime.now(UTC)
    too_long = client.post(path, json={"grace_period_seconds": 8 * 86400}, headers=acme.auth)
    assert assert_problem(too_long, 422, "validation_error")["errors"][0]["loc"] == ["body", "grace_period_seconds"]
    assert_problem(client.post(path, headers=globex.auth), 404, "not_found")


def test_test_event_is_queued_after_commit(client: TestClient, acme: Tenant, sent: SentTasks) -> None:
    hook = new_endpoint(client, acme, event_types=["campaign.completed"])
    response = client.post(f"/v1/webhook-endpoints/{hook['id']}/test", headers=acme.auth)
    assert response.status_code == 202, response.text
    delivery = response.json()
    assert delivery["event_type"] == "webhook.test" and delivery["status"] == "pending"
    assert sent.named("onbrand.send_webhook") == [(uuid.UUID(delivery["id"]),)]
    client.patch(f"/v1/webhook-endpoints/{hook['id']}", json={"enabled": False}, headers=acme.auth)
    assert_problem(client.post(f"/v1/webhook-endpoints/{hook['id']}/test", headers=acme.auth), 409, "conflict")


def test_delivery_log_and_replay(
    loopback: None, client: TestClient, acme: Tenant, globex: Tenant, sent: SentTasks
) -> None:
    receiver = Receiver([(500, {}), 200])
    hook = new_endpoint(client, acme, url=receiver.url)
    campaign = post_campaign(client, acme)
    base = f"/v1/webhook-endpoints/{hook['id']}/deliveries"
    [queued] = client.get(base, headers=acme.auth).json()["items"]
    assert (uuid.UUID(queued["id"]),) in sent.named("onbrand.send_webhook") and queued["attempt_log"] == []
    assert sender.deliver(queued["id"]) == "retry"
    [entry] = client.get(base, headers=acme.auth).json()["items"]
    assert (entry["event_type"], entry["campaign_id"]) == ("campaign.queued", campaign["id"])
    assert entry["status"] == "pending"
    [attempt] = entry["attempt_log"]
    assert attempt["status_code"] == 500 and attempt["error"] == "HTTP 500" and attempt["retry_in_seconds"] >= 0
    assert attempt["latency_ms"] > 0 and attempt["response_body"].startswith('{"received": true')
    replay = client.post(f"{base}/{entry['id']}/replay", headers=acme.auth)
    assert replay.status_code == 202, replay.text
    copy = replay.json()
    assert copy["event_id"] == entry["event_id"] and copy["replay_of"] == entry["id"]
    assert sender.deliver(copy["id"]) == "delivered"
    headers, body = receiver.requests[-1]
    assert Webhook(hook["secret"]).verify(body, headers)["type"] == "campaign.queued"
    delivered = client.get(base, params={"status": "delivered"}, headers=acme.auth).json()["items"]
    assert [d["id"] for d in delivered] == [copy["id"]] and delivered[0]["attempt_log"][0]["outcome"] == "delivered"
    assert client.get(f"{base}/{copy['id']}", headers=acme.auth).json()["delivered_at"] is not None
    assert_problem(client.get(base, headers=globex.auth), 404, "not_found")
    assert_problem(client.post(f"{base}/{entry['id']}/replay", headers=globex.auth), 404, "not_found")
    with session_scope() as session:
        rows = session.scalars(
            select(WebhookDelivery).where(
                WebhookDelivery.event_id == entry["event_id"], WebhookDelivery.endpoint_id == uuid.UUID(hook["id"])
            )
        ).all()
    assert len(rows) == 2  # the original and its replay, one event
