"""The creative version of every candidate: the brand kit's overlay (logo, headline, CTA, legal) rendered on
the clean composite by workers.creative, in qc; read back by OCR in deliver.

qc renders it for a campaign with copy (``campaigns.copy``) and stores it next to the candidate image
(``<candidate>.creative.png``): its layout record goes into ``qc["creative"]``, its product-region proof into
``integrity["creative"]`` (the product is exact in the clean AND in the creative image), and the verdict
``overlay_layout`` (a brand rule) fails a layout that cannot keep the text off the product, reach a contrast of
4.5 after a scrim, keep the minimum font size or find room: such a candidate does not pass, so rank prefers
candidates whose creative works. The clean image stays what every other check (text_artefacts' OCR included)
sees: the overlay's text is expected, only in the creative.

deliver reads each result's creative back (workers.creative.verify): "failed" flags the result for review,
"unchecked" (a script the OCR model cannot read, e.g. Arabic) is never a pass: the result is not fully checked.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import select

from shared import integrity
from shared.brand_kit import BrandKit as StoredKit
from shared.brand_kit import CampaignCopy
from shared.db.models import Candidate, Result
from shared.db.session import session_scope
from shared.qc import DEFAULT_UNCHECKED
from shared.storage import get_storage
from workers.creative import schema
from workers.engine.context import StageContext
from workers.pipeline.common import ImageWriter, campaign_brand, load_image

CHECK = "overlay_layout"
OCR_CHECK = "overlay_ocr"
# Safe-zone labels that say where an overlay element goes; every other zone (a platform's UI, the AdChoices
# badge, a campaign zone for something else) is kept clear of the overlay as it is of the product.
PLACEMENT_LABELS = {e.value for e in schema.Element} | {"text"}


def creative_key(image_key: str) -> str:
    """Where a candidate's creative lives: next to it (``candidate.png`` -> ``candidate.creative.png``)."""
    stem, dot, ext = image_key.rpartition(".")
    return f"{stem}.creative.{ext}" if dot else f"{image_key}.creative"


def copy_of(stored: object) -> CampaignCopy | None:
    return CampaignCopy.model_validate(stored) if stored else None


# --- the brand kit, as the renderer takes it ---------------------------------------------------------------


def rgb(hex_color: str) -> schema.Rgb:
    value = hex_color.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


@lru_cache(maxsize=32)
def _logo(key: str, sha256: str) -> Image.Image:
    """A stored logo PNG, loaded once per process (keyed by its sha256 too: a replaced logo is reloaded)."""
    image = Image.open(io.BytesIO(get_storage().get(key)))
    image.load()
    return image.convert("RGBA")


@lru_cache(maxsize=32)
def _font_file(key: str, sha256: str) -> str:
    """A stored font written once per process to a local file (FreeType and fontTools read paths)."""
    directory = Path(tempfile.gettempdir()) / "onbrand-fonts"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{sha256}{Path(key).suffix.lower() or '.ttf'}"
    if not path.exists():
        tmp = directory / f".{sha256}.{os.getpid()}"
        tmp.write_bytes(get_storage().get(key))
        tmp.replace(path)  # atomic: another worker process may be writing the same font
    return str(path)


def render_kit(kit: StoredKit) -> schema.BrandKit:
    """The brand's stored kit as workers.creative renders it: logo and font loaded from storage, colours from
    hex, the layout rules as they are; an empty kit gives the vendored Noto Sans and neutral colours."""
    defaults = schema.BrandKit()
    logo = _logo(kit.logos[0].key, kit.logos[0].sha256) if kit.logos else None
    font = kit.font("headline") or kit.font("body")
    return schema.BrandKit(
        text_colors=tuple(rgb(c) for c in kit.text_colors) or defaults.text_colors,
        button_color=rgb(kit.button_color) if kit.button_color else defaults.button_color,
        logo=logo,
        font_path=_font_file(font.key, font.sha256) if font else None,
        rules=schema.LayoutRules(**kit.rules.model_dump()),
    )


def ingredients(kit: StoredKit) -> list[dict[str, Any]]:
    """The kit files a creative is made of (the primary logo, the font used), by sha256: its C2PA ingredients."""
    font = kit.font("headline") or kit.font("body")
    found = [{"role": "logo", "key": kit.logos[0].key, "sha256": kit.logos[0].sha256}] if kit.logos else []
    return found + ([{"role": "font", "key": font.key, "sha256": font.sha256, "format": "font/ttf"}] if font else [])


# --- qc: render, store, judge --------------------------------------------------------------------------------


def zones(found: list[dict[str, Any]], w: int, h: int) -> tuple[tuple[schema.Zone, ...], np.ndarray]:
    """The canvas's zones split: where overlay elements go (renderer zones), and a mask of what they keep clear."""
    placing: list[schema.Zone] = []
    clear = np.zeros((h, w), bool)
    for z in found:
        zone = schema.Zone(str(z.get("label") or "text"), *(float(z[k]) for k in ("x", "y", "width", "height")))
        if zone.label in PLACEMENT_LABELS:
            placing.append(zone)
        else:
            x0, y0, x1, y1 = zone.box(w, h)
            clear[max(0, y0) : y1, max(0, x0) : x1] = True
    return tuple(placing), clear


def render(
    image: Image.Image, layer: Image.Image, copy: CampaignCopy, kit: schema.BrandKit, canvas_zones: list[dict[str, Any]]
) -> schema.Creative:
    """The candidate's creative: the overlay laid out outside its placed product (every pixel the layer covers,
    soft edge included) and outside the zones it must keep clear."""
    from workers.creative import render as renderer

    w, h = image.size
    placing, clear = zones(canvas_zones, w, h)
    product = (np.asarray(layer.getchannel("A")) > 0) | clear
    request = schema.OverlayRequest(
        image.convert("RGB"), product, schema.Copy(copy.headline, copy.cta, copy.legal), kit, placing
    )
    return renderer.render(request)


def store(
    image_key: str,
    creative: schema.Creative,
    layer: Image.Image,
    writer: ImageWriter,
    then: Callable[[dict[str, Any]], None],
) -> str:
    """Store a rendered creative next to the candidate, in the writer's background; `then` gets its integrity
    entry (stored bytes' sha256 and the product region's proof, which must equal the clean image's) once it is
    stored. The creative's key."""
    key = creative_key(image_key)
    proof = {k: v for k, v in integrity.pixel_integrity(creative.image, layer).items() if k != "layer_sha256"}
    return writer.put_png(key, creative.image, lambda data: then(integrity.stored_ref(key, data, **proof)))


def verdict(layout: schema.Layout) -> dict[str, Any]:
    """overlay_layout: pass when the layout met every rule (text off the product, contrast >= 4.5, fonts at
    least the minimum, room for every element), else fail naming each rule it broke. Never unchecked: the
    renderer measured it."""
    worst = min((t.contrast for t in layout.texts), default=None)
    reason = (
        f"overlay laid out ({layout.template}): contrast >= {worst}, fonts {[t.font_px for t in layout.texts]} px"
        if layout.ok
        else "; ".join(layout.reasons)
    )
    return {
        "check": CHECK,
        "group": "brand",
        "value": worst,
        "threshold": schema.MIN_BODY_CONTRAST,
        "passed": layout.ok,
        "status": "pass" if layout.ok else "fail",
        "reason": reason[:500],
    }


def summary(creative: dict[str, Any]) -> dict[str, Any]:
    """A candidate's qc["creative"] as the completion event carries it: the layout (per text its contrast, font
    size and backing), whether a creative image exists, and the OCR verdict (None before deliver read it)."""
    layout = creative.get("layout") or {}
    texts = [{k: t.get(k) for k in ("element", "contrast", "font_px", "backing")} for t in layout.get("texts") or []]
    ocr = creative.get("ocr")
    return {
        "ok": bool(layout.get("ok")),
        "image": bool(creative.get("key")),
        "texts": texts,
        "ocr": None if ocr is None else {"status": ocr["status"], "checks": ocr.get("checks") or []},
    }


# --- deliver: OCR read-back ----------------------------------------------------------------------------------


def read_back(creative_image: Image.Image, layout: dict[str, Any]) -> dict[str, Any]:
    """The OCR verdict of a stored creative (workers.creative.verify), with how long it took."""
    from workers.creative import verify

    started = time.perf_counter()
    record = schema.Layout.model_validate(layout)
    checked = verify.verify(schema.Creative(creative_image.convert("RGB"), record))
    return {**checked.model_dump(mode="json"), "seconds": round(time.perf_counter() - started, 3)}


def review_reason(ocr: dict[str, Any]) -> dict[str, Any] | None:
    """What a result's review says of its read-back: failed -> advisory (a person looks), unchecked -> unchecked
    (never a pass), passed -> nothing."""
    if ocr["status"] == "passed":
        return None
    kind = "advisory" if ocr["status"] == "failed" else "unchecked"
    notes = "; ".join(f"{c['element']}: {c['reason']}" for c in ocr["checks"] if c["status"] != "passed")
    return {"check": OCR_CHECK, "kind": kind, "reason": f"creative OCR {ocr['status']}: {notes}"[:200]}


def verify_results(ctx: StageContext) -> dict[str, Any]:
    """Read every result's creative back (deliver, before signing): the verdict goes into qc["creative"]["ocr"],
    a failed read-back flags the result for review, an unchecked one makes it not fully checked (and, unless the
    brand's unchecked policy is "pass", flags it too). What deliver's run reports, with the time per result."""
    started, tally = time.perf_counter(), {"passed": 0, "failed": 0, "unchecked": 0}
    brand = campaign_brand(ctx)
    with session_scope() as session:
        rows = session.execute(
            select(Result, Candidate)
            .join(Candidate, Candidate.id == Result.candidate_id)
            .where(Result.of_current_round(ctx.campaign), Candidate.tenant_id == ctx.tenant_id)
            .order_by(Result.rank)
        ).all()
        for result, cand in rows:
            found = (cand.qc or {}).get("creative") or {}
            if not found.get("key"):
                continue
            ocr = read_back(load_image(found["key"]), found["layout"])
            cand.qc = {**cand.qc, "creative": {**found, "ocr": ocr}}
            flag(result, ocr, brand.unchecked or DEFAULT_UNCHECKED)
            tally[ocr["status"]] += 1
    read = sum(tally.values())
    seconds = time.perf_counter() - started
    return {"read": read, **tally, "seconds": round(seconds, 3), "per_result_s": round(seconds / max(1, read), 3)}


def flag(result: Result, ocr: dict[str, Any], unchecked_policy: str) -> None:
    """The read-back's mark on a result (idempotent: a retried deliver replaces its own reason)."""
    review = dict(result.review or {})
    reasons = [r for r in review.get("reasons") or [] if r.get("check") != OCR_CHECK]
    reason = review_reason(ocr)
    if reason and not (ocr["status"] == "unchecked" and unchecked_policy == "pass"):
        reasons.append(reason)
    result.review = {**review, "reasons": reasons}
    result.needs_review = bool(reasons) or bool(review.get("fallback"))
    if ocr["status"] != "passed":  # unchecked is never a pass
        result.fully_checked = False
