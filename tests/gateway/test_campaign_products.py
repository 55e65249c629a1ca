"""product_asset_ids: one scene set per product, and nothing the pipeline would ignore is accepted.

Every named product (up to 20 distinct) gets its own scenes and results; more ids are a problem+json 422
naming the field; the contract is in the OpenAPI description. Retrieve keeps every named product, in order.
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
from workers.pipeline.outputs import Entity, Match, SegmentOutput
from workers.pipeline.retrieve import choose_products


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


def test_several_products_are_accepted_in_order(client: TestClient, acme: Tenant) -> None:
    brand, first, second = make_brand(client, acme), _product(client, acme, 11), _product(client, acme, 12)
    body = {"brand_id": brand, "brief": "a mug on a table", "product_asset_ids": [first, second, first]}
    response = client.post("/v1/campaigns", json=body, headers=acme.auth)
    assert response.status_code == 202, response.text
    assert response.json()["request"]["product_asset_ids"] == [first, second]  # a repeated id counts once


def test_more_than_twenty_ids_are_refused_naming_the_field(client: TestClient, acme: Tenant) -> None:
    brand, before = make_brand(client, acme), _campaigns(acme)
    ids = [str(uuid.uuid4()) for _ in range(MAX_PRODUCTS + 1)]
    body = {"brand_id": brand, "brief": "a mug on a table", "product_asset_ids": ids}
    problem = assert_problem(client.post("/v1/campaigns", json=body, headers=acme.auth), 422, "validation_error")
    [error] = problem["errors"]
    assert error["loc"] == ["body", "product_asset_ids"] and "20" in error["msg"]
    assert _campaigns(acme) == before


def test_another_tenants_product_is_refused(client: TestClient, acme: Tenant, globex: Tenant) -> None:
    brand, mine, theirs = make_brand(client, acme), _product(client, acme, 14), _product(client, globex, 15)
    body = {"brand_id": brand, "brief": "a mug on a table", "product_asset_ids": [mine, theirs]}
    response = client.post("/v1/campaigns", json=body, headers=acme.auth)
    assert response.status_code in (404, 422), response.text
    detail = response.json()["detail"]
    assert theirs in detail and mine not in detail  # named exactly: the other tenant's product, not ours


def test_one_product_repeated_is_that_product(client: TestClient, acme: Tenant) -> None:
    brand, product = make_brand(client, acme), _product(client, acme, 13)
    body = {"brand_id": brand, "brief": "a mug on a table", "product_asset_ids": [product, product]}
    response = client.post("/v1/campaigns", json=body, headers=acme.auth)
    assert response.status_code == 202, response.text
    assert response.json()["request"]["product_asset_ids"] == [product]


def test_the_contract_is_in_the_openapi_description(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    field = schemas["CampaignCreate"]["properties"]["product_asset_ids"]
    assert "One scene set per product" in field["description"] and field["maxItems"] == MAX_PRODUCTS == 20
    assert "fails only its own scenes" in field["description"]
    assert "product_asset_id" in schemas["ResultRead"]["properties"]


def test_retrieve_keeps_every_named_product_in_order() -> None:
    named = [str(uuid.uuid4()), str(uuid.uuid4())]
    assert choose_products([], [named[1], named[0], named[1]], 0.3) == ([named[1], named[0]], None)
    match = Match(asset_id=named[1], title="mug", score=0.8, parts={})
    found = [Entity(text="mug", kind="product", boost=None, matches=[match])]
    assert choose_products(found, [], 0.3) == ([named[1]], 0.8)  # none named: one retrieved by the brief
    with pytest.raises(StageError) as none:
        choose_products([], [], 0.3)
    assert none.value.code == "no_product"


def test_segment_state_from_before_products_reads_as_one_product() -> None:
    old = {
        "adapter": "auto", "model": None, "method": "alpha", "quality": {}, "mask_key": "m", "antimask_key": "a",
        "cutout_key": "c", "cutout_size": [4, 4], "product_asset_id": "p",
    }  # fmt: skip
    seg = SegmentOutput.model_validate(old)
    assert [c.product_asset_id for c in seg.cuts()] == ["p"] and seg.cut(None).cutout_key == "c"
    with pytest.raises(StageError) as unknown:
        seg.cut("q")
    assert unknown.value.code == "product_missing"
