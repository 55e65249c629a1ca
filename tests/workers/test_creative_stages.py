"""The creative version in the pipeline (workers/pipeline/overlay.py), on a real database and object store, driven
in-process from plan to deliver (as tests/workers/test_qc_stages.py): qc renders each candidate's creative with the
brand kit and judges its layout (overlay_layout), deliver reads it back by OCR and signs it with C2PA, and the
integrity record and `onbrand verify CAMPAIGN_ID` cover the clean and the creative image."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from shared import integrity, provenance
from shared.brand_kit import BrandKit, KitRules
from shared.cli.verify import verify_campaign
from shared.db.models import Brand, Campaign, Candidate, Result, Tenant, WebhookDelivery
from shared.db.session import session_scope
from shared.storage import campaign_key, get_storage
from tests import stage_outputs as outputs
from workers.engine import runner
from workers.engine.runner import execute, stage_function
from workers.jobs import push
from workers.pipeline import overlay
from workers.pipeline.common import save_png

HEADLINE_DE = "Frisch für jeden Tag"
CTA_AR = "تسوقوا الآن"
SQUARE = {"width": 320, "height": 320}


@pytest.fixture
def world(fresh_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    from shared.config import get_settings

    monkeypatch.setenv("ONBRAND_HOME", str(tmp_path))
    monkeypatch.setenv("ONBRAND_LLM_BACKEND", "rules")
    monkeypatch.setenv("ONBRAND_ROTATIONS", "[0]")
    get_settings.cache_clear()
    get_storage.cache_clear()
    queue: list[tuple[Any, ...]] = []
    monkeypatch.setattr(runner, "send", lambda *args: queue.append(args))
    tenant = Tenant(id=uuid.uuid4(), name="acme")
    with session_scope() as session:
        session.add(tenant)
    yield {"tenant_id": tenant.id, "queue": queue}
    get_settings.cache_clear()
    get_storage.cache_clear()


def bottle(w: int = 60, h: int = 130) -> Image.Image:
    arr = np.zeros((h, w, 4), np.uint8)
    arr[:, :, :3] = (40, 120, 70)
    arr[40:80, 6:-6, :3] = (230, 220, 200)
    arr[:, :, 3] = 255
    return Image.fromarray(arr, "RGBA")


def make_campaign(world: dict[str, Any], copy: dict[str, str] | None, kit: BrandKit | None = None) -> uuid.UUID:
    tenant_id, campaign_id = world["tenant_id"], uuid.uuid4()
    brand = Brand(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        name="Stride",
        palette=["#1F6FEB", "#F2CC60"],
        qc_thresholds={},
        kit=(kit or BrandKit()).model_dump(mode="json"),
    )
    cutout = save_png(campaign_key(tenant_id, campaign_id, "segment/cutout.png"), bottle())
    state = {
        "segment": outputs.segment(cutout),
        "scale": outputs.scale(0.3),
        "retrieve": outputs.retrieve(),
        "decompose": outputs.decompose(["bottle"], ["studio"]),
        "caption": outputs.caption("a green bottle in a bright studio", "blurry", subject="a green bottle"),
    }
    with session_scope() as session:
        session.add(brand)
        session.flush()
        session.add(
            Campaign(
                id=campaign_id,
                tenant_id=tenant_id,
                brand_id=brand.id,
                brief="a bottle in a studio",
                sizes=[SQUARE],
                safe_zones=[],
                copy=copy,
                webhook_url="https://example.com/hooks/onbrand",  # the completion event is written (not sent)
                state=state,
                top_k=2,
                qc_policy="strict",
                max_retry_attempts=0,
                max_prompt_revisions=0,
            )
        )
    return campaign_id


def drive(world: dict[str, Any], campaign_id: uuid.UUID, limit: int = 40) -> Campaign:
    queue = world["queue"]
    queue.append(("onbrand.plan", str(campaign_id), 0, 0))
    for _ in range(limit):
        if not queue:
            break
        name, ident, *rest = queue.pop(0)
        if name != "onbrand.send_webhook":
            stage = name.removeprefix("onbrand.")
            execute(stage, ident, *rest, stage_function(stage))
    assert not queue, "the campaign did not settle"
    with session_scope() as session:
        campaign = session.get(Campaign, campaign_id)
        session.expunge(campaign)
    return campaign


def rows(campaign_id: uuid.UUID) -> tuple[list[Candidate], list[tuple[Result, Candidate]]]:
    with session_scope() as session:
        cands = list(session.scalars(select(Candidate).where(Candidate.campaign_id == campaign_id)))
        query = (
            select(Result, Candidate)
            .join(Candidate, Candidate.id == Result.candidate_id)
            .where(Result.campaign_id == campaign_id)
            .order_by(Result.rank)
        )
        results = [(result, cand) for result, cand in session.execute(query)]
        session.expunge_all()
    return cands, results


def completion(campaign_id: uuid.UUID) -> list[dict[str, Any]]:
    with session_scope() as session:
        query = select(WebhookDelivery.payload).where(
            WebhookDelivery.campaign_id == campaign_id, WebhookDelivery.event_type == "campaign.completed"
        )
        return list(session.scalars(query))


def verdict(cand: Candidate) -> dict[str, Any]:
    return next(v for v in cand.qc["verdicts"] if v["check"] == overlay.CHECK)


def png(key: str) -> Image.Image:
    image = Image.open(io.BytesIO(get_storage().get(key)))
    image.load()
    return image


def test_each_candidate_gets_a_creative_read_back_signed_and_verified_in_both_versions(world: dict[str, Any]) -> None:
    campaign = drive(world, make_campaign(world, {"headline": HEADLINE_DE, "cta": CTA_AR}))
    assert campaign.status == "completed", campaign.error
    cands, results = rows(campaign.id)
    assert len(results) == 2
    for cand in cands:  # qc: every candidate has a layout record, a verdict, and a stored creative
        layout = cand.qc["creative"]["layout"]
        assert verdict(cand)["status"] == "pass" and layout["ok"], layout["reasons"]
        assert [t["element"] for t in layout["texts"]] == ["headline", "cta"]
        assert all(t["contrast"] >= 4.5 for t in layout["texts"])
        assert cand.qc["creative"]["key"] == overlay.creative_key(cand.image_key or "")
        assert cand.integrity["creative"]["exact_fraction"] == 1.0
        assert cand.integrity["creative"]["product_sha256"] == cand.integrity["product_sha256"]
        # the clean image is untouched by the overlay (its OCR check for stray text sees no copy)
        assert not np.array_equal(np.asarray(png(cand.image_key or "")), np.asarray(png(cand.qc["creative"]["key"])))
    for result, cand in results:  # deliver: German read back by PP-OCR, Arabic by Tesseract, both exact; signed
        ocr = cand.qc["creative"]["ocr"]
        assert ocr["status"] == "passed", ocr
        assert [(c["element"], c["status"], c["reader"]) for c in ocr["checks"]] == [
            ("headline", "passed", "pp-ocr"),
            ("cta", "passed", "tesseract"),
        ]
        assert not any(r["check"] == overlay.OCR_CHECK for r in (result.review or {}).get("reasons", []))
        signed = get_storage().get(provenance.delivered_creative_key(cand.integrity) or "")
        reading = provenance.read(signed, provenance.trust_anchors(_settings()))
        assert reading.state == "Trusted", reading.failures
        titles = [i["title"] for i in reading.manifest["ingredients"]]
        assert any(t.startswith("clean image") for t in titles)
        assert reading.integrity is not None and reading.integrity["product_sha256"] == cand.integrity["product_sha256"]
    (event,) = completion(campaign.id)  # the completion event carries each result's layout and OCR verdict
    assert [r["creative"]["ocr"]["status"] for r in event["results"]] == ["passed", "passed"]
    assert all(r["creative"]["image"] and r["creative"]["ok"] for r in event["results"])
    assert "overlay_ocr" not in event["checked"]["message"]

    result, cand = results[0]  # the DAM push sends both images; the sidecar names the creative and its verdicts
    objects = push.build_objects(campaign, result, cand, datetime.now(UTC))
    assert [o.name for o in objects] == ["rank-1.png", "rank-1.creative.png", "rank-1.json"]
    sidecar = json.loads(objects[2].body)
    assert sidecar["creative"]["name"] == "rank-1.creative.png" and sidecar["creative"]["ocr"]["status"] == "passed"
    assert sidecar["creative"]["sha256"] == hashlib.sha256(objects[1].body).hexdigest()
    assert [t["element"] for t in sidecar["creative"]["texts"]] == ["headline", "cta"]
    urls = push.PresignedUrls([{"image": "https://i", "sidecar": "https://s"}])  # no creative URL: not sent there
    assert [urls.url(1, o) for o in objects] == ["https://i", None, "https://s"]

    checked = verify_campaign(campaign.id)  # `onbrand verify CAMPAIGN_ID`: both versions of every result
    assert len(checked) == 2 and all(c.report.ok for c in checked), [c.report.reasons for c in checked]

    _, cand = results[0]  # a creative edited after the fact fails verification, naming the version
    key = cand.integrity["creative"]["key"]
    tampered = np.asarray(png(key)).copy()
    layer = np.asarray(png(cand.layer_key or ""))
    ys, xs = np.nonzero(layer[:, :, 3] == 255)
    tampered[ys[0], xs[0]] ^= 0xFF
    buf = io.BytesIO()
    Image.fromarray(tampered).save(buf, "PNG")
    get_storage().put(key, buf.getvalue(), "image/png")
    report = next(c.report for c in verify_campaign(campaign.id) if c.candidate_id == cand.id)
    assert not report.ok and report.exact_fraction < 1.0
    assert any(r.startswith("creative: ") for r in report.reasons), report.reasons


def test_a_layout_that_cannot_fit_fails_overlay_layout_and_nothing_passes(world: dict[str, Any]) -> None:
    # A 64 px minimum font cannot hold a long headline on a 320 px canvas: no room, whatever the product's place.
    kit = BrandKit(rules=KitRules(min_font_px=64))
    copy = {"headline": "Frische Laufschuhe für jeden einzelnen Tag", "cta": "Jetzt kaufen"}
    campaign = drive(world, make_campaign(world, copy, kit))
    cands, results = rows(campaign.id)
    assert cands and all(verdict(c)["status"] == "fail" for c in cands)
    assert all("no room" in verdict(c)["reason"] and "64px" in verdict(c)["reason"] for c in cands)
    assert all(not c.passed and "overlay_layout" in (c.qc["policy"]["failed"]) for c in cands)
    assert all(c.qc["creative"]["key"] is None and "creative" not in c.integrity for c in cands)
    assert campaign.status == "partial"
    # overlay_layout is a brand rule, not a gating check: the best stand in, flagged, with no creative to show
    for result, cand in results:
        assert result.review["fallback"] and result.needs_review and not result.fully_checked
        assert provenance.delivered_creative_key(cand.integrity) is None


def test_a_campaign_from_the_product_alone_carries_the_suggested_copy_and_one_with_a_brief_none(
    world: dict[str, Any],
) -> None:
    inferred = make_campaign(world, None)
    suggested = {"headline": "Fresh green bottle", "cta": "Shop now"}
    with session_scope() as session:
        campaign = session.get(Campaign, inferred)
        assert campaign is not None
        brief = {"status": "inferred", "brief": "the bottle in a studio", "copy_suggestions": suggested}
        campaign.brief, campaign.state = "", {**campaign.state, "brief_inferred": brief}
    cands, _ = rows(drive(world, inferred).id)
    texts = {t["element"]: t["text"] for t in cands[0].qc["creative"]["layout"]["texts"]}
    assert texts == {"headline": suggested["headline"], "cta": suggested["cta"]}
    assert all(c.qc["creative"]["key"] for c in cands)

    plain = drive(world, make_campaign(world, None))  # a brief and no copy: the clean version only
    assert all("creative" not in (c.qc or {}) for c in rows(plain.id)[0])


def test_read_back_flags_a_failed_result_and_unchecked_is_never_a_pass() -> None:
    failed = {"status": "failed", "checks": [{"element": "cta", "status": "failed", "reason": "read 'Shap now'"}]}
    result = Result(fully_checked=True, needs_review=False, review={"fallback": False, "reasons": []})
    overlay.flag(result, failed, "review")
    overlay.flag(result, failed, "review")  # a retried deliver replaces its own reason
    assert result.needs_review and not result.fully_checked
    assert [(r["check"], r["kind"]) for r in result.review["reasons"]] == [(overlay.OCR_CHECK, "advisory")]

    unchecked = {"status": "unchecked", "checks": [{"element": "cta", "status": "unchecked", "reason": "Arabic"}]}
    opted = Result(fully_checked=True, needs_review=False, review={"fallback": False, "reasons": []})
    overlay.flag(opted, unchecked, "pass")  # the brand opted in to unchecked rules: unflagged, still not checked
    assert not opted.needs_review and not opted.fully_checked

    passed = Result(fully_checked=True, needs_review=False, review={"fallback": False, "reasons": []})
    overlay.flag(passed, {"status": "passed", "checks": []}, "review")
    assert passed.fully_checked and not passed.needs_review


def test_platform_zones_are_kept_clear_and_text_zones_hold_the_text() -> None:
    found = [
        {"label": "platform-header", "x": 0.0, "y": 0.0, "width": 1.0, "height": 0.25},
        {"label": "headline", "x": 0.0, "y": 0.7, "width": 1.0, "height": 0.3},
    ]
    placing, clear = overlay.zones(found, 200, 100)
    assert [z.label for z in placing] == ["headline"]
    assert clear[:25].all() and not clear[25:].any()


def test_verify_versions_names_the_version_whose_bytes_were_replaced() -> None:
    from tests.factories import stored_composite

    storage = Memory()
    data, record = stored_composite(storage)
    image = Image.open(io.BytesIO(data))
    source, mask = storage.get(record["source"]["key"]), storage.get(record["mask"]["key"])
    record = {**record, "creative": {"key": "x", "sha256": integrity.sha256(data)}}
    ok = integrity.verify_versions({"clean": (image, data), "creative": (image, data)}, source, mask, record)
    assert ok.ok, ok.reasons
    other = data + b"\x00"  # the same pixels in other bytes: not the file the record names
    bad = integrity.verify_versions({"clean": (image, data), "creative": (image, other)}, source, mask, record)
    assert not bad.ok and bad.reasons == ["creative: the stored bytes do not hash to the recorded sha256"]


class Memory:
    """Object storage as stored_composite uses it (put, get), in memory."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self.objects[key] = data

    def get(self, key: str) -> bytes:
        return self.objects[key]


def _settings() -> Any:
    from shared.config import get_settings

    return get_settings()
