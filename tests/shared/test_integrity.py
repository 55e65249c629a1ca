"""The integrity record: the placed layer re-derived from source photo + mask + transform, bit for bit."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from PIL import Image

from shared import integrity
from workers.imaging import composition, compositor


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def photo(seed: int = 1) -> tuple[Image.Image, np.ndarray]:
    """A textured product on a grey studio photo, and its soft alpha (a 1 px anti-aliased edge)."""
    rng = np.random.default_rng(seed)
    arr = np.full((260, 200, 3), 235, np.uint8)
    arr[40:220, 50:150] = (30, 110, 200)
    arr[90:150, 60:140] = rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)  # a printed label
    alpha = np.zeros((260, 200), np.uint8)
    alpha[40:220, 50:150] = 255
    alpha[39, 50:150] = alpha[220, 50:150] = alpha[40:220, 49] = alpha[40:220, 150] = 96
    return Image.fromarray(arr, "RGB"), alpha


def layout(rotation: float = 15.0, scale: float = 1.3) -> composition.Layout:
    return composition.Layout("t", 480, 480, 120, 60, scale, rotation, 1, 1)


def made(rotation: float = 15.0) -> tuple[Image.Image, bytes, bytes, dict[str, Any]]:
    """A real composite and its record, as the generate stage makes them."""
    source, alpha = photo()
    crop = integrity.mask_box(alpha)
    t = composition.transform_of(layout(rotation), (crop[2] - crop[0], crop[3] - crop[1]), crop)
    layer = integrity.derive_layer(source, alpha, t)
    image = compositor.compose(layer, compositor.backdrop((480, 480), ["#DDEEFF"]))
    src, mask = png(source), png(Image.fromarray(alpha))
    rec = integrity.record(
        integrity.stored_ref("src.png", src), integrity.stored_ref("alpha.png", mask), t, image, layer
    )
    return image, src, mask, rec


@pytest.mark.parametrize("rotation", [0.0, 15.0, -15.0])
def test_derive_layer_is_what_the_compositor_places(rotation: float) -> None:
    source, alpha = photo()
    crop = integrity.mask_box(alpha)
    cut = integrity.cut_out(source, alpha, crop)
    lay = layout(rotation)
    t = composition.transform_of(lay, cut.size, crop)
    derived = integrity.derive_layer(source, alpha, t)
    assert np.array_equal(np.asarray(derived), np.asarray(composition.place(cut, lay)))
    assert crop == (49, 39, 151, 221) and cut.size == (102, 182)
    assert integrity.Transform.from_json(t.to_json()) == t


def test_a_clean_candidate_verifies_bit_for_bit() -> None:
    image, src, mask, rec = made()
    report = integrity.verify(image, src, mask, rec)
    assert report.ok and report.exact_fraction == 1.0 and report.sha256_match, report.reasons
    assert report.opaque_pixels == rec["opaque_pixels"] > 15000
    assert rec["transform"]["canvas_cut"] == [0, 0, 0, 0] and rec["transform"]["resize_filter"] == "lanczos"


def test_a_changed_product_pixel_fails() -> None:
    image, src, mask, rec = made()
    arr = np.array(image)
    layer = integrity.derive_layer(*photo(), integrity.Transform.from_json(rec["transform"]))
    ys, xs = np.nonzero(np.asarray(layer)[:, :, 3] == 255)
    arr[ys[len(ys) // 2], xs[len(xs) // 2]] ^= 1  # one bit of one channel of one product pixel
    report = integrity.verify(Image.fromarray(arr), src, mask, rec)
    assert not report.ok and not report.sha256_match and report.exact_fraction < 1.0
    assert report.source_ok and report.mask_ok and report.layer_ok
    assert "1 of" in report.reasons[0]


def test_another_source_or_mask_or_transform_fails() -> None:
    image, src, mask, rec = made()
    other, _ = photo(seed=2)  # the same product with another label: a different photo
    wrong = integrity.verify(image, png(other), mask, rec)
    assert not wrong.ok and not wrong.source_ok and wrong.exact_fraction < 0.9
    _, alpha = photo()
    alpha[100:110, 60:70] = 0  # a hole the mask did not have
    assert not integrity.verify(image, src, png(Image.fromarray(alpha)), rec).mask_ok
    moved = {**rec, "transform": {**rec["transform"], "offset": [121, 60]}}
    shifted = integrity.verify(image, src, mask, moved)
    assert not shifted.ok and not shifted.layer_ok and shifted.source_ok


def test_a_record_that_cannot_be_replayed_says_why() -> None:
    image, src, mask, rec = made()
    broken = {**rec, "transform": {**rec["transform"], "resize_filter": "magic"}}
    report = integrity.verify(image, src, mask, broken)
    assert not report.ok and "cannot re-derive" in report.reasons[-1]


def test_the_canvas_cut_is_recorded_and_replayed() -> None:
    source, alpha = photo()
    crop = integrity.mask_box(alpha)
    t = integrity.transform_for(crop, 1.0, 0.0, (-30, 400), (300, 500))
    layer = integrity.derive_layer(source, alpha, t)
    assert integrity.canvas_cut(integrity.placed_size(t), t) == [30, 0, 0, 82]
    assert np.array_equal(np.asarray(layer)[400:, :72], np.asarray(integrity.cut_out(source, alpha, crop))[:100, 30:])
