"""End to end over real processes: REST → Celery workers → Postgres/pgvector → storage → webhooks."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
from PIL import Image
from standardwebhooks import Webhook, WebhookVerificationError

from shared import provenance
from shared.cli.demo.library import build_library
from shared.cli.demo.run import WebhookReceiver, upload_library
from shared.cli.procs import onbrand_cmd
from tests.factories import BRIEF, api_client, httpx_get, verify, wait_terminal
from tests.system import System

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return build_library(tmp_path_factory.mktemp("library"))


@pytest.fixture(scope="module")
def brand_setup(system: System, library: list[dict[str, Any]]) -> dict[str, Any]:
    tenant = system.tenant("e2e")
    api = api_client(system, tenant["api_key"])
    brand = api.post("/v1/brands", json={"name": "Stride", "palette": ["#E4572E", "#17BEBB"]}).json()
    assets = upload_library(api, brand["id"], library)
    return {"tenant": tenant, "api": api, "brand": brand, "assets": assets}


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with WebhookReceiver(tmp_path_factory.mktemp("hooks") / "webhooks.jsonl") as rec:
        yield rec


@pytest.fixture(scope="module")
def finished(brand_setup: dict[str, Any], receiver: Any) -> dict[str, Any]:
    api = brand_setup["api"]
    endpoint = api.post("/v1/webhook-endpoints", json={"url": receiver.url, "event_types": ["campaign.*"]}).json()
    created = api.post(
        "/v1/campaigns",
        json={
            "brand_id": brand_setup["brand"]["id"],
            "brief": BRIEF,
            "sizes": [{"width": 1024, "height": 1024}],
            "top_k": 3,
            "webhook_url": f"{receiver.url}/campaign",
        },
    )
    assert created.status_code == 202, created.text
    body = wait_terminal(api, created.json()["id"])
    return {"campaign": body, "endpoint": endpoint, "created": created.json(), "api": api}


def test_campaign_completes_with_three_ranked_results(finished: dict[str, Any]) -> None:
    campaign = finished["campaign"]
    assert campaign["status"] == "completed", campaign.get("error")
    assert [r["rank"] for r in campaign["results"]] == [1, 2, 3]
    statuses = {s["stage"]: s["status"] for s in campaign["stages"]}
    assert statuses.pop("revise") == "skipped"  # enough passed the first round: no caption revision
    assert set(statuses.values()) == {"succeeded"}, campaign["stages"]
    assert campaign["state"]["caption"]["caption"]
    scale = campaign["state"]["scale"]  # the local model cannot see: the size table answered, and says so
    assert scale["method"] == "classical" and "cannot see images" in scale["fallback_reason"]
    guidelines = [c["qc"]["guidelines"] for c in candidates(finished) if c["qc"].get("guidelines")]
    assert guidelines and all(g["method"] == "classical" for g in guidelines)
    assert campaign["state"]["retrieve"]["product_source"] == "retrieved"
    assert not [k for k in campaign["state"] if k.startswith("_")]  # worker bookkeeping stays inside


def test_language_calls_are_logged_and_summed(finished: dict[str, Any], system: System) -> None:
    campaign = finished["campaign"]
    with psycopg.connect(system.env["ONBRAND_DATABASE_URL"]) as conn:
        rows = conn.execute(
            "SELECT stage, backend, tokens_in, latency_ms FROM llm_calls WHERE campaign_id = %s", (campaign["id"],)
        ).fetchall()
    stages_calls = sum(len(campaign["state"][s]["calls"]) for s in ("decompose", "caption"))
    assert len(rows) == stages_calls == campaign["llm"]["calls"] > 0  # the local LLM really ran
    assert {r[0] for r in rows} <= {"decompose", "caption"} and {r[1] for r in rows} == {"local"}
    assert campaign["llm"]["tokens_in"] == sum(r[2] for r in rows) > 0
    assert campaign["llm"]["latency_ms"] == pytest.approx(sum(r[3] for r in rows), abs=0.5)


def test_product_pixels_are_exact_in_every_result(finished: dict[str, Any]) -> None:
    for result in finished["campaign"]["results"]:
        image = np.asarray(Image.open(httpx_get(result["image_url"])).convert("RGB"))
        layer = np.asarray(Image.open(httpx_get(result["layer_url"])).convert("RGBA"))
        placement = result["placement"]
        assert image.shape[:2] == (placement["canvas"]["height"], placement["canvas"]["width"])
        opaque = layer[..., 3] == 255
        assert opaque.sum() > 1000
        assert np.array_equal(image[opaque], layer[..., :3][opaque])
        assert {"x", "y", "scale", "rotation"} <= placement.keys()


def test_every_result_verifies_from_its_source(finished: dict[str, Any], system: System) -> None:
    """`onbrand verify` re-derives each product layer from the stored source photo + mask the integrity
    record names, and finds it bit for bit in every result (and every candidate)."""
    campaign_id = finished["campaign"]["id"]
    for args, count in (((), 3), (("--all",), len(candidates(finished)))):
        assert verify(system, campaign_id, *args).endswith(f"verified {count}/{count}")
    record = candidates(finished)[0]["integrity"]
    assert record["source"]["kind"] == "asset" and record["source"]["sha256"] == record["source"]["asset_sha256"]
    assert record["mask"]["method"] and record["transform"]["resize_filter"] == "lanczos"


def test_every_result_carries_valid_content_credentials(
    finished: dict[str, Any], system: System, tmp_path: Path
) -> None:
    """The API serves each result's C2PA-signed copy, trusted by the system's own (development) chain;
    `onbrand verify IMAGE` validates one and re-checks its product against the source it names (exit 0),
    and the same file with one flipped byte fails (exit 1)."""
    anchors = (system.home / "c2pa" / "root.pem").read_bytes()  # made by the worker that signed
    signed = [httpx_get(r["image_url"]).getvalue() for r in finished["campaign"]["results"]]
    for data in signed:
        reading = provenance.read(data, anchors)
        assert reading.state == "Trusted" and reading.development, reading.failures
        assert reading.source_type == provenance.COMPOSITE and (reading.integrity or {})["exact_fraction"] == 1.0
    path = tmp_path / "rank-1.png"
    path.write_bytes(signed[0])
    done = subprocess.run(onbrand_cmd("verify", str(path)), env=system.env, capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip().endswith("verified"), done.stdout + done.stderr
    tampered = bytearray(signed[0])
    tampered[len(tampered) // 2] ^= 0x01
    path.write_bytes(bytes(tampered))
    done = subprocess.run(onbrand_cmd("verify", str(path)), env=system.env, capture_output=True, text=True)
    assert done.returncode == 1 and "FAILED" in done.stdout, done.stdout + done.stderr


def candidates(finished: dict[str, Any]) -> list[dict[str, Any]]:
    api = finished["api"]
    return api.get(f"/v1/campaigns/{finished['campaign']['id']}/candidates", params={"limit": 100}).json()["items"]


def test_candidates_carry_scores_and_verdicts(finished: dict[str, Any]) -> None:
    items = candidates(finished)
    assert len(items) == 27  # 3×3 grid × 3 rotations on one canvas
    for item in items:
        assert item["qc"]["verdicts"] and item["placement"]["canvas"] == {"width": 1024, "height": 1024}
        assert item["passed"] is not None and (item["aesthetic"] is not None or item["excluded_reason"])


def _signed_events(receiver: Any, secret: str, per_campaign: bool) -> list[dict[str, Any]]:
    requests = [json.loads(line) for line in receiver.log.read_text().splitlines()]
    mine = [r for r in requests if r["path"].endswith("/campaign") == per_campaign]
    assert all(len(r["body"]) < 20_000 for r in mine)  # thin payloads
    return sorted((Webhook(secret).verify(r["body"], r["headers"]) for r in mine), key=lambda e: e["data"]["sequence"])


def _all_arrived(receiver: Any, secrets: dict[bool, str]) -> bool:
    # Deliveries are independent tasks: they may arrive out of order; the sequence shows what is missing.
    for per_campaign, secret in secrets.items():
        sequence = [e["data"]["sequence"] for e in _signed_events(receiver, secret, per_campaign)]
        if not sequence or sequence != list(range(1, len(sequence) + 1)) or sequence[-1] < 3:
            return False
    return True


def test_webhooks_are_signed_and_complete(finished: dict[str, Any], receiver: Any) -> None:
    # The registered endpoint and the campaign's own webhook_url, each signed with its own secret.
    secrets = {False: finished["endpoint"]["secret"], True: finished["created"]["webhook_secret"]}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _all_arrived(receiver, secrets):
        time.sleep(0.2)
    stages = ["decompose", "retrieve", "caption", "segment", "scale", "plan", "generate", "qc", "rank"]
    for per_campaign, secret in secrets.items():
        events = _signed_events(receiver, secret, per_campaign)
        assert [e["data"]["sequence"] for e in events] == list(range(1, len(events) + 1))  # none missing
        types = [e["type"] for e in events]
        # The terminal event, then the request for a reviewer (the results are ready to approve or reject)
        assert types[0] == "campaign.queued" and types[-2:] == ["campaign.completed", "campaign.review.requested"], (
            types
        )
        assert [e["data"]["stage"] for e in events if e["type"] == "campaign.stage.completed"] == stages
        assert [e["data"]["stage"] for e in events if e["type"] == "campaign.stage.started"] == [*stages, "deliver"]
        [ready] = [e for e in events if e["type"] == "campaign.candidates.ready"]
        assert ready["data"]["candidates"] >= ready["data"]["passed"] >= ready["data"]["ranked"] == 3
        progress = [e["data"]["progress"] for e in events if e["type"] == "campaign.stage.completed"]
        assert progress == sorted(progress) and progress[-1] > 0.5
        assert len(events[-2]["data"]["results"]) == 3 and events[-1]["data"]["results"] == 3
    mine = [json.loads(line) for line in receiver.log.read_text().splitlines()][0]
    with pytest.raises(WebhookVerificationError):  # the other receiver's secret must not verify
        Webhook(secrets[not mine["path"].endswith("/campaign")]).verify(mine["body"], mine["headers"])


def test_cancel_stops_further_stages(brand_setup: dict[str, Any]) -> None:
    api = brand_setup["api"]
    created = api.post("/v1/campaigns", json={"brand_id": brand_setup["brand"]["id"], "brief": BRIEF}).json()
    cancelled = api.post(f"/v1/campaigns/{created['id']}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert api.post(f"/v1/campaigns/{created['id']}/cancel").status_code == 409
    time.sleep(8)  # long enough for a warm pipeline to have gone several stages further
    body = api.get(f"/v1/campaigns/{created['id']}").json()
    assert body["status"] == "cancelled" and body["results"] == []
    ran = {s["stage"] for s in body["stages"] if s["total"]}
    assert ran <= {"decompose"}, ran  # at most the stage already running when the cancel landed
    assert api.get(f"/v1/campaigns/{created['id']}/candidates").json()["items"] == []


# ----------------------------------------------------------------------------- observability


def scrape(url: str) -> str:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, url
    return response.text


GATEWAY_METRICS = {
    "onbrand_http_requests",
    "onbrand_http_request_duration_seconds",
    "onbrand_queue_depth",
    "onbrand_tasks_in_flight",
}
WORKER_METRICS = {
    "onbrand_stage_duration_seconds",
    "onbrand_campaign_duration_seconds",
    "onbrand_task_duration_seconds",
    "onbrand_task_retries",
    "onbrand_task_failures",
    "onbrand_gpu_seconds_per_candidate",
    "onbrand_webhook_deliveries",
    "onbrand_dam_pushes",
    "onbrand_llm_tokens",
    "onbrand_llm_cost_usd",
}
STAGES_RUN = ("decompose", "retrieve", "caption", "segment", "scale", "plan", "generate", "qc", "rank", "deliver")


def test_metrics_after_a_campaign(finished: dict[str, Any], system: System) -> None:
    from shared.metrics import names, sample_total

    gateway = scrape(f"{system.url}/metrics")
    assert GATEWAY_METRICS <= names(gateway), GATEWAY_METRICS - names(gateway)
    assert sample_total(gateway, "onbrand_http_requests_total", method="POST", route="/v1/campaigns", status="202") >= 1
    assert sample_total(gateway, "onbrand_queue_depth", queue="generate") >= 0
    cpu, gpu = (scrape(f"http://127.0.0.1:{system.procs.metrics_ports[node]}/metrics") for node in ("cpu", "gpu"))
    both = cpu + gpu
    assert WORKER_METRICS <= names(cpu) | names(gpu), WORKER_METRICS - names(cpu) - names(gpu)
    for stage in STAGES_RUN:
        assert sample_total(both, "onbrand_stage_duration_seconds_count", stage=stage, outcome="succeeded") >= 1, stage
    assert sample_total(cpu, "onbrand_campaign_duration_seconds_count", status="completed") >= 1  # deliver: cpu
    assert sample_total(gpu, "onbrand_gpu_seconds_per_candidate_count", generator="compositor", device="cpu") >= 27
    assert sample_total(cpu, "onbrand_webhook_deliveries_total", outcome="delivered") >= 20
    assert sample_total(cpu, "onbrand_llm_tokens_total", backend="local", direction="in") > 0
    assert sample_total(both, "onbrand_task_duration_seconds_count", task="onbrand.generate", outcome="success") >= 1
    assert sample_total(both, "onbrand_task_failures_total", task="onbrand.decompose") == 0  # a series, at 0


def test_one_trace_spans_the_gateway_and_every_stage(finished: dict[str, Any], collector: Any) -> None:
    campaign_id = finished["campaign"]["id"]

    def runs() -> list[Any]:
        return [s for s in collector.snapshot() if s.attributes.get("onbrand.campaign_id") == campaign_id]

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and "deliver" not in {s.attributes.get("onbrand.stage") for s in runs()}:
        time.sleep(0.2)
    mine = runs()
    assert len({s.trace_id for s in mine}) == 1, "every stage of one campaign run is in one trace"
    trace = [s for s in collector.snapshot() if s.trace_id == mine[0].trace_id]
    by_id = {s.span_id: s for s in trace}
    [request] = [s for s in trace if s.kind == "SERVER"]
    assert (request.service, request.name) == ("onbrand-gateway", "POST /v1/campaigns")
    assert request.attributes["http.response.status_code"] == 202
    assert {s.attributes.get("onbrand.stage") for s in mine} >= set(STAGES_RUN)
    for run in (s for s in trace if s.kind == "CONSUMER"):
        assert run.service == "onbrand-worker"
        sender = by_id[run.parent_id]  # the message's traceparent: the span that sent it, in this trace
        assert sender.kind == "PRODUCER" and sender.name == f"send {run.name.removeprefix('run ')}"
    assert any(s.name == "run onbrand.send_webhook" for s in trace)  # its webhooks are part of it


def test_worker_logs_are_json_with_context(finished: dict[str, Any], system: System) -> None:
    lines = [
        json.loads(line)
        for line in (system.home / "logs" / "worker-gpu.log").read_text().splitlines()
        if line.startswith("{")
    ]
    mine = [line for line in lines if line.get("campaign_id") == finished["campaign"]["id"]]
    assert {line.get("stage") for line in mine} >= {"segment", "generate", "qc"}
    for line in mine:
        assert {"ts", "level", "logger", "message", "task", "task_id", "trace_id"} <= line.keys(), line
    done = [line for line in mine if "succeeded in" in line["message"]]
    assert done and len({line["tenant_id"] for line in done}) == 1  # bound once the stage claimed its campaign


def test_probes_against_the_running_system(system: System) -> None:
    import subprocess

    from shared.cli.procs import onbrand_cmd

    def probe(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(onbrand_cmd("probe", *args), env=system.env, capture_output=True, text=True, timeout=60)

    for pool in ("cpu", "gpu"):  # the workers are named <pool>@<hostname>, as in compose and k8s
        deadline = time.monotonic() + 90  # like a startup probe: a worker still starting does not answer
        while (ready := probe("ping", "--pool", pool, "--timeout", "5")).returncode and time.monotonic() < deadline:
            time.sleep(1)
        assert ready.returncode == 0 and ready.stdout.startswith(f"ok: {pool}@"), ready.stderr
    absent = probe("ping", "--pool", "tpu", "--timeout", "1")
    assert absent.returncode == 1 and "did not answer" in absent.stderr
    assert probe("http", "--url", f"{system.url}/healthz").returncode == 0
    assert probe("heartbeat", "--process", "worker").returncode == 0  # the workers share this ONBRAND_HOME
