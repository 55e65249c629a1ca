"""`onbrand campaigns create|watch|review-link|download` as a user runs them: separate processes talking
to the running system over HTTP with a tenant key. One small campaign (a mug on the studio backdrop,
512 px, top_k 2) is created and watched to the end, downloaded (sizes checked, nothing overwritten
without --force) and given a review link; a bad key gets the gateway's problem and exit 1."""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.cli.procs import onbrand_cmd
from tests.factories import api_client
from tests.system import System
from workers.evaluation import qc_set

pytestmark = pytest.mark.slow

SIZE = 512
TOP_K = 2
BRIEF = "the ceramic mug on a clean studio backdrop"


def onbrand(system: System, api_key: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**system.env, "ONBRAND_API_URL": system.url, "ONBRAND_API_KEY": api_key}
    return subprocess.run(onbrand_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout)


def _mug_png() -> bytes:
    photo, _ = qc_set.source_photo("mug", "heldout", np.random.default_rng(7))
    buffer = io.BytesIO()
    photo.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def setup(system: System) -> dict[str, Any]:
    """A tenant, a brand with no background photos (studio backdrop) and the mug as its product."""
    key = system.tenant("cli-campaigns")["api_key"]
    api = api_client(system, key)
    brand = api.post("/v1/brands", json={"name": "Everyday", "palette": ["#2F4858", "#F6AE2D"]}).json()["id"]
    metadata = {"kind": "product", "title": "Ceramic mug with a handle", "tags": ["mug"], "brand_id": brand}
    files = {"file": ("mug.png", _mug_png(), "image/png")}
    asset = api.post("/v1/assets", files=files, data={"metadata": json.dumps(metadata)})
    assert asset.status_code in (200, 201), asset.text
    return {"key": key, "api": api, "brand": brand, "product": asset.json()["id"]}


@pytest.fixture(scope="module")
def watched(system: System, setup: dict[str, Any]) -> dict[str, Any]:
    """`create --watch` on the small campaign: the process's output and the campaign as the API reports it."""
    done = onbrand(
        system,
        setup["key"],
        *("campaigns", "create", "--brand-id", setup["brand"], "--brief", BRIEF, "--product", setup["product"]),
        *("--size", f"{SIZE}x{SIZE}", "--top-k", str(TOP_K), "--watch", "--interval", "0.5", "--timeout", "280"),
    )
    campaign_id = done.stdout.splitlines()[0] if done.stdout else ""
    campaign = setup["api"].get(f"/v1/campaigns/{campaign_id}").json() if campaign_id else {}
    return {"done": done, "id": campaign_id, "campaign": campaign}


def test_create_watch_runs_a_campaign_to_its_results(watched: dict[str, Any]) -> None:
    done, campaign = watched["done"], watched["campaign"]
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    uuid.UUID(watched["id"])  # the first line on stdout is the campaign id
    assert campaign["status"] == "completed" and len(campaign["results"]) == TOP_K
    assert f"campaign {watched['id']}: completed" in done.stdout
    table = done.stdout.split("results · review round 0", 1)[1]
    for result in campaign["results"]:
        row = next(line for line in table.splitlines() if line.strip().startswith(str(result["rank"])))
        assert f"{result['aesthetic']:.2f}" in row
        assert ("fully checked" if result["fully_checked"] else "needs review") in row
        assert "undecided" in row  # nobody has decided yet
    assert "review state: pending" in done.stdout
    # the report's cost (shared.costs): the GPU queues' time over the results, priced
    cost = rf"GPU time: [0-9.]+ s per delivered image \([0-9.]+ s over {TOP_K}\) · \$[0-9.]+ per image"
    assert re.search(cost, done.stdout), done.stdout
    assert "idempotency key" in done.stderr  # the generated key is shown, so a retry can reuse it
    assert "completed" in done.stderr  # the progress bar's last line


def test_download_writes_checked_results_and_overwrites_nothing(
    system: System, setup: dict[str, Any], watched: dict[str, Any], tmp_path: Path
) -> None:
    args = ("campaigns", "download", watched["id"], "--out", str(tmp_path))
    first = onbrand(system, setup["key"], *args)
    assert first.returncode == 0, first.stdout + first.stderr
    for result in watched["campaign"]["results"]:
        png, sidecar = tmp_path / f"rank-{result['rank']}.png", tmp_path / f"rank-{result['rank']}.json"
        assert Image.open(png).size == (SIZE, SIZE)
        meta = json.loads(sidecar.read_text())
        assert meta["rank"] == result["rank"] and meta["qc"] == result["qc"] and "decision" in meta
        assert meta["image"]["sha256"] == hashlib.sha256(png.read_bytes()).hexdigest()
        assert png.read_bytes() == httpx.get(result["image_url"], timeout=30).content
    again = onbrand(system, setup["key"], *args)
    assert again.returncode == 0 and again.stdout.count("unchanged") == 2 * TOP_K, again.stdout
    (tmp_path / "rank-1.png").write_bytes(b"edited by someone")
    refused = onbrand(system, setup["key"], *args)
    assert refused.returncode == 1 and "different content" in refused.stderr and "--force" in refused.stderr
    assert (tmp_path / "rank-1.png").read_bytes() == b"edited by someone"
    forced = onbrand(system, setup["key"], *args, "--force")
    assert forced.returncode == 0 and "replaced" in forced.stdout
    assert (
        hashlib.sha256((tmp_path / "rank-1.png").read_bytes()).hexdigest()
        == json.loads((tmp_path / "rank-1.json").read_text())["image"]["sha256"]
    )


def test_download_all_rounds_reads_each_review_round(
    system: System, setup: dict[str, Any], watched: dict[str, Any], tmp_path: Path
) -> None:
    results = setup["api"].get(f"/v1/campaigns/{watched['id']}/results", params={"review_round": 0})
    assert results.status_code == 200
    assert [r["id"] for r in results.json()["items"]] == [r["id"] for r in watched["campaign"]["results"]]
    later = setup["api"].get(f"/v1/campaigns/{watched['id']}/results", params={"review_round": 1})
    assert later.status_code == 404 and later.json()["code"] == "not_found"  # no feedback, no review round 1
    done = onbrand(system, setup["key"], "campaigns", "download", watched["id"], "--out", str(tmp_path), "--all-rounds")
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in (tmp_path / "review-round-0").iterdir()) == sorted(
        f"rank-{n}.{ext}" for n in range(1, TOP_K + 1) for ext in ("json", "png")
    )


def test_review_link_prints_only_the_url(system: System, setup: dict[str, Any], watched: dict[str, Any]) -> None:
    args = ("campaigns", "review-link", watched["id"], "--reviewer", "Dana", "--hours", "2")
    done = onbrand(system, setup["key"], *args)
    assert done.returncode == 0, done.stderr
    [url] = done.stdout.splitlines()
    assert url.startswith(f"{system.url}/review/")
    assert "Dana" in done.stderr
    assert httpx.get(url, timeout=30).status_code == 200  # the page opens with the link alone


def test_a_bad_key_gets_the_gateway_problem_and_exit_1(
    system: System, setup: dict[str, Any], watched: dict[str, Any]
) -> None:
    bad = "onb_not-a-real-key"
    for args in (
        ("campaigns", "watch", watched["id"]),
        ("campaigns", "create", "--brand-id", setup["brand"], "--brief", BRIEF),
    ):
        done = onbrand(system, bad, *args)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "Unauthorized (HTTP 401" in done.stderr and "invalid or revoked" in done.stderr
        assert bad not in done.stdout + done.stderr
    unknown = onbrand(system, setup["key"], "campaigns", "create", "--brand-id", str(uuid.uuid4()), "--brief", BRIEF)
    assert unknown.returncode == 1 and "HTTP 422" in unknown.stderr, unknown.stderr
    no_key = onbrand(system, "", "campaigns", "watch", watched["id"])
    assert no_key.returncode == 2 and "no API key" in no_key.stderr
