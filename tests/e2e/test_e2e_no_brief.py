"""A creative from the product alone, end to end over real processes (as tests/e2e/test_e2e.py): a campaign
with no brief names one product, the decompose stage infers the brief from its listing on the embedded
defaults (SmolLM2, validated, the rules composer when it answers badly) and the campaign runs on it; the
campaign resource shows what was inferred and from what.

One campaign at 512 px, top_k 1, on a brand without background photos (the studio backdrop).
"""

from __future__ import annotations

import io
import json
import time
from datetime import datetime
from typing import Any

import numpy as np
import pytest

from tests.factories import api_client, wait_terminal
from tests.system import System
from workers.evaluation import qc_set

pytestmark = pytest.mark.slow

LISTING = {
    "kind": "product",
    "title": "Ceramic mug",
    "description": "A stoneware mug for slow mornings. Looks great on a walnut desk.",
    "tags": ["mug", "kitchen"],
    "attributes": {"colour": "sage green"},
}


def _timings(campaign: dict[str, Any]) -> str:
    """Seconds per stage (first start to last finish), for the figures in the README."""
    spans = []
    for stage in campaign["stages"]:
        if stage["started_at"] and stage["finished_at"]:
            took = datetime.fromisoformat(stage["finished_at"]) - datetime.fromisoformat(stage["started_at"])
            spans.append(f"{stage['stage']} {took.total_seconds():.1f}")
    return ", ".join(spans)


def test_a_campaign_without_a_brief_runs_on_the_brief_inferred_from_its_product(system: System) -> None:
    api = api_client(system, system.tenant("no-brief")["api_key"])
    brand = api.post("/v1/brands", json={"name": "Everyday mugs", "palette": ["#2F4858", "#F6AE2D"]}).json()["id"]
    photo, _ = qc_set.source_photo("mug", "heldout", np.random.default_rng(7))
    buffer = io.BytesIO()
    photo.save(buffer, "PNG")
    files = {"file": ("mug.png", buffer.getvalue(), "image/png")}
    uploaded = api.post("/v1/assets", files=files, data={"metadata": json.dumps({**LISTING, "brand_id": brand})})
    assert uploaded.status_code in (200, 201), uploaded.text
    mug = uploaded.json()["id"]
    body = {"brand_id": brand, "product_asset_ids": [mug], "sizes": [{"width": 512, "height": 512}], "top_k": 1}
    started = time.monotonic()
    created = api.post("/v1/campaigns", json=body)
    assert created.status_code == 202, created.text
    assert created.json()["brief"] == "" and created.json()["brief_inferred"]["status"] == "pending"
    campaign = wait_terminal(api, created.json()["id"], timeout=240)
    print(
        f"\nno-brief campaign: {campaign['status']} in {time.monotonic() - started:.1f} s; stages:", _timings(campaign)
    )
    assert campaign["status"] in ("completed", "partial"), campaign.get("error")
    inferred = campaign["brief_inferred"]
    assert inferred["status"] == "inferred" and inferred["backend"] in ("local", "rules")
    assert inferred["backend"] == "local" or inferred["fallback_reason"]  # a fallback always says why
    assert "mug" in inferred["brief"].lower() and inferred["scene"]
    assert inferred["sources"]["products"][0]["asset_id"] == mug and inferred["sources"]["past_campaigns"] == []
    assert inferred["copy_suggestions"]["headline"] and inferred["copy_suggestions"]["shown_only"] is False
    decomposed = campaign["state"]["decompose"]
    assert decomposed["brief_source"] == "inferred" and decomposed["brief"] == inferred["brief"]
    # its parts are the inference's own, read back by the rules decomposer (no second model pass)
    assert decomposed["backend"] == "rules" and decomposed["backgrounds"] == [inferred["scene"]]
    assert campaign["results"] and campaign["results"][0]["product_asset_id"] == mug
