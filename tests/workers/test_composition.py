"""Composition planning: every ad size, safe zones, canvases that cannot hold the product, the
ground-line anchor, and the sha256 integrity record every generator's output is held to."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from workers.imaging import composition

AD_CANVASES = [(1080, 1080), (1080, 1350), (1080, 1920), (1920, 1080), (1200, 628)]


def bottle(w: int = 120, h: int = 300) -> Image.Image:
    arr = np.zeros((h, w, 4), np.uint8)
    arr[h // 5 :, :, :3] = (30, 90, 160)
    arr[: h // 5, w // 3 : 2 * w // 3, :3] = (200, 200, 210)
    arr[h // 5 :, :, 3] = 255
    arr[: h // 5, w // 3 : 2 * w // 3, 3] = 255
    return Image.fromarray(arr, "RGBA")


def test_every_ad_size_gets_the_full_grid_and_stands_on_its_ground_line() -> None:
    cut = bottle()
    made = composition.plan(AD_CANVASES, cut.size, cutout=cut, scale_share=0.45, min_share=0.1)
    assert made.skipped_canvases == [] and made.safe_zone_exclusions == {}
    assert len(made.layouts) == len(AD_CANVASES) * 9 * 3
    for lay in made.layouts:
        assert 0 <= lay.x <= lay.canvas_w - lay.width and 0 <= lay.y <= lay.canvas_h - lay.height
        assert lay.y + lay.height - lay.bottom_gap == lay.ground_y  # anchored: nothing floats
    # One scale per canvas: every candidate of an ad size shows the product at the same size.
    for canvas in AD_CANVASES:
        assert len({lay.scale for lay in made.layouts if (lay.canvas_w, lay.canvas_h) == canvas}) == 1


def test_layouts_covering_a_safe_zone_are_dropped_and_counted() -> None:
    cut = bottle()
    headline = composition.SafeZone("text", 0.0, 0.0, 1.0, 0.25)  # a headline band across the top
    made = composition.plan([(1080, 1350)], cut.size, cutout=cut, safe_zones=(headline,))
    full = composition.plan([(1080, 1350)], cut.size, cutout=cut)
    top = 0.25 * 1350
    assert 0 < len(made.layouts) < len(full.layouts)
    assert made.safe_zone_exclusions == {"1080x1350": len(full.layouts) - len(made.layouts)}
    assert all(lay.y >= top for lay in made.layouts)
    assert any(lay.y < top for lay in full.layouts)  # the zone did have something to exclude


def test_a_canvas_fully_covered_by_safe_zones_is_skipped_with_its_reason() -> None:
    cut = bottle()
    everywhere = composition.SafeZone("logo", 0.0, 0.0, 1.0, 1.0)
    made = composition.plan([(1080, 1080)], cut.size, cutout=cut, safe_zones=(everywhere,))
    assert made.layouts == []
    assert made.skipped_canvases == [{"canvas": [1080, 1080], "reason": "every grid position covers a safe zone"}]


def test_a_product_too_small_to_upscale_skips_that_canvas_only() -> None:
    tiny = bottle(12, 30)  # 2x upscale on a 1920x1080 canvas still leaves it at 6 % of the height
    made = composition.plan([(1920, 1080), (256, 256)], tiny.size, cutout=tiny, max_upscale=2.0, min_share=0.1)
    assert [c["canvas"] for c in made.skipped_canvases] == [[1920, 1080]]
    assert "upscaling is capped at 2x" in made.skipped_canvases[0]["reason"]
    assert {(lay.canvas_w, lay.canvas_h) for lay in made.layouts} == {(256, 256)}
    assert all(lay.scale <= 2.0 for lay in made.layouts)  # never upscaled beyond the cap


def test_a_product_that_cannot_fit_large_enough_is_reported_as_such() -> None:
    pole = bottle(20, 1000)  # a very tall product on a very wide banner
    made = composition.plan([(1200, 628)], pole.size, rotations=(-15, 0, 15), min_share=0.9)
    assert made.layouts == [] and "does not fit the canvas any larger" in made.skipped_canvases[0]["reason"]


def test_bad_plan_arguments_name_themselves() -> None:
    with pytest.raises(ValueError, match="min_share"):
        composition.plan([(512, 512)], (10, 10), min_share=1.5)
    with pytest.raises(ValueError, match="canvases"):
        composition.plan([(8, 8)], (10, 10))


def test_paste_back_is_exact_where_opaque_and_blends_the_soft_edge() -> None:
    layer = np.zeros((64, 64, 4), np.uint8)
    layer[16:48, 16:48] = (250, 10, 10, 255)
    layer[15, 16:48] = (250, 10, 10, 128)  # a soft edge row
    scene = Image.new("RGB", (64, 64), (0, 0, 200))
    out = np.asarray(composition.paste_back(scene, Image.fromarray(layer, "RGBA")))
    assert (out[16:48, 16:48] == (250, 10, 10)).all()
    assert (out[0, 0] == (0, 0, 200)).all()
    assert 100 < out[15, 20, 0] < 150 and 80 < out[15, 20, 2] < 120  # half-way blend, not a copy
    record = composition.integrity(Image.fromarray(out), Image.fromarray(layer, "RGBA"))
    assert record["exact_fraction"] == 1.0 and record["product_sha256"] == record["layer_sha256"]


def test_integrity_digest_catches_a_single_changed_pixel() -> None:
    layer = np.zeros((32, 32, 4), np.uint8)
    layer[8:24, 8:24] = (10, 200, 30, 255)
    cand = layer[:, :, :3].copy()
    cand[10, 10] = (10, 200, 31)
    record = composition.integrity(Image.fromarray(cand), Image.fromarray(layer, "RGBA"))
    assert record["exact_pixels"] == record["opaque_pixels"] - 1
    assert record["product_sha256"] != record["layer_sha256"]
