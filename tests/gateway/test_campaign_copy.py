"""A campaign's copy (headline, CTA, legal) through the gateway: stored in campaigns.copy and echoed in the request in
any script, validated (422 problem+json), screened by the input guardrails like the brief; a campaign without copy
echoes none (and its request hashes as before, for Idempotency-Key replays)."""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient

from services.gateway.campaigns.create import request_hash
from services.gateway.campaigns.schemas import CampaignCreate
from shared.db.models import Campaign
from shared.db.session import session_scope
from tests.factories import SentTasks, Tenant, assert_problem, make_brand, post_campaign

COPY = {"headline": "Frische Laufschuhe für jeden Tag", "cta": "تسوقوا الآن", "legal": "Solange der Vorrat reicht."}


def test_copy_is_stored_and_echoed_in_any_script(client: TestClient, acme: Tenant) -> None:
    created = post_campaign(client, acme, copy=COPY)
    assert created["request"]["copy"] == COPY
    shown = client.get(f"/v1/campaigns/{created['id']}", headers=acme.auth).json()
    assert shown["request"]["copy"] == COPY
    with session_scope() as session:
        assert session.get(Campaign, uuid.UUID(created["id"])).copy == COPY  # type: ignore[union-attr]

    plain = post_campaign(client, acme)
    assert "copy" not in plain["request"]
    with session_scope() as session:
        assert session.get(Campaign, uuid.UUID(plain["id"])).copy is None  # type: ignore[union-attr]


def test_copy_is_validated(client: TestClient, acme: Tenant) -> None:
    brand_id = make_brand(client, acme)
    for bad in ({"headline": "Hallo"}, {"headline": " ", "cta": "Go"}, {"headline": "x", "cta": "y" * 31}):
        response = client.post(
            "/v1/campaigns", json={"brand_id": brand_id, "brief": "a shoe", "copy": bad}, headers=acme.auth
        )
        assert_problem(response, 422, "validation_error")
    extra = {"headline": "Hallo", "cta": "Go", "colour": "red"}
    response = client.post(
        "/v1/campaigns", json={"brand_id": brand_id, "brief": "a shoe", "copy": extra}, headers=acme.auth
    )
    assert_problem(response, 422, "validation_error")


def test_copy_is_screened_like_the_brief(client: TestClient, acme: Tenant, sent: SentTasks) -> None:
    brand_id = make_brand(client, acme)
    body = {"brand_id": brand_id, "brief": "a shoe at dusk", "copy": {"headline": "A C0CA1NE party", "cta": "Go"}}
    refused = assert_problem(client.post("/v1/campaigns", json=body, headers=acme.auth), 422, "input_refused")
    assert (refused["field"], refused["category"]) == ("copy.headline", "illegal_drugs")
    assert not sent.named("onbrand.decompose")


def test_a_request_without_copy_hashes_as_before() -> None:
    body = {"brand_id": str(uuid.uuid4()), "brief": "a shoe"}
    dumped = CampaignCreate.model_validate(body).model_dump(mode="json")
    assert "copy_" not in dumped and "copy" not in dumped
    with_copy = CampaignCreate.model_validate({**body, "copy": {"headline": "Hallo", "cta": "Los"}})
    assert request_hash(with_copy) != request_hash(CampaignCreate.model_validate(body))


def test_the_demo_brand_gets_a_logo_and_the_demo_campaign_copy(client: TestClient, acme: Tenant) -> None:
    from shared.cli.demo.run import COPY as DEMO_COPY
    from shared.cli.demo.run import add_logo, start_campaign

    client.headers.update(acme.auth)
    brand_id = make_brand(client, acme)
    logo = add_logo(client, brand_id)
    assert (logo["width"], logo["height"]) == (240, 96)
    kit = client.get(f"/v1/brands/{brand_id}/kit").json()
    assert [entry["id"] for entry in kit["logos"]] == [logo["id"]]
    started = start_campaign(client, brand_id, copy=DEMO_COPY)
    assert started["request"]["copy"] == {**DEMO_COPY, "legal": None}
