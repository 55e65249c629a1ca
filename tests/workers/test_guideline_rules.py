"""Written guidelines routed to measurable rules, measured on real composites (the real compositor), and the
guideline check on the rules backend giving mapped brand guidelines real verdicts."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from shared.config import Settings
from tests.factories import cutout
from workers.checks import guideline, guideline_rules
from workers.checks.guideline_rules import Rule, route
from workers.checks.text_ocr import Background
from workers.imaging import composition, compositor

PALETTE = ["#1E4FA0", "#F2C94C"]
SIZE = 512


@pytest.mark.parametrize(
    ("text", "kind", "params"),
    [
        ("Logo/product must not be smaller than 20 % of the frame", "min_product_area", {"min": 0.2}),
        ("The product should fill at least 30% of the image.", "min_product_area", {"min": 0.3}),
        ("Das Produkt nimmt mindestens 25 % der Bildfläche ein", "min_product_area", {"min": 0.25}),
        ("The product must not cover more than 60 % of the canvas", "max_product_area", {"max": 0.6}),
        ("Keep a clear space of 8% around the product", "clear_margin", {"margin": 0.08}),
        ("Always leave a margin.", "clear_margin", {"margin": guideline_rules.DEFAULT_MARGIN}),
        ("Schutzzone von 10 % einhalten", "clear_margin", {"margin": 0.1}),
        ("No text on the image", "no_text", {}),
        ("Keine Schrift im Bild.", "no_text", {}),
        ("Never add watermarks", "no_text", {}),
        ("Use only brand colours", "brand_colours_only", {"min_share": guideline_rules.DEFAULT_PALETTE_SHARE}),
        ("Nur Markenfarben verwenden", "brand_colours_only", {"min_share": guideline_rules.DEFAULT_PALETTE_SHARE}),
        ("Bright, light backgrounds", "light_background", {"min": guideline_rules.LIGHT_MIN}),
        ("Heller Hintergrund", "light_background", {"min": guideline_rules.LIGHT_MIN}),
        ("Use a dark background", "dark_background", {"max": guideline_rules.DARK_MAX}),
        ("Avoid dark backgrounds", "light_background", {"min": guideline_rules.DARK_MAX}),  # not dark != light
        ("The product is centred in the frame", "product_centred", {"tolerance": guideline_rules.CENTRE_TOL}),
        ("Das Produkt steht mittig", "product_centred", {"tolerance": guideline_rules.CENTRE_TOL}),
        ("product fully visible", "product_in_frame", {}),
        ("Never crop the product", "product_in_frame", {}),
        ("Das Produkt ist vollständig sichtbar", "product_in_frame", {}),
        ("product pixels are never altered", "product_unaltered", {}),
        ("Do not retouch the packshot", "product_unaltered", {}),
        ("Die Flasche bleibt unverändert", "product_unaltered", {}),
    ],
)
def test_measurable_guidelines_are_mapped(text: str, kind: str, params: dict[str, float]) -> None:
    routed = route(text)
    assert routed.rule == Rule(kind, params), routed
    assert routed.reason and routed.rule.record()["measures"] == routed.rule.describe()


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("No people in the picture", "person detector"),
        ("Keine Menschen", "person detector"),
        ("The logo must be at least 10% of the frame", "logo detector"),
        ("No dogs or cats", "object detector"),
        ("Never show competitor products", "vision-language model"),
        ("The mood is premium and playful", "vision-language model"),
        ("Show the brand's red on the product.", "vision-language model"),
    ],
)
def test_guidelines_that_need_a_model_stay_unmapped_with_the_reason(text: str, why: str) -> None:
    routed = route(text)
    assert routed.rule is None and why in routed.reason


def composite(share: float = 0.3, index: int = 13, background: Image.Image | None = None) -> dict[str, Image.Image]:
    cut = cutout()
    layout = composition.plan([(SIZE, SIZE)], cut.size, cutout=cut, scale_share=share).layouts[index]
    layer = composition.place(cut, layout)
    bg = background or compositor.backdrop((SIZE, SIZE), PALETTE)
    return {"layer": layer, "background": bg, "candidate": compositor.compose(layer, bg), "product": cut}


def pixels(c: dict[str, Image.Image], text: dict[str, Any] | None = None) -> guideline_rules.Pixels:
    alpha = np.asarray(c["layer"].getchannel("A"))
    baseline = {"text_artefacts": text} if text is not None else {}
    return guideline_rules.Pixels(np.asarray(c["candidate"]), alpha, PALETTE, 10.0, baseline)


def test_measurements_pass_and_fail_on_real_composites() -> None:
    small, big, corner = composite(share=0.15), composite(share=0.8), composite(index=0)  # ~1 % / ~31 % area
    area = float((np.asarray(small["layer"].getchannel("A")) >= 128).mean())
    low = guideline_rules.measure(Rule("min_product_area", {"min": 0.2}), pixels(small))
    assert low["status"] == "fail" and low["value"] == pytest.approx(area, abs=1e-4)
    assert guideline_rules.measure(Rule("min_product_area", {"min": 0.2}), pixels(big))["status"] == "pass"
    assert guideline_rules.measure(Rule("max_product_area", {"max": 0.2}), pixels(big))["status"] == "fail"
    # the backdrop is a light tint of the brand's blue: light and on-palette; a black one is neither
    on = pixels(small)
    assert guideline_rules.measure(Rule("light_background", {"min": 0.6}), on)["status"] == "pass"
    assert guideline_rules.measure(Rule("dark_background", {"max": 0.35}), on)["status"] == "fail"
    assert guideline_rules.measure(Rule("brand_colours_only", {"min_share": 0.8}), on)["status"] == "pass"
    red = composite(background=Image.new("RGB", (SIZE, SIZE), (200, 30, 40)))
    off = guideline_rules.measure(Rule("brand_colours_only", {"min_share": 0.8}), pixels(red))
    assert off["status"] == "fail" and off["value"] < 0.1
    # placement: r2c2 is centred, r1c1 is not; a corner product has little margin
    assert guideline_rules.measure(Rule("product_centred", {"tolerance": 0.1}), pixels(small))["status"] == "pass"
    assert guideline_rules.measure(Rule("product_centred", {"tolerance": 0.1}), pixels(corner))["status"] == "fail"
    tight = guideline_rules.measure(Rule("clear_margin", {"margin": 0.2}), pixels(corner))
    assert tight["status"] == "fail" and "closest edge" in tight["reason"]
    # fully visible: a product pushed past the left edge touches it; the centred one does not
    assert guideline_rules.measure(Rule("product_in_frame"), pixels(small))["status"] == "pass"
    left = int(np.nonzero(np.asarray(small["layer"].getchannel("A")).any(axis=0))[0][0])
    moved = small["layer"].transform((SIZE, SIZE), Image.Transform.AFFINE, (1, 0, left + 10, 0, 1, 0))
    shifted = {**small, "layer": moved}
    cut_off = guideline_rules.measure(Rule("product_in_frame"), pixels(shifted))
    assert cut_off["status"] == "fail" and "left" in cut_off["reason"]


def test_product_unaltered_follows_the_exact_pixel_verdict_and_is_unchecked_without_one() -> None:
    c = composite()
    px = pixels(c)
    for status in ("pass", "fail"):
        verdict = {"status": status, "reason": "99.0 % of the product's pixels are bit-exact", "value": 0.99}
        got = guideline_rules.measure(Rule("product_unaltered"), replace(px, baseline={"distorted_product": verdict}))
        assert got["status"] == status and "exact pixels" in got["reason"]
    assert guideline_rules.measure(Rule("product_unaltered"), px)["status"] == "unchecked"


def test_no_text_follows_the_ocr_verdict_and_is_unchecked_without_one() -> None:
    c = composite()
    fail = {"status": "fail", "reason": "1 line(s) of text ...", "value": 1.0}
    assert guideline_rules.measure(Rule("no_text"), pixels(c, fail))["status"] == "fail"
    assert guideline_rules.measure(Rule("no_text"), pixels(c, None))["status"] == "unchecked"


GUIDELINES = [
    {"text": "The product must not be smaller than 20 % of the frame", "weight": 1.0},  # it covers ~5 %
    {"text": "No text on the image"},
    {"text": "Use only brand colours"},
    {"text": "No people"},
]


def test_rules_backend_gives_mapped_brand_guidelines_real_verdicts() -> None:
    c = composite(share=0.3)
    scene = guideline.Scene(Background(c["background"], True, "the studio backdrop"), PALETTE, 10.0)
    stray = c["candidate"].copy()
    ImageDraw.Draw(stray).text((300, 40), "SALE 50%", fill=(20, 20, 20), font=ImageFont.load_default(size=34))
    results = {}
    for name, cand in (("clean", c["candidate"]), ("stray", stray)):
        results[name] = guideline.check(
            cand, c["layer"], c["product"], "a bottle", GUIDELINES, "strict", Settings(llm_backend="local"), scene
        )
    clean = {v["guideline"]: v for v in results["clean"]["verdicts"]}
    assert clean["brand_1"]["status"] == "fail" and clean["brand_1"]["method"] == "rule:min_product_area"
    assert clean["brand_2"]["status"] == "pass" and clean["brand_3"]["status"] == "pass"
    assert clean["brand_4"]["status"] == "unchecked" and "person detector" in clean["brand_4"]["reason"]
    assert clean["text_artefacts"]["status"] == "pass"
    router = results["clean"]["router"]
    assert [m["rule"] for m in router["mapped"]] == ["min_product_area", "no_text", "brand_colours_only"]
    assert [u["guideline"] for u in router["unmapped"]] == ["brand_4"]
    stray_v = {v["guideline"]: v for v in results["stray"]["verdicts"]}
    assert stray_v["text_artefacts"]["status"] == "fail" and stray_v["brand_2"]["status"] == "fail"
    assert "SALE" in stray_v["brand_2"]["reason"]
