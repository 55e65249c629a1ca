"""POST /v1/campaigns in one statement (services/gateway/campaigns/insert.py) with the tenant's blocked terms and
webhook endpoints cached per process (tenant_config.py): a change applies from the next request on, an endpoint
disabled or deleted behind the cache's back gets no outbox row, an unknown brand is still the first error."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import event, func, select, update

from shared import webhooks
from shared.db import aio
from shared.db import session as db_session
from shared.db.models import Campaign, ImageUsage, OutboxStatus, WebhookDelivery, WebhookEndpoint
from shared.db.models import Tenant as TenantRow
from tests.factories import SentTasks, Tenant, assert_problem, make_brand, new_tenant
from tests.system import clear_caches

BRIEF = "A cold drink on the terrace"


def _create(client: TestClient, tenant: Tenant, brand_id: str, brief: str = BRIEF, **body: Any) -> Any:
    return client.post("/v1/campaigns", json={"brand_id": brand_id, "brief": brief, **body}, headers=tenant.auth)


def _receivers(campaign_id: str) -> set[uuid.UUID | None]:
    """The endpoint ids of the campaign's outbox rows (None: its own webhook_url)."""
    with db_session.new_session() as session:
        rows = session.scalars(select(WebhookDelivery).where(WebhookDelivery.campaign_id == uuid.UUID(campaign_id)))
        return {r.endpoint_id for r in rows}


@pytest.fixture
def statements(env: dict[str, str]) -> Iterator[list[str]]:
    """The SQL the gateway's engine runs while the test looks."""
    seen: list[str] = []

    def record(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        seen.append(sql)

    engine = db_session.get_engine()
    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def test_a_creation_is_one_statement(
    client: TestClient, acme: Tenant, statements: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once the tenant's settings are cached: one write (aio.write: the CALL that writes and commits, migration 0019),
    no read, nothing through the ORM session."""
    brand_id = make_brand(client, acme)
    assert _create(client, acme, brand_id).status_code == 202  # the tenant's settings now cached
    writes: list[str] = []
    reads: list[Any] = []
    write, fetch_all = aio.write, aio.fetch_all

    async def spy_write(settings: Any, statement: aio.Call, **kwargs: Any) -> list[Any]:
        writes.append(statement.sql)
        return await write(settings, statement, **kwargs)

    async def spy_fetch_all(settings: Any, queries: Any) -> list[list[Any]]:
        reads.extend(queries)
        return await fetch_all(settings, queries)

    monkeypatch.setattr(aio, "write", spy_write)
    monkeypatch.setattr(aio, "fetch_all", spy_fetch_all)
    statements.clear()
    assert _create(client, acme, brand_id).status_code == 202
    assert [s for s in statements if "api_keys" not in s] == []  # a key's last use is recorded once a minute
    assert reads == [] and len(writes) == 1 and writes[0].startswith("CALL onbrand_create_campaign("), writes


def test_tenant_settings_apply_from_the_next_creation(client: TestClient, acme: Tenant, sent: SentTasks) -> None:
    brand_id = make_brand(client, acme)
    assert _create(client, acme, brand_id).status_code == 202  # cached: no terms, no endpoints
    put = client.put("/v1/guardrails/blocked-terms", json={"blocked_terms": ["drink"]}, headers=acme.auth)
    assert put.status_code == 200
    assert assert_problem(_create(client, acme, brand_id), 422, "input_refused")["category"] == "tenant_blocked_term"
    client.put("/v1/guardrails/blocked-terms", json={"blocked_terms": []}, headers=acme.auth)

    hook = client.post("/v1/webhook-endpoints", json={"url": "https://example.com/h"}, headers=acme.auth).json()
    endpoint_id = uuid.UUID(hook["id"])
    created = _create(client, acme, brand_id, webhook_url="https://example.com/own").json()
    assert _receivers(created["id"]) == {None, endpoint_id}
    assert len(sent.named("onbrand.send_webhook")) == 2 and sent.named("onbrand.decompose")[-1][0] == uuid.UUID(
        created["id"]
    )

    patch = {"event_types": ["webhook_endpoint.disabled"]}  # no longer subscribed to campaign.queued
    assert client.patch(f"/v1/webhook-endpoints/{hook['id']}", json=patch, headers=acme.auth).status_code == 200
    assert _receivers(_create(client, acme, brand_id).json()["id"]) == set()
    patch = {"event_types": ["campaign.*"], "url": "https://example.com/moved"}
    assert client.patch(f"/v1/webhook-endpoints/{hook['id']}", json=patch, headers=acme.auth).status_code == 200
    moved = _create(client, acme, brand_id).json()["id"]
    with db_session.new_session() as session:
        url = session.scalar(select(WebhookDelivery.url).where(WebhookDelivery.campaign_id == uuid.UUID(moved)))
    assert url == "https://example.com/moved"

    client.delete(f"/v1/webhook-endpoints/{hook['id']}", headers=acme.auth)
    assert _receivers(_create(client, acme, brand_id).json()["id"]) == set()


def test_an_endpoint_disabled_behind_the_cache_gets_no_row(client: TestClient, acme: Tenant, sent: SentTasks) -> None:
    """A worker disables a failing endpoint without telling the gateways: the insert re-reads it."""
    brand_id = make_brand(client, acme)
    hook = client.post("/v1/webhook-endpoints", json={"url": "https://example.com/h"}, headers=acme.auth).json()
    first = _create(client, acme, brand_id).json()["id"]  # caches the endpoint
    assert _receivers(first) == {uuid.UUID(hook["id"])}
    with db_session.session_scope() as session:
        endpoint = session.get(WebhookEndpoint, uuid.UUID(hook["id"]))
        assert endpoint is not None
        webhooks.endpoint_disabled(session, endpoint, "failing", datetime.now(UTC))
    sent.clear()
    second = _create(client, acme, brand_id).json()["id"]
    assert _receivers(second) == set() and sent.named("onbrand.send_webhook") == []
    client.delete(f"/v1/webhook-endpoints/{hook['id']}", headers=acme.auth)


def test_an_unknown_brand_is_the_first_error(client: TestClient, acme: Tenant, globex: Tenant) -> None:
    client.put("/v1/guardrails/blocked-terms", json={"blocked_terms": ["drink"]}, headers=acme.auth)
    try:
        for brand_id in (str(uuid.uuid4()), make_brand(client, globex)):
            for body in ({}, {"brief": None}):  # a refused brief; no brief and no product
                refused = assert_problem(_create(client, acme, brand_id, **body), 422, "unknown_reference")
                assert refused["field"] == "brand_id"
        refused = assert_problem(_create(client, acme, make_brand(client, acme)), 422, "input_refused")
    finally:
        client.put("/v1/guardrails/blocked-terms", json={"blocked_terms": []}, headers=acme.auth)
    with db_session.new_session() as session:
        assert session.scalar(select(Campaign.id).where(Campaign.brand_id == uuid.UUID(brand_id))) is None


@pytest.fixture
def limited(env: dict[str, str], sent: SentTasks, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """A gateway with the quotas on (the suite's other gateways run without them)."""
    from services.gateway.app import create_app

    monkeypatch.setenv("ONBRAND_LIMITS_ENABLED", "true")
    clear_caches()
    with TestClient(create_app()) as client:
        yield client
    monkeypatch.delenv("ONBRAND_LIMITS_ENABLED")
    clear_caches()


def _tenant_rows(tenant: Tenant) -> tuple[int, int, int]:
    """The tenant's campaigns, outbox rows and quota ledger rows."""
    with db_session.new_session() as session:
        counts = [
            session.scalar(select(func.count()).select_from(m).where(m.tenant_id == tenant.id)) or 0
            for m in (Campaign, WebhookDelivery, ImageUsage)
        ]
    return counts[0], counts[1], counts[2]


@pytest.mark.parametrize(("images_per_day", "written"), [(1, (0, 0, 0)), (1000, (1, 2, 1))])
def test_the_quota_admits_or_refuses_all_of_it(
    limited: TestClient, sent: SentTasks, images_per_day: int, written: tuple[int, int, int]
) -> None:
    """Refused at commit (402): no campaign, outbox row or ledger row, no task sent. Admitted: all of them, and
    the campaign's task and its webhooks sent once committed (the sent fixture checks they were)."""
    tenant = new_tenant(f"quota-{uuid.uuid4().hex[:6]}")
    with db_session.session_scope() as session:
        limits = {"images_per_day": images_per_day}
        session.execute(update(TenantRow).where(TenantRow.id == tenant.id).values(limits=limits))
    brand_id = make_brand(limited, tenant)
    limited.post("/v1/webhook-endpoints", json={"url": "https://example.com/h"}, headers=tenant.auth)
    sent.clear()
    response = _create(limited, tenant, brand_id, webhook_url="https://example.com/own")
    if written == (0, 0, 0):
        assert assert_problem(response, 402, "quota_exceeded")["period"] == "day"
        assert sent == []
    else:
        assert response.status_code == 202, response.text
        assert len(sent.named("onbrand.decompose")) == 1 and len(sent.named("onbrand.send_webhook")) == 2
    assert _tenant_rows(tenant) == written


def test_the_created_view_is_the_status_poll(client: TestClient, acme: Tenant, sent: SentTasks) -> None:
    """The creation answers with a view built from what it wrote (no read back): the same JSON the status poll
    reads from the database right after, for a request with every part set, and one with the defaults only."""
    brand_id = make_brand(client, acme)
    full = {
        "brand_id": brand_id,
        "brief": BRIEF,
        "product_asset_ids": [_product(client, acme)],
        "sizes": [{"width": 1080, "height": 1350}, {"width": 1024, "height": 1024}],
        "safe_zones": [{"x": 0, "y": 0.8, "width": 1, "height": 0.2, "label": "Buy now"}],
        "copy": {"headline": "Cold and fresh", "cta": "Order"},
        "top_k": 2,
        "qc_policy": "weighted",
        "max_retry_attempts": 2,
        "priority": "interactive",
        "webhook_url": "https://hooks.example.com/onbrand",
        "push_urls": [{"image": "https://dam.example.com/1.png", "sidecar": "https://dam.example.com/1.json"}],
    }
    for body in (full, {"brand_id": brand_id, "product_asset_ids": full["product_asset_ids"]}):
        created = client.post("/v1/campaigns", json=body, headers=acme.auth)
        assert created.status_code == 202, created.text
        answered = created.json()
        assert answered.pop("status_url") == answered["links"]["self"] == created.headers["Location"]
        assert (answered.pop("webhook_secret") is None) == ("webhook_url" not in body)
        polled = client.get(f"/v1/campaigns/{answered['id']}", headers=acme.auth)
        assert polled.status_code == 200 and polled.json() == answered
        _assert_rows(uuid.UUID(answered["id"]), body, sent)


def _product(client: TestClient, tenant: Tenant) -> str:
    image = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 40, 30)).save(image, "PNG")
    files = {"file": ("product.png", image.getvalue(), "image/png")}
    meta = json.dumps({"kind": "product", "title": "Cold drink"})
    response = client.post("/v1/assets", files=files, data={"metadata": meta}, headers=tenant.auth)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _assert_rows(campaign_id: uuid.UUID, body: dict[str, Any], sent: SentTasks) -> None:
    """What the response does not show: absent parts stored as SQL NULL (not JSON null), the ledger row, the outbox
    row of the campaign's own webhook_url, pending and sent."""
    with db_session.new_session() as session:
        campaign = session.get(Campaign, campaign_id)
        assert campaign is not None and campaign.event_sequence == 1 and campaign.loop == {}
        nulls = session.execute(
            select(Campaign.copy.is_(None), Campaign.push_urls.is_(None), Campaign.webhook_url.is_(None)).where(
                Campaign.id == campaign_id
            )
        ).one()
        assert tuple(nulls) == tuple(name not in body for name in ("copy", "push_urls", "webhook_url"))
        usage = session.scalars(select(ImageUsage).where(ImageUsage.campaign_id == campaign_id)).one()
        assert usage.reserved > 0 and usage.tenant_id == campaign.tenant_id
        deliveries = session.scalars(select(WebhookDelivery).where(WebhookDelivery.campaign_id == campaign_id)).all()
    if "webhook_url" in body:
        assert [(d.url, d.status, d.event_type) for d in deliveries] == [
            (body["webhook_url"], OutboxStatus.PENDING, "campaign.queued")
        ]
        assert (deliveries[0].id,) in sent.named("onbrand.send_webhook")
    else:
        assert deliveries == []
    assert (campaign_id,) in sent.named("onbrand.decompose")
