"""Deletion over real processes: the gateway's DELETE commits, the cpu worker's `onbrand.delete_objects` (sent
after the commit, routed to the webhooks queue) empties the resource's folder in the system's object store."""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
from PIL import Image

from tests.factories import assert_problem
from tests.system import System


def _objects(system: System, prefix: str) -> list[Path]:
    root = Path(system.env.get("ONBRAND_STORAGE_DIR") or system.home / "objects")
    folder = root / prefix
    return sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []


def _pending(system: System, resource_id: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(system.env["ONBRAND_DATABASE_URL"], autocommit=True) as conn:
        query = "SELECT passes_left, attempts FROM storage_deletions WHERE resource_id = %s"
        return conn.execute(query, (resource_id,)).fetchall()


def _wait(predicate: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} after {timeout:.0f} s"
        time.sleep(0.2)


def test_a_deleted_asset_and_campaign_leave_no_objects(system: System) -> None:
    tenant = system.tenant("deletion")
    api = httpx.Client(base_url=system.url, headers={"Authorization": f"Bearer {tenant['api_key']}"}, timeout=30)
    brand = api.post("/v1/brands", json={"name": "Gone", "palette": ["#112233"]}).json()["id"]
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 48, 3), dtype=np.uint8)).save(buf, "PNG")
    meta = {"kind": "product", "title": "doomed", "brand_id": brand}
    files = {"file": ("p.png", buf.getvalue(), "image/png")}
    asset = api.post("/v1/assets", files=files, data={"metadata": json.dumps(meta)}).json()
    asset_dir = f"tenants/{tenant['tenant_id']}/assets/{asset['id']}"
    assert len(_objects(system, asset_dir)) == 2  # original and thumbnail

    created = api.post(
        "/v1/campaigns", json={"brand_id": brand, "brief": "the bottle", "product_asset_ids": [asset["id"]]}
    )
    assert created.status_code == 202, created.text
    campaign = created.json()["id"]
    assert_problem(api.delete(f"/v1/assets/{asset['id']}"), 409, "asset_in_use")
    assert_problem(api.delete(f"/v1/campaigns/{campaign}"), 409, "campaign_running")
    assert api.post(f"/v1/campaigns/{campaign}/cancel").status_code == 200
    assert api.delete(f"/v1/campaigns/{campaign}").status_code == 204
    assert api.delete(f"/v1/assets/{asset['id']}").status_code == 204

    _wait(lambda: not _objects(system, asset_dir) and not _pending(system, asset["id"]), "asset objects left")
    campaign_dir = f"tenants/{tenant['tenant_id']}/campaigns/{campaign}"
    # The campaign's first pass ran; its row waits for the second (a stage that was computing may still write).
    _wait(lambda: _pending(system, campaign) == [(1, 0)], "campaign's first pass not run")
    assert _objects(system, campaign_dir) == []
    assert api.get(f"/v1/assets/{asset['id']}").status_code == 404
    assert api.get(f"/v1/campaigns/{campaign}").status_code == 404
