"""`brief` is optional: a campaign without one names its products (the brief is inferred from them by the
decompose stage) and shows the inferred brief; a reviewer replaces it through the feedback's `brief`."""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime

from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select

from shared.cli.campaigns import campaign_body
from shared.db import session as db_session
from shared.db.models import Campaign, CampaignStatus, Candidate, Feedback, Result, ReviewState
from tests.factories import SentTasks, Tenant, assert_problem, make_brand


def _product(client: TestClient, tenant: Tenant, brand: str) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), (20, 90, 140)).save(buffer, "PNG")
    meta = {"kind": "product", "title": "Desk lamp", "attributes": {"colour": "black"}, "brand_id": brand}
    files = {"file": ("p.png", buffer.getvalue(), "image/png")}
    response = client.post("/v1/assets", files=files, data={"metadata": json.dumps(meta)}, headers=tenant.auth)
    assert response.status_code in (200, 201), response.text
    return str(response.json()["id"])


def _count(tenant: Tenant) -> int:
    with db_session.new_session() as session:
        return session.scalar(select(func.count()).select_from(Campaign).where(Campaign.tenant_id == tenant.id)) or 0


def test_a_campaign_without_a_brief_names_a_product_and_shows_the_inference_pending(
    client: TestClient, acme: Tenant, sent: SentTasks
) -> None:
    brand = make_brand(client, acme)
    body = {"brand_id": brand, "product_asset_ids": [_product(client, acme, brand)]}
    created = client.post("/v1/campaigns", json=body, headers=acme.auth)
    assert created.status_code == 202, created.text
    view = created.json()
    assert view["brief"] == "" and view["brief_inferred"] == {
        "status": "pending",
        "brief": None,
        "products": [],
        "scene": None,
        "theme": None,
        "mood": None,
        "copy_suggestions": None,
        "sources": {},
        "backend": None,
        "model": None,
        "fallback_reason": None,
        "prompt_version": None,
    }
    assert sent.named("onbrand.decompose") == [(uuid.UUID(view["id"]),)]
    with db_session.new_session() as session:
        stored = session.get(Campaign, uuid.UUID(view["id"]))
        assert stored is not None and stored.brief == "" and stored.state == {"brief_inferred": {"status": "pending"}}
    # a campaign with a brief is as before: nothing inferred
    with_brief = client.post("/v1/campaigns", json={**body, "brief": "a lamp on a desk"}, headers=acme.auth).json()
    assert with_brief["brief"] == "a lamp on a desk" and with_brief["brief_inferred"] is None


def test_without_a_brief_or_a_product_nothing_is_created(client: TestClient, acme: Tenant, sent: SentTasks) -> None:
    brand, before = make_brand(client, acme), _count(acme)
    problem = assert_problem(
        client.post("/v1/campaigns", json={"brand_id": brand}, headers=acme.auth), 422, "brief_or_product_required"
    )
    assert problem["field"] == "brief" and "product_asset_ids" in problem["detail"]
    blank = client.post("/v1/campaigns", json={"brand_id": brand, "brief": "  "}, headers=acme.auth)
    assert assert_problem(blank, 422, "validation_error")["errors"][0]["loc"] == ["body", "brief"]  # "" is no brief
    assert _count(acme) == before and sent.named("onbrand.decompose") == []


def test_feedback_can_replace_the_brief_screened_like_a_campaigns(
    client: TestClient, acme: Tenant, globex: Tenant, sent: SentTasks
) -> None:
    brand = make_brand(client, acme)
    body = {"brand_id": brand, "product_asset_ids": [_product(client, acme, brand)]}
    cid = uuid.UUID(client.post("/v1/campaigns", json=body, headers=acme.auth).json()["id"])
    with db_session.session_scope() as session:
        campaign = session.get(Campaign, cid)
        campaign.status, campaign.completed_at = CampaignStatus.COMPLETED, datetime.now(UTC)
        campaign.review_state = ReviewState.PENDING
        cand = Candidate(id=uuid.uuid4(), tenant_id=acme.id, campaign_id=cid, layout_key="c1", rank=1)
        session.add(cand)
        session.flush()
        session.add(Result(id=uuid.uuid4(), tenant_id=acme.id, campaign_id=cid, candidate_id=cand.id, rank=1))
    url = f"/v1/campaigns/{cid}/feedback"
    put = client.put("/v1/guardrails/blocked-terms", json={"blocked_terms": ["Schnapps"]}, headers=acme.auth)
    assert put.status_code == 200, put.text
    refused = client.post(url, json={"brief": "the lamp next to a Schnapps bottle"}, headers=acme.auth)
    assert assert_problem(refused, 422, "input_refused")["field"] == "brief"
    client.put("/v1/guardrails/blocked-terms", json={"blocked_terms": []}, headers=acme.auth)
    created = client.post(url, json={"brief": "  the lamp on an oak sideboard at dusk "}, headers=acme.auth)
    assert created.status_code == 202, created.text
    feedback = created.json()  # the structured part is known at once; the router adds what the text asks
    assert feedback["status"] == "routing" and feedback["change"] == {"brief": "the lamp on an oak sideboard at dusk"}
    assert sent.named("onbrand.route_feedback") == [(uuid.UUID(feedback["id"]),)]
    with db_session.new_session() as session:
        row = session.get(Feedback, uuid.UUID(feedback["id"]))
        assert row is not None and row.text == "" and row.change == feedback["change"]


def test_the_cli_leaves_the_brief_out_when_none_is_given() -> None:
    brand, product = str(uuid.uuid4()), str(uuid.uuid4())
    assert campaign_body(brand, None, [product], [], None) == {"brand_id": brand, "product_asset_ids": [product]}
    assert campaign_body(brand, "a lamp", [], [], None) == {"brand_id": brand, "brief": "a lamp"}
