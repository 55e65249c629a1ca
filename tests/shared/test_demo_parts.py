"""The demo's parts that need no running system: the painted library, the webhook receiver
and the contact sheet."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.cli.demo.library import build_library
from shared.cli.demo.run import WebhookReceiver, order_candidates, stage_timings, thumb_name, write_contact_sheet


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return build_library(tmp_path_factory.mktemp("library"))


def _by_kind(items: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [i for i in items if i["metadata"]["kind"] == kind]


# --------------------------------------------------------------------------- library


def test_library_is_deterministic(library: list[dict[str, Any]], tmp_path: Path) -> None:
    again = build_library(tmp_path / "again")
    assert [Path(i["path"]).name for i in again] == [Path(i["path"]).name for i in library]
    for first, second in zip(library, again, strict=True):
        assert Path(first["path"]).read_bytes() == Path(second["path"]).read_bytes(), first["path"]
        assert first["metadata"] == second["metadata"]


def test_library_has_products_with_real_alpha(library: list[dict[str, Any]]) -> None:
    cutouts = [i for i in _by_kind(library, "product") if Image.open(i["path"]).mode == "RGBA"]
    assert len(cutouts) >= 3
    for item in cutouts:
        alpha = np.asarray(Image.open(item["path"]).getchannel("A"))
        assert (alpha == 0).any() and (alpha == 255).any(), item["path"]
        soft = ((alpha > 0) & (alpha < 255)).mean()
        assert 0 < soft < 0.05, "antialiased edges: a thin band of partial alpha"


def test_library_has_an_opaque_studio_shot(library: list[dict[str, Any]]) -> None:
    opaque = [i for i in _by_kind(library, "product") if Image.open(i["path"]).mode == "RGB"]
    assert len(opaque) == 1
    rgb = np.asarray(Image.open(opaque[0]["path"]))
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    assert border.mean() > 215, "near-white backdrop, so GrabCut can find the product"


def test_library_backgrounds_are_large(library: list[dict[str, Any]]) -> None:
    backgrounds = _by_kind(library, "background")
    assert len(backgrounds) >= 4
    for item in backgrounds:
        image = Image.open(item["path"])
        assert min(image.size) >= 1024 and image.mode == "RGB", item["path"]
        assert np.asarray(image).std() > 10, "a picture, not a flat fill"


def test_library_metadata_finds_the_brief(library: list[dict[str, Any]]) -> None:
    for item in library:
        meta = item["metadata"]
        assert set(meta) == {"kind", "title", "description", "tags", "attributes", "kpis"}
        assert meta["title"] and meta["description"] and meta["tags"]
    texts: dict[str, list[str]] = {i["metadata"]["kind"]: [] for i in library}
    for item in library:
        meta = item["metadata"]
        texts[meta["kind"]].append(" ".join([meta["title"], meta["description"], *meta["tags"]]).lower())
    assert any("running shoe" in t for t in texts["product"])
    assert any("street" in t and "sunset" in t and "urban" in t for t in texts["background"])


# --------------------------------------------------------------------------- webhook receiver


def test_webhook_receiver_records_headers_and_body(tmp_path: Path) -> None:
    log = tmp_path / "webhooks.jsonl"
    body = json.dumps({"type": "campaign.completed", "data": {"campaign_id": "c1"}})
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": "1700000000",
        "webhook-signature": "v1,abc",
        "content-type": "application/json",
    }
    with WebhookReceiver(log) as receiver:
        response = httpx.post(receiver.url, content=body, headers=headers, timeout=5)
        assert response.status_code == 204
        assert receiver.wait_for({"campaign.completed"}, timeout=2) == json.loads(body)
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(lines) == 1
    entry = lines[0]
    assert entry["method"] == "POST" and entry["path"] == "/hooks/onbrand"
    assert entry["body"] == body and isinstance(entry["received_at"], float)
    for key, value in headers.items():
        assert entry["headers"][key] == value


def test_webhook_receiver_wait_for_times_out(tmp_path: Path) -> None:
    with WebhookReceiver(tmp_path / "w.jsonl") as receiver:
        assert receiver.wait_for({"campaign.failed"}, timeout=0.2) is None


# --------------------------------------------------------------------------- contact sheet


def _verdicts(passed: bool) -> list[dict[str, Any]]:
    return [
        {
            "check": "product_exact",
            "value": 1.0 if passed else 0.91,
            "threshold": 0.999,
            "passed": passed,
            "reason": "share of identical product pixels",
        },
        {"check": "product_in_frame", "value": 1.0, "threshold": 1.0, "passed": True, "reason": "inside <canvas>"},
    ]


def _candidate(
    key: str, row: int, col: int, rank: int | None, passed: bool, aesthetic: float | None, rnd: int = 0
) -> dict[str, Any]:
    qc: dict[str, Any] = {
        "metrics": {},
        "verdicts": _verdicts(passed),
        "guidelines": {
            "verdicts": [
                {
                    "guideline": "brand_1",
                    "status": "unchecked",
                    "flexible": True,
                    "weight": 0.5,
                    "reason": "a written guideline needs a vision-language model",
                }
            ]
        },
        "policy": {"name": "flexible", "passed": passed, "weighted_share": 1.0, "relaxed": ["brand_2"] if rank else []},
        "cluster": {"id": f"c-{key}", "size": 2, "best": key, "members": [key, "other"]},
    }
    if aesthetic is not None:
        qc["aesthetic"] = {"score": aesthetic, "parts": {"sharpness": 0.8, "exposure": 0.6, "thirds": 0.4}}
    return {
        "id": f"id-{key}",
        "round": rnd,
        "layout_key": key,
        "generator": "compositor",
        "integrity": {},
        "placement": {
            "x": 10,
            "y": 20,
            "scale": 0.5,
            "rotation": -15.0,
            "row": row,
            "col": col,
            "canvas": {"width": 1024, "height": 1024},
        },
        "image_url": "http://x/c.png",
        "layer_url": "http://x/l.png",
        "qc": qc,
        "passed": passed,
        "aesthetic": aesthetic,
        "rank": rank,
        "excluded_reason": None if passed else "failed QC: product_exact",
    }


def _campaign() -> dict[str, Any]:
    return {
        "id": "cmp-1",
        "status": "completed",
        "brief": "the running shoe on an urban street at sunset",
        "state": {
            "caption": {"caption": "Stride into the golden hour."},
            "decompose": {"products": ["running shoe"], "backgrounds": ["urban street at sunset"]},
            "retrieve": {
                "product_title": "Stride Velocity running shoe, red",
                "product_score": 0.71,
                "background_caption": "Urban street at sunset",
                "background_score": 0.66,
                "entities": [
                    {
                        "text": "running shoe",
                        "kind": "product",
                        "matches": [{"title": "Stride Velocity", "score": 0.71}],
                    }
                ],
            },
        },
        "stages": [
            {
                "stage": "decompose",
                "status": "succeeded",
                "done": 1,
                "total": 1,
                "started_at": "2026-01-01T00:00:00+00:00",
                "finished_at": "2026-01-01T00:00:01.500000+00:00",
            },
            {
                "stage": "generate",
                "status": "succeeded",
                "done": 3,
                "total": 3,
                "started_at": "2026-01-01T00:00:02+00:00",
                "finished_at": "2026-01-01T00:00:06+00:00",
            },
            {"stage": "rank", "status": "pending", "done": 0, "total": 1, "started_at": None, "finished_at": None},
        ],
        "results": [],
    }


def test_contact_sheet_lists_every_candidate_and_check(tmp_path: Path) -> None:
    candidates = [
        _candidate("1024x1024-r3c1-m15", 3, 1, 1, True, 7.5),
        _candidate("1024x1024-r2c2-p0", 2, 2, None, True, 6.1),
        _candidate("1024x1024-r1c3-p15", 1, 3, None, False, None),
        _candidate("1024x1024-r1c3-p15", 1, 3, None, False, None, rnd=1),
    ]
    (tmp_path / "candidates").mkdir()
    for cand in candidates:
        Image.new("RGB", (8, 8), "#E4572E").save(tmp_path / "candidates" / f"{thumb_name(cand)}.png")
    report = {
        "policy": "flexible",
        "outcomes": {"ranked": 1, "failed": 2},
        "relaxed": [{"id": "brand_2", "weight": 0.5}],
        "checks": {"product_exact": {"pass": 2, "fail": 2, "unchecked": 0, "pass_rate": 0.5}},
    }
    path = write_contact_sheet(tmp_path, _campaign(), candidates, report=report)
    page = path.read_text()
    assert path == tmp_path / "contact-sheet.html" and page.startswith("<!doctype html>")
    for cand in candidates:
        assert cand["layout_key"] in page
        src = f"candidates/{thumb_name(cand)}.png"
        assert src in page and (tmp_path / src).exists()
    for check in ("product_exact", "product_in_frame"):
        assert check in page
    assert "inside &lt;canvas&gt;" in page, "reasons are escaped into the hover title"
    assert 'class="chip unchecked"' in page and "brand_1" in page  # guideline verdicts, unchecked ones too
    assert "flexible policy: pass (weighted 1.00), relaxed brand_2" in page and "cluster c-" in page
    assert "QC report · flexible policy" in page and "brand_2 (weight 0.5)" in page and "0.50 (2 pass" in page
    assert 'class="badge r1"' in page and 'href="rank-1.png"' in page
    assert "Stride into the golden hour." in page and "failed QC: product_exact" in page
    assert page.index("r3c1-m15") < page.index("r2c2-p0") < page.index("r1c3-p15"), "ranked first"
    assert "http://" not in page and "https://" not in page, "self-contained: no remote assets"


def test_order_and_timings() -> None:
    cands = [
        _candidate("a", 1, 1, None, False, None),
        _candidate("b", 1, 2, 2, True, 5.0),
        _candidate("c", 1, 3, None, True, 9.0),
        _candidate("d", 2, 1, 1, True, 4.0),
    ]
    assert [c["layout_key"] for c in order_candidates(cands)] == ["d", "b", "c", "a"]
    timings = {t["stage"]: t for t in stage_timings(_campaign())}
    assert timings["decompose"]["seconds"] == pytest.approx(1.5)
    assert timings["generate"]["start"] == pytest.approx(2.0)
    assert timings["rank"]["seconds"] is None
