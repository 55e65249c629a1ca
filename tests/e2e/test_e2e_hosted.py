"""The five language stages on each hosted backend, end to end over real processes: gateway and
Celery workers configured for openai or bedrock, talking HTTP to a server that answers with
recorded responses (tests/llm_recorded.py). One campaign goes through the revise loop (the
reviewer fails the brand's shadow rule until the caption grounds the shoe); one is refused by
the provider and fails at its stage with a campaign.failed webhook."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from standardwebhooks import Webhook

from shared.cli.demo.library import build_library
from shared.cli.demo.run import WebhookReceiver, upload_library
from tests.factories import BRIEF, api_client, wait_terminal
from tests.llm_recorded import SHADOW_RULE, RecordedLLM, recorded_llm
from tests.system import System, running_system

pytestmark = pytest.mark.slow
LANGUAGE_STAGES = {"decompose", "caption", "scale", "guideline", "revise"}
REDIS_DB = {"openai": "/6", "bedrock": "/7"}  # a system per Redis db: workers never take another's tasks


@pytest.fixture(scope="module", params=["openai", "bedrock"])
def hosted(
    request: pytest.FixtureRequest, stack_urls: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, RecordedLLM, System]]:
    backend = request.param
    with recorded_llm() as llm:
        env = {
            "ONBRAND_LLM_BACKEND": backend,
            "ONBRAND_OPENAI_BASE_URL": f"{llm.base_url}/v1",
            "ONBRAND_OPENAI_API_KEY": "sk-test",
            "ONBRAND_BEDROCK_ENDPOINT_URL": llm.base_url,
            "AWS_ACCESS_KEY_ID": "AKIAIOSFODNN7EXAMPLE",
            "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG",
            "ONBRAND_REDIS_URL": stack_urls["redis_url"].rsplit("/", 1)[0] + REDIS_DB[backend],
            "ONBRAND_ROTATIONS": "[0]",
            "ONBRAND_WARM_MODELS": "false",
        }  # 9 candidates a round
        with running_system(stack_urls, tmp_path_factory.mktemp(backend), f"e2e_{backend}", **env) as system:
            yield backend, llm, system


@pytest.fixture(scope="module")
def receiver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebhookReceiver]:
    with WebhookReceiver(tmp_path_factory.mktemp("hooks") / "webhooks.jsonl") as rec:
        yield rec


@pytest.fixture(scope="module")
def campaigns(
    hosted: tuple[str, RecordedLLM, System], receiver: WebhookReceiver, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    backend, llm, system = hosted
    api = api_client(system, system.tenant(f"hosted-{backend}")["api_key"])
    brand = api.post(
        "/v1/brands",
        json={
            "name": "Stride",
            "palette": ["#E4572E"],
            "forbidden_terms": ["Nike"],
            "guidelines": [{"text": SHADOW_RULE, "flexible": False}],
        },
    ).json()
    upload_library(api, brand["id"], build_library(tmp_path_factory.mktemp("library")))
    common = {
        "brand_id": brand["id"],
        "sizes": [{"width": 512, "height": 512}],
        "top_k": 2,
        "max_retry_attempts": 0,
        "max_prompt_revisions": 1,
    }
    ok = api.post("/v1/campaigns", json={**common, "brief": BRIEF, "webhook_url": f"{receiver.url}/{backend}/ok"})
    denied = api.post(
        "/v1/campaigns",
        json={**common, "brief": f"{BRIEF} ACCESS-DENIED", "webhook_url": f"{receiver.url}/{backend}/denied"},
    )
    assert ok.status_code == denied.status_code == 202, (ok.text, denied.text)
    return {
        "backend": backend,
        "llm": llm,
        "system": system,
        "api": api,
        "ok": wait_terminal(api, ok.json()["id"]),
        "denied": wait_terminal(api, denied.json()["id"]),
        "secrets": {"ok": ok.json()["webhook_secret"], "denied": denied.json()["webhook_secret"]},
    }


def test_all_five_stages_ran_on_the_backend_and_the_loop_revised_once(campaigns: dict[str, Any]) -> None:
    campaign, backend = campaigns["ok"], campaigns["backend"]
    assert campaign["status"] == "completed", campaign.get("error")
    assert campaign["round"] == 1 and len(campaign["results"]) == 2
    statuses = {s["stage"]: s["status"] for s in campaign["stages"]}
    assert set(statuses.values()) == {"succeeded"}, statuses
    state = campaign["state"]
    assert state["decompose"]["backend"] == backend and state["decompose"]["products"] == ["running shoe"]
    assert state["scale"]["method"] == "vision" and state["scale"]["share"] == 0.42
    [revision] = state["revisions"]
    assert revision["backend"] == backend and "contact shadow" in state["caption"]["caption"]
    assert revision["previous_caption"].startswith("a ") and "low angle close-up shot" in revision["previous_caption"]


def test_every_call_is_logged_with_its_stage_and_backend(campaigns: dict[str, Any]) -> None:
    campaign, system = campaigns["ok"], campaigns["system"]
    with psycopg.connect(system.env["ONBRAND_DATABASE_URL"]) as conn:
        rows = conn.execute(
            "SELECT stage, backend, prompt_version, tokens_in, cost_usd FROM llm_calls WHERE campaign_id = %s",
            (campaign["id"],),
        ).fetchall()
    stages = {"qc" if r[0] == "qc" else r[0] for r in rows}
    assert stages == {"decompose", "caption", "scale", "qc", "revise"}  # the guideline check runs inside qc
    assert {r[1] for r in rows} == {campaigns["backend"]} and all(r[3] > 0 and r[4] > 0 for r in rows)
    assert {r[2] for r in rows} == {"decompose.v3", "caption.v2", "scale.v1", "guideline.v1", "revise.v1"}
    assert campaign["llm"]["calls"] == len(rows) and campaign["llm"]["cost_usd"] > 0
    seen = campaigns["llm"].stages()
    assert seen[0] == "decompose" and seen.count("decompose") >= 2  # the first call was throttled, then retried
    assert LANGUAGE_STAGES <= set(seen)


def test_guideline_verdicts_name_the_failed_brand_rule(campaigns: dict[str, Any]) -> None:
    api, campaign = campaigns["api"], campaigns["ok"]
    items = api.get(f"/v1/campaigns/{campaign['id']}/candidates", params={"limit": 100}).json()["items"]
    first = [c for c in items if c["round"] == 0 and c["qc"].get("guidelines")]
    assert first and all(not c["passed"] for c in first)
    verdict = next(v for v in first[0]["qc"]["guidelines"]["verdicts"] if v["guideline"] == "brand_1")
    assert verdict["status"] == "fail" and "shadow" in verdict["reason"] and verdict["method"] == "vision"
    assert "brand_1" in first[0]["excluded_reason"]
    ranked = [c for c in items if c["rank"]]
    assert ranked and all(c["round"] == 1 and c["qc"]["guidelines"]["passed"] for c in ranked)


def test_forbidden_terms_never_reach_the_caption(campaigns: dict[str, Any]) -> None:
    caption = campaigns["ok"]["state"]["caption"]
    assert "Nike" not in caption["caption"] and "Nike" in caption["negative_prompt"]


def test_a_refused_backend_fails_the_campaign_at_its_stage(
    campaigns: dict[str, Any], receiver: WebhookReceiver
) -> None:
    campaign = campaigns["denied"]
    assert campaign["status"] == "failed" and campaign["error"]["code"] == "llm_auth"
    assert campaign["error"]["message"].startswith("decompose: ")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not _events(receiver, campaigns, "campaign.failed"):
        time.sleep(0.2)
    [failed] = _events(receiver, campaigns, "campaign.failed")
    assert failed["data"]["error"]["code"] == "llm_auth" and failed["data"]["error"]["stage"] == "decompose"


def _events(receiver: WebhookReceiver, campaigns: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    mine = [r for r in receiver.records() if r["path"].endswith(f"/{campaigns['backend']}/denied")]
    events = [Webhook(campaigns["secrets"]["denied"]).verify(r["body"], r["headers"]) for r in mine]
    return [e for e in events if e["type"] == kind]
