"""Every size is a deliverable, over real processes (as tests/e2e/test_e2e.py): a campaign asking for a
square and a 9:16 size on the embedded defaults gets top_k results in EACH size (not top_k over both), each
result naming its size and its rank within it, grouped per size in the campaign resource, the completion
event and the contact sheet; every result's product pixels still verify from the source."""

from __future__ import annotations

import io
import json
import time
from collections import Counter
from typing import Any

import pytest
from PIL import Image, ImageDraw

from shared.cli.demo.run import render_contact_sheet
from tests.factories import api_client, verify, wait_terminal
from tests.system import System
from workers.evaluation import qc_set

pytestmark = pytest.mark.slow

TOP_K = 2
SQUARE, PORTRAIT = (256, 256), (256, 455)  # 1:1 and 9:16, the smallest sizes: CI time
COPY = {"headline": "Frisch für jeden Tag", "cta": "تسوقوا الآن"}  # German headline, Arabic call to action


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def finished(system: System) -> dict[str, Any]:
    import numpy as np

    api = api_client(system, system.tenant("sizes")["api_key"])
    brand = api.post("/v1/brands", json={"name": "Sizes", "palette": ["#2F4858", "#F6AE2D"]}).json()["id"]
    logo = Image.new("RGBA", (160, 64), (0, 0, 0, 0))  # the brand kit's logo: every creative carries it
    ImageDraw.Draw(logo).rounded_rectangle((0, 0, 159, 63), radius=16, fill=(47, 72, 88, 255))
    added = api.post(f"/v1/brands/{brand}/kit/logos", files={"file": ("logo.png", _png(logo), "image/png")})
    assert added.status_code == 201, added.text
    photo = qc_set.source_photo("mug", "heldout", np.random.default_rng(3))[0]
    meta = {"kind": "product", "title": "mug", "brand_id": brand}
    files = {"file": ("mug.png", _png(photo), "image/png")}
    uploaded = api.post("/v1/assets", files=files, data={"metadata": json.dumps(meta)})
    assert uploaded.status_code in (200, 201), uploaded.text
    body = {
        "brand_id": brand,
        "brief": "the product on a clean studio backdrop",
        "product_asset_ids": [uploaded.json()["id"]],
        "sizes": [{"width": w, "height": h} for w, h in (SQUARE, PORTRAIT)],
        "top_k": TOP_K,
        "max_prompt_revisions": 0,
        "copy": COPY,  # every result also gets a creative version (tests below)
    }
    started = time.monotonic()
    created = api.post("/v1/campaigns", json=body)
    assert created.status_code == 202, created.text
    campaign = wait_terminal(api, created.json()["id"], timeout=600)
    print(f"two-size campaign: {time.monotonic() - started:.1f} s, {campaign['state']['qc']['candidates']} candidates")
    candidates = api.get(f"/v1/campaigns/{campaign['id']}/candidates?limit=100").json()["items"]
    return {"campaign": campaign, "candidates": candidates, "verified": verify(system, campaign["id"])}


def test_each_size_gets_its_own_top_k(finished: dict[str, Any]) -> None:
    campaign = finished["campaign"]
    assert campaign["status"] == "completed", campaign["error"]
    results = campaign["results"]
    per_size = Counter((r["size"]["width"], r["size"]["height"]) for r in results)
    assert per_size == {SQUARE: TOP_K, PORTRAIT: TOP_K}
    for r in results:  # the size a result names is its canvas, and its image is that size
        canvas = r["placement"]["canvas"]
        assert (canvas["width"], canvas["height"]) == (r["size"]["width"], r["size"]["height"])
    assert [r["rank"] for r in results] == list(range(1, 2 * TOP_K + 1))
    assert [(r["size"]["label"], r["size_rank"]) for r in results] == [
        ("256x256", 1),
        ("256x256", 2),
        ("256x455", 1),
        ("256x455", 2),
    ]
    groups = campaign["results_by_size"]
    assert [(g["size"]["label"], g["delivered"], g["top_k"]) for g in groups] == [
        ("256x256", TOP_K, TOP_K),
        ("256x455", TOP_K, TOP_K),
    ]
    assert [i for g in groups for i in g["result_ids"]] == [r["id"] for r in results]
    assert finished["verified"].endswith(f"verified {2 * TOP_K}/{2 * TOP_K}")


def test_both_canvases_were_planned_and_generated(finished: dict[str, Any]) -> None:
    plan = finished["campaign"]["state"]["plan"]
    assert plan["canvases"] == [list(SQUARE), list(PORTRAIT)]
    made = Counter(
        (c["placement"]["canvas"]["width"], c["placement"]["canvas"]["height"]) for c in finished["candidates"]
    )
    assert set(made) == {SQUARE, PORTRAIT}


def test_the_contact_sheet_groups_results_by_size(finished: dict[str, Any]) -> None:
    sheet = render_contact_sheet(finished["campaign"], finished["candidates"])
    assert sheet.count('class="section size-group"') == 2
    assert "256×256 · 2 of 2 results" in sheet and "256×455 · 2 of 2 results" in sheet


def test_every_result_has_a_creative_read_back_exact_and_signed(finished: dict[str, Any], system: System) -> None:
    """The creative version of each result (brand-kit overlay, with the logo uploaded to the brand's kit): the
    German headline read back exactly by PP-OCR, the Arabic CTA by Tesseract (PP-OCR has no Arabic), contrast
    >= 4.5, the product's pixels exact in the clean and the creative image, a valid C2PA manifest on both;
    `onbrand verify IMAGE` on a creative passes."""
    import numpy as np

    from shared import provenance
    from tests.factories import httpx_get

    anchors = (system.home / "c2pa" / "root.pem").read_bytes()
    started = time.monotonic()
    for r in finished["campaign"]["results"]:
        creative = r["creative"]
        assert creative["ok"] and [t["element"] for t in creative["texts"]] == ["headline", "cta"]
        assert r["qc"]["creative"]["layout"]["logo"]["box"], "the brand's logo is on the creative"
        assert all(t["contrast"] >= 4.5 for t in creative["texts"]), creative["texts"]
        assert creative["ocr"]["status"] == "passed", creative["ocr"]
        (headline, cta) = creative["ocr"]["checks"]
        assert (headline["status"], headline["reason"]) == ("passed", "read back exactly"), headline
        assert headline["compared"][0] == headline["compared"][1] == "frischfürjedentag"
        assert (cta["status"], cta["reader"]) == ("passed", "tesseract"), cta
        assert cta["compared"][0] == cta["compared"][1] == "تسوقواالآن"
        clean, made = httpx_get(r["image_url"]).getvalue(), httpx_get(r["creative_url"]).getvalue()
        for data in (clean, made):
            reading = provenance.read(data, anchors)
            assert reading.state == "Trusted", reading.failures
            assert (reading.integrity or {})["exact_fraction"] == 1.0
        titles = [i["title"] for i in reading.manifest["ingredients"]]  # the creative's: the clean image and logo
        assert any(t.startswith("clean image") for t in titles) and any(t.startswith("logo") for t in titles)
        layer = np.asarray(Image.open(httpx_get(r["layer_url"])).convert("RGBA"))
        opaque = layer[:, :, 3] == 255
        pixels = [np.asarray(Image.open(io.BytesIO(d)).convert("RGB"))[opaque] for d in (clean, made)]
        assert np.array_equal(pixels[0], layer[:, :, :3][opaque]) and np.array_equal(pixels[1], pixels[0])
        assert not np.array_equal(*(np.asarray(Image.open(io.BytesIO(d)).convert("RGB")) for d in (clean, made)))
    results = finished["campaign"]["results"]
    render_ms = [r["qc"]["creative"]["layout"]["render_ms"] for r in results]
    ocr_s = [r["creative"]["ocr"]["seconds"] for r in results]
    print(f"creatives checked in {time.monotonic() - started:.1f} s; render ms {render_ms}; OCR s {ocr_s}")


def test_onbrand_verify_image_passes_on_a_creative(finished: dict[str, Any], system: System, tmp_path: Any) -> None:
    import subprocess

    from shared.cli.procs import onbrand_cmd
    from tests.factories import httpx_get

    path = tmp_path / "rank-1.creative.png"
    path.write_bytes(httpx_get(finished["campaign"]["results"][0]["creative_url"]).getvalue())
    done = subprocess.run(onbrand_cmd("verify", str(path)), env=system.env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("verified"), done.stdout + done.stderr
