"""Every segmenter x generator pairing, end to end through real gateway and worker processes.

matting x compositor is tests/e2e/test_e2e.py. Here: sam x compositor, matting x sd-inpaint and
sam x sd-inpaint, with the tiny random SamModel and SD inpainting pipeline saved to disk and
loaded by the workers offline; sam x compositor also runs QC with a tiny DINOv2 and ranks with the
laion aesthetic adapter (tiny CLIP + MLP). All are loaded offline (HF_HUB_OFFLINE=1) through the
configured model paths: the same path a GPU deployment takes. The promise checked on every candidate, not only results:
wherever the placed product is opaque, the candidate's pixels are the product's pixels.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from shared.cli.demo.library import build_library
from shared.cli.demo.run import upload_library
from tests.factories import BRIEF, api_client, httpx_get, wait_terminal
from tests.system import System, running_system
from tests.tiny_sam import build_tiny_sam
from tests.tiny_sd import build_tiny_sd_inpaint
from tests.tiny_vision import build_tiny_aesthetic_mlp, build_tiny_clip, build_tiny_dinov2

pytestmark = pytest.mark.slow
PAIRINGS = {
    "sam+compositor": ("sam", "compositor", "/8"),
    "matting+sd-inpaint": ("matting", "sd-inpaint", "/9"),
    "sam+sd-inpaint": ("sam", "sd-inpaint", "/10"),
}  # one Redis db per system
SIZES = [{"width": 512, "height": 512}, {"width": 512, "height": 268}]  # 1:1 and ~1.91:1
GRID = {"ONBRAND_GRID_ROWS": "2", "ONBRAND_GRID_COLS": "2", "ONBRAND_ROTATIONS": "[-15, 0, 15]"}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "sam": build_tiny_sam(root / "tiny-sam"),
        "sd": build_tiny_sd_inpaint(root / "tiny-sd-inpaint"),
        "dinov2": build_tiny_dinov2(root / "tiny-dinov2"),
        "clip": build_tiny_clip(root / "tiny-clip"),
        "mlp": build_tiny_aesthetic_mlp(root / "tiny-aesthetic-mlp", in_dim=16),
    }


def qc_models(models: dict[str, Path]) -> dict[str, str]:
    """QC and ranking with the production adapters: DINOv2 fidelity/duplicates, laion aesthetic."""
    return {
        "ONBRAND_DINOV2_MODEL": str(models["dinov2"]),
        "ONBRAND_AESTHETIC": "laion",
        "ONBRAND_AESTHETIC_CLIP_MODEL": str(models["clip"]),
        "ONBRAND_AESTHETIC_MLP": str(models["mlp"]),
    }


@pytest.fixture(scope="module", params=list(PAIRINGS))
def pairing(
    request: pytest.FixtureRequest,
    stack_urls: dict[str, str],
    tiny_models: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, System]]:
    segmenter, generator, db = PAIRINGS[request.param]
    env = {
        "ONBRAND_SEGMENTER": segmenter,
        "ONBRAND_GENERATOR": generator,
        "HF_HUB_OFFLINE": "1",
        "ONBRAND_SAM_MODEL": str(tiny_models["sam"]),
        "ONBRAND_SD_MODEL": str(tiny_models["sd"]),
        "ONBRAND_SD_STEPS": "2",
        "ONBRAND_SD_RESOLUTION": "128",
        "ONBRAND_SD_BATCH_SIZE": "4",
        "ONBRAND_SD_VARIANTS": "2" if request.param == "sam+sd-inpaint" else "1",
        "ONBRAND_LLM_BACKEND": "rules",  # the language stages are not under test here
        "ONBRAND_REDIS_URL": stack_urls["redis_url"].rsplit("/", 1)[0] + db,
        **GRID,
        **(qc_models(tiny_models) if request.param == "sam+compositor" else {}),
    }
    home = tmp_path_factory.mktemp(request.param.replace("+", "_"))
    with running_system(stack_urls, home, f"e2e_{segmenter}_{generator.replace('-', '_')}", **env) as system:
        yield request.param, system


@pytest.fixture(scope="module")
def run(pairing: tuple[str, System], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    name, system = pairing
    api = api_client(system, system.tenant(name.replace("+", "-"))["api_key"])
    brand = api.post("/v1/brands", json={"name": "Stride", "palette": ["#E4572E", "#2E4057"]}).json()
    upload_library(api, brand["id"], build_library(tmp_path_factory.mktemp("library")))
    created = api.post(
        "/v1/campaigns",
        json={
            "brand_id": brand["id"],
            "brief": BRIEF,
            "sizes": SIZES,
            "top_k": 2,
            "qc_policy": "weighted",
            "max_retry_attempts": 0,
            "max_prompt_revisions": 0,
            "safe_zones": [{"label": "logo", "x": 0.0, "y": 0.0, "width": 0.3, "height": 0.12}],
        },
    )
    assert created.status_code == 202, created.text
    campaign = wait_terminal(api, created.json()["id"])
    items = api.get(f"/v1/campaigns/{campaign['id']}/candidates", params={"limit": 100}).json()["items"]
    return {"name": name, "api": api, "campaign": campaign, "candidates": items}


def test_the_campaign_runs_with_the_configured_adapters(run: dict[str, Any]) -> None:
    campaign, (segmenter, generator, _) = run["campaign"], PAIRINGS[run["name"]]
    assert campaign["status"] in ("completed", "partial"), campaign.get("error")
    segment = campaign["state"]["segment"]
    methods = {"sam"} if segmenter == "sam" else {"alpha", "grabcut"}
    assert segment["adapter"] == segmenter and segment["method"] in methods
    assert {c["generator"] for c in run["candidates"]} == {generator}
    plan = campaign["state"]["plan"]
    assert sorted(map(tuple, plan["canvases"])) == [(512, 268), (512, 512)] and plan["skipped_canvases"] == []
    variants = 2 if run["name"] == "sam+sd-inpaint" else 1
    assert len(run["candidates"]) == len(plan["layouts"]) * variants


def test_every_candidate_keeps_the_product_pixels_exact(run: dict[str, Any]) -> None:
    rotations = set()
    for cand in run["candidates"]:
        record = cand["integrity"]
        key = cand["layout_key"]
        assert record["exact_fraction"] == 1.0 and record["product_sha256"] == record["layer_sha256"], key
        assert record["placement"] == cand["placement"]
        rotations.add(cand["placement"]["rotation"])
    assert rotations == {-15.0, 0.0, 15.0}
    for result in run["campaign"]["results"]:  # and re-checked from the stored PNGs, not the record
        image = np.asarray(Image.open(httpx_get(result["image_url"])).convert("RGB"))
        layer = np.asarray(Image.open(httpx_get(result["layer_url"])).convert("RGBA"))
        opaque = layer[..., 3] == 255
        assert opaque.sum() > 500 and np.array_equal(image[opaque], layer[..., :3][opaque])


def test_generation_records_seed_and_cost_per_candidate(run: dict[str, Any]) -> None:
    generation = [c["generation"] for c in run["candidates"]]
    if PAIRINGS[run["name"]][1] == "compositor":
        assert all(g["adapter"] == "compositor" and g["cpu_seconds"] > 0 for g in generation)
        return
    seeds = [g["seed"] for g in generation]
    assert len(set(seeds)) == len(seeds)  # every candidate its own, recorded seed
    assert all(
        g["gpu_seconds"] > 0 and g["passes"] == ["outpaint"] and g["working_size"][0] <= 128 and g["device"] == "cpu"
        for g in generation
    )


def test_no_candidate_covers_the_safe_zone(run: dict[str, Any]) -> None:
    plan = run["campaign"]["state"]["plan"]
    assert sum(plan["safe_zone_exclusions"].values()) > 0  # the logo corner did exclude positions
    for cand in run["candidates"]:
        p, canvas = cand["placement"], cand["placement"]["canvas"]
        # the box grows right and down from (x, y): clear of the top-left zone iff it starts past it
        assert p["x"] >= 0.3 * canvas["width"] or p["y"] >= 0.12 * canvas["height"], cand["layout_key"]


def test_qc_uses_dinov2_and_ranking_the_laion_adapter_where_configured(run: dict[str, Any]) -> None:
    with_models = run["name"] == "sam+compositor"
    for cand in run["candidates"]:
        dino = next(v for v in cand["qc"]["verdicts"] if v["check"] == "product_dino")
        if with_models:  # the compositor leaves the product untouched: its crops embed identically
            assert dino["status"] == "pass" and cand["qc"]["metrics"]["dino_cosine"] == pytest.approx(1.0, abs=1e-4)
        else:
            assert dino["status"] == "unchecked" and "ONBRAND_DINOV2_MODEL" in dino["reason"]
        if cand["aesthetic"] is not None:
            assert cand["qc"]["aesthetic"]["method"] == ("laion" if with_models else "classical")
            assert 0.0 <= cand["aesthetic"] <= 10.0
    summary = run["campaign"]["state"]["qc"]
    assert summary["aesthetic"] == ("laion" if with_models else "classical")
    assert bool(summary["dinov2"]) == with_models
    report = run["api"].get(f"/v1/campaigns/{run['campaign']['id']}/report").json()
    assert report["candidates"] == len(run["candidates"]) and report["policy"] == "weighted"
    assert report["checks"]["product_exact"]["pass_rate"] == 1.0
    cost = report["cost"]  # shared.costs: the GPU-queue stages' time per delivered result, priced
    assert cost["delivered"] == len(run["campaign"]["results"]) > 0
    assert {"segment", "generate", "qc"} <= set(cost["gpu_seconds_by_stage"]) and cost["gpu_seconds"] > 0
    assert cost["gpu_seconds_per_image"] == pytest.approx(cost["gpu_seconds"] / cost["delivered"], rel=1e-2)
    assert cost["usd_per_image"] == pytest.approx(
        cost["gpu_seconds_per_image"] * cost["gpu_price_usd_per_hour"] / 3600, rel=1e-2
    )
