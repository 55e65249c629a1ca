"""One scene set per product, over real processes (as tests/e2e/test_e2e.py): a campaign naming three
products (a mug and a bottle from the labelled QC set, and a blank photo no segmenter can cut a product
from) segments each, builds and checks scenes for each, and delivers top_k results per product, each
naming its product; the blank product fails only its own scenes, named with its reason, and the
campaign ends partial (not failed: the others got results).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.factories import api_client, verify, wait_terminal
from tests.system import System
from workers.evaluation import qc_set

pytestmark = pytest.mark.slow

TOP_K = 2


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def _upload(api: httpx.Client, brand_id: str, name: str, data: bytes) -> str:
    meta = {"kind": "product", "title": name, "brand_id": brand_id}
    response = api.post(
        "/v1/assets", files={"file": (f"{name}.png", data, "image/png")}, data={"metadata": json.dumps(meta)}
    )
    assert response.status_code in (200, 201), response.text
    return str(response.json()["id"])


@pytest.fixture(scope="module")
def finished(system: System) -> dict[str, Any]:
    api = api_client(system, system.tenant("multi")["api_key"])
    brand = api.post("/v1/brands", json={"name": "Two things", "palette": ["#2F4858", "#F6AE2D"]}).json()["id"]
    rng = np.random.default_rng(7)
    products = {
        name: _upload(api, brand, name, _png(qc_set.source_photo(name, "heldout", rng)[0]))
        for name in ("mug", "bottle")
    }
    # every pixel the border colour: "no product found", a failure of this product alone
    products["blank"] = _upload(api, brand, "blank", _png(Image.new("RGB", (320, 320), (200, 200, 200))))
    body = {
        "brand_id": brand,
        "brief": "the product on a clean studio backdrop",
        "product_asset_ids": list(products.values()),
        "sizes": [{"width": 512, "height": 512}],
        "top_k": TOP_K,
        "max_prompt_revisions": 0,
    }
    created = api.post("/v1/campaigns", json=body)
    assert created.status_code == 202, created.text
    campaign = wait_terminal(api, created.json()["id"], timeout=600)
    candidates = api.get(f"/v1/campaigns/{campaign['id']}/candidates?limit=100").json()["items"]
    verified = verify(system, campaign["id"])
    return {"campaign": campaign, "products": products, "candidates": candidates, "verified": verified}


def test_every_named_product_gets_its_own_results(finished: dict[str, Any]) -> None:
    campaign, products = finished["campaign"], finished["products"]
    per_product = Counter(r["product_asset_id"] for r in campaign["results"])
    assert per_product == {products["mug"]: TOP_K, products["bottle"]: TOP_K}, campaign["error"]
    assert [r["rank"] for r in campaign["results"]] == list(range(1, 2 * TOP_K + 1))
    for result in campaign["results"]:  # the product a result names is the one its pixels were derived from
        assert result["placement"]["product_asset_id"] == result["product_asset_id"]
        assert result["qc"]["policy"]["passed"] or result["needs_review"]
    shown = {c["placement"]["product_asset_id"]: c["integrity"]["source"]["asset_id"] for c in finished["candidates"]}
    assert shown == {products["mug"]: products["mug"], products["bottle"]: products["bottle"]}
    keys = {c["layout_key"][:3] for c in finished["candidates"]}  # several products: keys never collide
    assert keys == {"p1-", "p2-"}, keys
    # each result's layer re-derived from its own product's photo and mask, found bit for bit
    assert finished["verified"].endswith(f"verified {2 * TOP_K}/{2 * TOP_K}")


def test_a_product_that_cannot_be_segmented_fails_only_its_own_scenes(finished: dict[str, Any]) -> None:
    campaign, products = finished["campaign"], finished["products"]
    assert campaign["status"] == "partial", campaign["error"]
    [lost] = campaign["error"]["failed_products"]
    assert lost["product_asset_id"] == products["blank"] and lost["code"] == "segmentation_failed"
    assert "no product found" in lost["reason"] and products["blank"] in campaign["error"]["message"]
    segment = campaign["state"]["segment"]
    assert [p["product_asset_id"] for p in segment["products"]] == [products["mug"], products["bottle"]]
    assert campaign["state"]["retrieve"]["product_asset_ids"] == list(products.values())
