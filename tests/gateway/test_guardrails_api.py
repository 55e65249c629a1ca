"""Input guardrails through the gateway: refusals are 422 input_refused with the category and field and nothing is
written; what screened an accepted campaign or asset is in the API; a tenant's blocked terms apply on the next
request; a hosted text backend (a local OpenAI-compatible server) is called by the real app, and its outage is
a 503 moderation_unavailable (fail closed, the default)."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from shared.config import Settings
from shared.db.models import Asset, Brand, Campaign
from shared.db.session import session_scope
from tests.factories import FakeOpenAI, Reply, SentTasks, Tenant, assert_problem, bottle, make_brand


def _count(model: Any, tenant: Tenant) -> int:
    with session_scope() as session:
        return int(session.scalar(select(func.count()).select_from(model).where(model.tenant_id == tenant.id)) or 0)


def _upload(client: TestClient, tenant: Tenant, **meta: Any) -> Any:
    buffer = io.BytesIO()
    bottle(seed=len(json.dumps(meta))).save(buffer, "PNG")
    files = {"file": ("p.png", buffer.getvalue(), "image/png")}
    data = {"metadata": json.dumps({"kind": "product", "title": "Bottle", **meta})}
    return client.post("/v1/assets", files=files, data=data, headers=tenant.auth)


def test_a_refused_brief_is_a_422_naming_category_and_field_and_nothing_is_written(
    client: TestClient, acme: Tenant, sent: SentTasks
) -> None:
    brand_id = make_brand(client, acme)
    before = _count(Campaign, acme)
    response = client.post("/v1/campaigns", json={"brand_id": brand_id, "brief": "A C0CA1NE party"}, headers=acme.auth)
    body = assert_problem(response, 422, "input_refused")
    assert (body["category"], body["field"], body["source"], body["term"]) == (
        "illegal_drugs",
        "brief",
        "blocklist",
        "cocaine",
    )
    assert _count(Campaign, acme) == before and not sent.named("onbrand.decompose")


def test_an_accepted_campaign_says_which_screens_ran(client: TestClient, acme: Tenant) -> None:
    brand_id = make_brand(client, acme)
    created = client.post("/v1/campaigns", json={"brand_id": brand_id, "brief": "a shoe at dusk"}, headers=acme.auth)
    assert created.status_code == 202, created.text
    shown = client.get(f"/v1/campaigns/{created.json()['id']}", headers=acme.auth).json()
    assert shown["screening"] == created.json()["screening"]
    assert shown["screening"]["text"] == "blocklist" and shown["screening"]["images"].startswith("screened at upload")


def test_brand_name_and_guidelines_are_screened_on_create_and_update(client: TestClient, acme: Tenant) -> None:
    before = _count(Brand, acme)
    guideline = {"text": "show a sieg heil salute", "flexible": False, "weight": 1.0}
    refused = client.post("/v1/brands", json={"name": "Ok", "guidelines": [guideline]}, headers=acme.auth)
    body = assert_problem(refused, 422, "input_refused")
    assert (body["field"], body["category"]) == ("guidelines[0].text", "hate_extremism")
    assert _count(Brand, acme) == before
    brand_id = make_brand(client, acme)
    patched = client.patch(f"/v1/brands/{brand_id}", json={"name": "Behead-ing Co"}, headers=acme.auth)
    assert assert_problem(patched, 422, "input_refused")["field"] == "name"
    assert client.get(f"/v1/brands/{brand_id}", headers=acme.auth).json()["name"] == "Brand"


def test_asset_metadata_is_screened_and_an_accepted_asset_says_images_were_not(
    client: TestClient, acme: Tenant, sent: SentTasks
) -> None:
    before = _count(Asset, acme)
    refused = _upload(client, acme, tags=["summer", "h3r0in"])
    body = assert_problem(refused, 422, "input_refused")
    assert (body["field"], body["category"]) == ("tags[1]", "illegal_drugs")
    assert _count(Asset, acme) == before and not sent.named("onbrand.embed_assets")
    accepted = _upload(client, acme, description="a green bottle")
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["screening"] == {
        "text": "blocklist",
        "images": "not screened: no moderation backend configured",
    }


def test_tenant_blocked_terms_apply_to_that_tenant_only(client: TestClient, acme: Tenant, globex: Tenant) -> None:
    put = client.put(
        "/v1/guardrails/blocked-terms", json={"blocked_terms": ["Schnapps", "Schnapps"]}, headers=acme.auth
    )
    assert put.status_code == 200, put.text
    assert put.json()["blocked_terms"] == ["Schnapps"]  # a repeated term is stored once
    shown = client.get("/v1/guardrails", headers=acme.auth).json()
    assert shown["text_backend"] == "none" and shown["global_terms"] > 20
    brief = {"brief": "A cold SCHNÄPPS on the terrace"}
    refused = client.post("/v1/campaigns", json={"brand_id": make_brand(client, acme), **brief}, headers=acme.auth)
    assert assert_problem(refused, 422, "input_refused")["category"] == "tenant_blocked_term"
    other = client.post("/v1/campaigns", json={"brand_id": make_brand(client, globex), **brief}, headers=globex.auth)
    assert other.status_code == 202, other.text
    assert client.get("/v1/guardrails", headers=globex.auth).json()["blocked_terms"] == []
    client.put("/v1/guardrails/blocked-terms", json={"blocked_terms": []}, headers=acme.auth)


@pytest.fixture
def moderation() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    threading.Thread(target=fake.httpd.serve_forever, daemon=True).start()
    yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()


def test_a_hosted_text_backend_refuses_and_its_outage_fails_closed(
    env: dict[str, str], acme: Tenant, sent: SentTasks, moderation: FakeOpenAI
) -> None:
    from services.gateway.app import create_app

    settings = Settings(
        guardrails_text_backend="openai",
        moderation_openai_url=moderation.base_url,
        egress_allowlist=["127.0.0.0/8"],
        guardrails_timeout_seconds=1.0,
    )
    flagged = {"results": [{"flagged": True, "categories": {"hate": True, "violence": False}}]}
    clean = Reply(body={"results": [{"flagged": False, "categories": {}}]})
    moderation.script(clean, Reply(body=flagged), clean)  # the brand's name, the first brief, the second
    with TestClient(create_app(settings)) as hosted:
        brand_id = make_brand(hosted, acme)
        refused = hosted.post("/v1/campaigns", json={"brand_id": brand_id, "brief": "a shoe"}, headers=acme.auth)
        assert moderation.requests[-1].body["input"] == ["a shoe"]
        assert assert_problem(refused, 422, "input_refused")["source"] == "openai-moderation"
        accepted = hosted.post("/v1/campaigns", json={"brand_id": brand_id, "brief": "a shoe"}, headers=acme.auth)
        assert accepted.json()["screening"]["text"] == "blocklist + openai-moderation"
        moderation.script(Reply(status=503, body={"error": "down"}))
        before = _count(Campaign, acme)
        down = hosted.post("/v1/campaigns", json={"brand_id": brand_id, "brief": "a shoe"}, headers=acme.auth)
        assert assert_problem(down, 503, "moderation_unavailable")["backend"] == "openai-moderation"
        assert down.headers["retry-after"] == "10" and _count(Campaign, acme) == before
