"""Wall time of the demo campaign split by stage, and Celery enqueue→start overhead."""

from __future__ import annotations

import statistics
import time
from datetime import datetime
from typing import Any

import httpx
import psycopg
import pytest

from shared.cli.demo.library import build_library
from shared.cli.demo.run import upload_library
from tests.system import System

BRIEF = "the running shoe on an urban street at sunset"


def _seconds(a: str | None, b: str | None) -> float | None:
    if not a or not b:
        return None
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def _setup(system: System, tmp: Any) -> tuple[httpx.Client, str]:
    tenant = system.tenant("bench")
    api = httpx.Client(base_url=system.url, headers={"Authorization": f"Bearer {tenant['api_key']}"}, timeout=30)
    brand = api.post("/v1/brands", json={"name": "Stride", "palette": ["#E4572E", "#17BEBB"]}).json()
    upload_library(api, brand["id"], build_library(tmp))
    return api, brand["id"]


def _run_campaign(api: httpx.Client, brand_id: str) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    campaign = api.post("/v1/campaigns", json={"brand_id": brand_id, "brief": BRIEF}).json()
    while (body := api.get(f"/v1/campaigns/{campaign['id']}").json())["status"] in ("queued", "running"):
        time.sleep(0.2)
    return body, time.perf_counter() - started


def _report(label: str, body: dict[str, Any], wall: float) -> None:
    print(f"\nBENCH demo campaign ({label}): {wall:.1f} s wall, status {body['status']}")
    for stage in body["stages"]:
        took = _seconds(stage.get("started_at"), stage.get("finished_at"))
        print(
            f"BENCH   stage {stage['stage']:<10} items {stage['total']:>2}  "
            f"{'-' if took is None else f'{took:6.2f} s'} (first start → last finish)"
        )


@pytest.mark.bench
def test_demo_campaign_by_stage(system: System, tmp_path: Any) -> None:
    api, brand_id = _setup(system, tmp_path)
    overhead: list[float] = []
    # The first campaign may wait for the workers' model warm-up; the second shows steady state.
    for label in ("first after worker start", "warm workers"):
        body, wall = _run_campaign(api, brand_id)
        assert body["status"] == "completed", body.get("error")
        _report(label, body, wall)
        overhead += _enqueue_to_start(system, body["id"])
    print(
        f"BENCH celery enqueue→start (single-item stages, n={len(overhead)}): median "
        f"{statistics.median(overhead) * 1000:.1f} ms, max {max(overhead) * 1000:.1f} ms"
    )


def _enqueue_to_start(system: System, campaign_id: str) -> list[float]:
    """queued_at is written in the transaction that sends the task; started_at when a worker claims it."""
    url = system.env["ONBRAND_DATABASE_URL"]
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT extract(epoch FROM started_at - queued_at) FROM stage_runs WHERE campaign_id = %s "
            "AND stage NOT IN ('decompose', 'generate', 'qc') AND started_at IS NOT NULL",
            (campaign_id,),
        ).fetchall()
    return [float(r[0]) for r in rows]
