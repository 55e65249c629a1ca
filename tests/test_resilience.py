"""Worker processes killed mid-task: the campaign still completes (acks_late + reject_on_worker_lost,
state in Postgres, idempotent stages with deterministic keys)."""
from __future__ import annotations

import signal
import time
from typing import Any

import httpx
import psutil
import psycopg
import pytest

from shared.demo import upload_library
from shared.demo_library import build_library
from tests.conftest import System
from tests.test_e2e import wait_terminal

pytestmark = pytest.mark.slow
SIZES = [{"width": 1024, "height": 1024}, {"width": 1080, "height": 1350}, {"width": 1920, "height": 1080}]


@pytest.fixture(scope="module")
def api(system: System, tmp_path_factory: pytest.TempPathFactory) -> Any:
    tenant = system.tenant("resilience")
    client = httpx.Client(base_url=system.url, headers={"Authorization": f"Bearer {tenant['api_key']}"}, timeout=30)
    brand = client.post("/v1/brands", json={"name": "Stride", "palette": ["#E4572E"]}).json()
    upload_library(client, brand["id"], build_library(tmp_path_factory.mktemp("lib")))
    client.brand_id = brand["id"]  # type: ignore[attr-defined]
    return client


def running_generate(system: System, campaign_id: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(system.env["ONBRAND_DATABASE_URL"], autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute("SELECT count(*) FROM stage_runs WHERE campaign_id = %s AND stage = 'generate' "
                               "AND status = 'running'", (campaign_id,)).fetchone()
            if row and row[0]:
                return
            time.sleep(0.05)
    raise TimeoutError("generate never started")


def generate_attempts(system: System, campaign_id: str) -> int:
    with psycopg.connect(system.env["ONBRAND_DATABASE_URL"]) as conn:
        return conn.execute("SELECT max(attempts) FROM stage_runs WHERE campaign_id = %s AND stage = 'generate'",
                            (campaign_id,)).fetchone()[0]


def start_campaign(api: Any) -> str:
    response = api.post("/v1/campaigns", json={"brand_id": api.brand_id, "brief": "the running shoe on a street",
                                                "sizes": SIZES})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_killed_pool_process_task_is_redelivered(system: System, api: Any) -> None:
    campaign_id = start_campaign(api)
    running_generate(system, campaign_id)
    worker = psutil.Process(system.procs.procs["worker-gpu"].pid)
    children = worker.children(recursive=True)
    assert children, "the gpu worker has no pool process"
    for child in children:
        child.send_signal(signal.SIGKILL)
    body = wait_terminal(api, campaign_id)
    assert body["status"] == "completed", body.get("error")
    assert generate_attempts(system, campaign_id) >= 2
    assert len(api.get(f"/v1/campaigns/{campaign_id}/candidates", params={"limit": 100}).json()["items"]) == 81


def test_killed_whole_worker_task_returns_after_visibility_timeout(system: System, api: Any) -> None:
    campaign_id = start_campaign(api)
    running_generate(system, campaign_id)
    system.procs.stop("worker-gpu", sig=signal.SIGKILL)  # no warm shutdown: the message stays unacked
    system.procs.worker("gpu", name="gpu-replacement")
    body = wait_terminal(api, campaign_id, timeout=300)
    assert body["status"] == "completed", body.get("error")
    assert generate_attempts(system, campaign_id) >= 2
