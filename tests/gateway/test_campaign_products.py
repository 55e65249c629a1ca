"""product_asset_ids: one product per campaign, and nothing the pipeline would ignore is accepted.

The pipeline builds every scene around one product (segment, plan, generate and QC work on one cutout), so
the API takes at most one distinct product id and says why in a problem+json 422 naming the field; a
campaign row from before that contract fails at retrieve instead of quietly using the first product.
"""

from __future__ import annotations

import io
import json
import uuid

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select

from services.gateway.campaigns.schemas import MAX_PRODUCTS
from shared.db import session as db_session
from shared.db.models import Campaign
from tests.factories import Tenant, assert_problem, make_brand
from workers.engine.context import StageError
from workers.pipeline.outputs import Entity, Match
from workers.pipeline.retrieve import choose_product


def _product(client: TestClient, tenant: Tenant, shade: int) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (48, 40), (shade, 90, 140)).save(buffer, "PNG")  # distinct bytes: no dedupe
    meta = {"kind": "product", "title": f"product {shade}"}
    response = client.post(
        "/v1/assets",
        files={"file": ("p.png", buffer.getvalue(), "image/png")},
        data={"metadata": json.dumps(meta)},
        headers=tenant.auth,
    )
    assert response.status_code in (200, 201), response.text
    return str(response.json()["id"])


def _campaigns(tenant: Tenant) -> int:
    with db_session.new_session() as session:
        return session.scalar(select(func.count()).select_from(Campaign).where(Campaign.tenant_id == tenant.id)) or 0


def test_two_products_are_refused_naming_the_field_and_the_contract(client: TestClient, acme: Tenant) -> None:
    brand, first, second = make_brand(client, acme), _product(client, acme, 11), _product(client, acme, 12)
    before = _campaigns(acme)
    body = {"brand_id": brand, "brief": "a mug on a table", "product_asset_ids": [first, second]}
    problem = assert_problem(client.post("/v1/campaigns", json=body, headers=acme.auth), 422, "validation_error")
    [error] = problem["errors"]
    assert error["loc"] == ["body", "product_asset_ids"]
    assert "exactly one product" in error["msg"] and "one campaign per product" in error["msg"]
    assert _campaigns(acme) == before  # nothing created, so nothing ignored later


def test_one_product_repeated_is_that_product(client: TestClient, acme: Tenant) -> None:
    brand, product = make_brand(client, acme), _product(client, acme, 13)
    body = {"brand_id": brand, "brief": "a mug on a table", "product_asset_ids": [product, product]}
    response = client.post("/v1/campaigns", json=body, headers=acme.auth)
    assert response.status_code == 202, response.text
    assert response.json()["request"]["product_asset_ids"] == [product]


def test_the_contract_is_in_the_openapi_description(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()["components"]["schemas"]["CampaignCreate"]
    field = schema["properties"]["product_asset_ids"]
    assert "at most one distinct product" in field["description"] and field["x-max-distinct-items"] == MAX_PRODUCTS


def test_retrieve_refuses_a_stored_campaign_with_several_products() -> None:
    named = [str(uuid.uuid4()), str(uuid.uuid4())]
    with pytest.raises(StageError) as refused:
        choose_product([], named, 0.3)
    assert refused.value.code == "too_many_products" and "2 products" in refused.value.message
    assert choose_product([], named[:1] * 2, 0.3) == (named[0], None)  # the same id twice is one product
    match = Match(asset_id=named[1], title="mug", score=0.8, parts={})
    found = [Entity(text="mug", kind="product", boost=None, matches=[match])]
    assert choose_product(found, [], 0.3) == (named[1], 0.8)  # none named: retrieved by the brief
