"""Worker processes killed mid-task: the campaign still completes (acks_late + reject_on_worker_lost,
state in Postgres, idempotent stages with deterministic keys)."""

from __future__ import annotations

import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import psutil
import psycopg
import pytest
from standardwebhooks import Webhook

from shared.cli.demo.library import build_library
from shared.cli.demo.run import upload_library
from tests.factories import wait_terminal
from tests.system import System

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
            row = conn.execute(
                "SELECT count(*) FROM stage_runs WHERE campaign_id = %s AND stage = 'generate' AND status = 'running'",
                (campaign_id,),
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.05)
    raise TimeoutError("generate never started")


def generate_attempts(system: System, campaign_id: str) -> int:
    with psycopg.connect(system.env["ONBRAND_DATABASE_URL"]) as conn:
        return conn.execute(
            "SELECT max(attempts) FROM stage_runs WHERE campaign_id = %s AND stage = 'generate'", (campaign_id,)
        ).fetchone()[0]


def start_campaign(api: Any) -> str:
    response = api.post(
        "/v1/campaigns", json={"brand_id": api.brand_id, "brief": "the running shoe on a street", "sizes": SIZES}
    )
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


class HangingOnceReceiver:
    """The first request is read and never answered (until the test ends); later ones get 200."""

    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], str]] = []
        self.answered = 0
        self.release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                body = self.rfile.read(int(self.headers["content-length"])).decode()
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                if len(receiver.requests) == 1:
                    receiver.release.wait(60)
                    return
                receiver.answered += 1
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"


def _sender_of(port: int, worker: psutil.Process) -> psutil.Process:
    """The worker's pool process with a connection open to the receiver: the one mid-delivery."""
    for child in worker.children(recursive=True):
        if any(c.raddr and c.raddr.port == port for c in child.net_connections(kind="tcp")):
            return child
    raise AssertionError("no worker process is connected to the receiver")


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.1)


def test_worker_killed_mid_delivery_still_delivers_exactly_once(system: System, api: Any) -> None:
    receiver = HangingOnceReceiver()
    endpoint = api.post(
        "/v1/webhook-endpoints", json={"url": receiver.url, "event_types": ["campaign.completed"]}
    ).json()
    queued = api.post(f"/v1/webhook-endpoints/{endpoint['id']}/test").json()
    _wait(lambda: receiver.requests, 60, "the test event never reached the receiver")
    worker = psutil.Process(system.procs.procs["worker-cpu"].pid)
    _sender_of(receiver.server.server_port, worker).send_signal(signal.SIGKILL)
    path = f"/v1/webhook-endpoints/{endpoint['id']}/deliveries/{queued['id']}"
    _wait(lambda: api.get(path).json()["status"] == "delivered", 120, "the delivery never completed")
    time.sleep(6)  # a dispatcher tick (5 s) later, still nothing more was sent
    receiver.release.set()
    delivery = api.get(path).json()
    assert receiver.answered == 1 and len(receiver.requests) == 2
    assert {h["webhook-id"] for h, _ in receiver.requests} == {queued["event_id"]}  # the receiver can deduplicate
    assert delivery["attempts"] == 1 and [a["outcome"] for a in delivery["attempt_log"]] == ["delivered"]
    Webhook(endpoint["secret"]).verify(receiver.requests[1][1], receiver.requests[1][0])
