"""Classical guideline check: real composites built here, so each test knows the truth it checks.

The product is a textured cut-out (smooth noise + lettering) so correlation has structure to find;
candidates come from the real compositor (backdrop, plan, place, compose).
"""

from __future__ import annotations

import time
from dataclasses import replace

import cv2
import numpy as np
import pytest
from PIL import Image

from workers.checks import guideline_classical as gc
from workers.checks.text_ocr import Background
from workers.imaging import composition, compositor

PALETTE = ["#e0d0c0", "#806040"]


def product(w: int = 240, h: int = 320, seed: int = 0) -> Image.Image:
    """An oval product with a mottled print and a word on it, soft alpha edge."""
    rng = np.random.default_rng(seed)
    shape = np.zeros((h, w), np.uint8)
    cv2.ellipse(shape, (w // 2, h // 2), (w // 2 - 10, h // 2 - 10), 0, 0, 360, 255, -1)
    alpha = cv2.GaussianBlur(shape, (0, 0), 1.2)
    noise = cv2.GaussianBlur(rng.normal(0.0, 1.0, (h, w, 3)).astype(np.float32), (0, 0), 6)
    rgb = np.clip(128 + 600 * noise, 0, 255).astype(np.uint8)
    cv2.putText(rgb, "BRAND", (30, h // 2), cv2.FONT_HERSHEY_SIMPLEX, 1.4, (20, 20, 60), 4)
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


def scene(
    size: int = 512, index: int = 22, cutout: Image.Image | None = None, share: float = 0.3
) -> tuple[Image.Image, Image.Image, Image.Image]:
    """(layer, backdrop, candidate) for layout ``index`` of a 3x3 grid x (-15, 0, 15) degrees."""
    cut = cutout or product()
    layout = composition.plan([(size, size)], cut.size, cutout=cut, scale_share=share).layouts[index]
    layer = composition.place(cut, layout)
    bg = compositor.backdrop((size, size), PALETTE)
    return layer, bg, compositor.compose(layer, bg)


def photo(size: int = 512, seed: int = 3) -> Image.Image:
    """A 'photo' background: colour gradients plus fine noise."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    img = np.dstack([90 + 100 * xs / size, 140 + 60 * ys / size, 170 - 80 * xs / size])
    return Image.fromarray(np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8), "RGB")


def by_name(verdicts: list[dict]) -> dict[str, dict]:
    return {v["guideline"]: v for v in verdicts}


def paste_copy(
    candidate: Image.Image, cutout: Image.Image, scale: float, rotation: float, centre: tuple[int, int]
) -> Image.Image:
    out = candidate.copy()
    copy = composition.transform(cutout, scale, rotation)
    out.paste(copy, (centre[0] - copy.width // 2, centre[1] - copy.height // 2), copy)
    return out


def blend_without_shadow(layer: Image.Image, bg: Image.Image) -> Image.Image:
    """What a naive paste gives: product over the backdrop, no contact shadow."""
    arr = np.asarray(layer).astype(np.float32)
    a = arr[:, :, 3:] / 255.0
    out = arr[:, :, :3] * a + np.asarray(bg).astype(np.float32) * (1 - a)
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8), "RGB")


# --- a normal composite ------------------------------------------------------------------


@pytest.mark.parametrize("index", [1, 13, 22, 26])  # r1c1 0deg, r2c2 0deg, r3c2 0deg, r3c3 +15deg
def test_normal_composite_passes_what_pixels_can_check(index: int) -> None:
    layer, _, cand = scene(index=index)
    verdicts = gc.check(cand, layer)
    assert [v["guideline"] for v in verdicts] == list(gc.BASELINE)
    pixel = [v for v in verdicts if v["guideline"] != "text_artefacts"]  # text_artefacts: OCR (test_text_ocr.py)
    assert all(
        v["method"] == "classical" and set(v) == {"guideline", "status", "reason", "value", "method"} for v in pixel
    )
    v = by_name(verdicts)
    assert v["duplicated_product"]["status"] == "pass" and v["duplicated_product"]["value"] < 0.7
    assert v["floating_product"]["status"] == "pass" and v["floating_product"]["value"] > 0.15
    assert v["distorted_product"]["status"] == "pass" and v["distorted_product"]["value"] == 1.0
    assert v["extra_objects"]["status"] == "unchecked" and v["extra_objects"]["value"] is None
    assert "vision-language model" in v["extra_objects"]["reason"]
    assert v["text_artefacts"]["status"] == "pass" and v["text_artefacts"]["method"] == "ocr"
    assert gc.summary(verdicts) == "4 pass, 0 fail, 1 unchecked"


# --- duplicated_product --------------------------------------------------------------------


@pytest.mark.parametrize(("scale", "rotation"), [(1.0, 0.0), (0.9, 10.0), (1.2, -20.0)])
def test_second_copy_elsewhere_fails(scale: float, rotation: float) -> None:
    cut = product()
    layer, _, cand = scene(index=4, cutout=cut)  # r1c2: the product stands top centre
    placed = composition.plan([(512, 512)], cut.size, cutout=cut, scale_share=0.3).layouts[4]
    dup = paste_copy(cand, cut, placed.scale * scale, rotation, (150, 380))
    verdicts = gc.check(dup, layer)
    v = by_name(verdicts)
    assert v["duplicated_product"]["status"] == "fail"
    assert v["duplicated_product"]["value"] >= gc.DUPLICATE_MIN_SCORE
    assert v["distorted_product"]["status"] == "pass"  # the original is untouched
    # text_artefacts may fail too: the copy's label is lettering outside the placed product
    pixel = [x for x in verdicts if x["guideline"] != "text_artefacts"]
    assert gc.summary(pixel).startswith("2 pass, 1 fail (duplicated_product)")


def test_second_copy_on_a_photo_background_fails() -> None:
    cut = product()
    layer, _, _ = scene(index=4, cutout=cut)
    placed = composition.plan([(512, 512)], cut.size, cutout=cut, scale_share=0.3).layouts[4]
    dup = paste_copy(compositor.compose(layer, photo()), cut, placed.scale, 0.0, (380, 380))
    v = by_name(gc.check(dup, layer))["duplicated_product"]
    assert v["status"] == "fail" and v["value"] >= gc.DUPLICATE_MIN_SCORE


def test_a_different_textured_object_is_not_a_copy() -> None:
    cut = product()
    layer, _, cand = scene(index=4, cutout=cut)
    placed = composition.plan([(512, 512)], cut.size, cutout=cut, scale_share=0.3).layouts[4]
    other = paste_copy(cand, product(seed=7), placed.scale, 0.0, (150, 380))
    v = by_name(gc.check(other, layer))["duplicated_product"]
    assert v["status"] == "pass" and v["value"] < 0.7


def composited_copy(cut: Image.Image, layer: Image.Image) -> Image.Image:
    """The product at layout 4 (top centre) and a second copy at the bottom left, both composited with their
    shadows, as a generator that drew the product twice would show it."""
    placed = composition.plan([(512, 512)], cut.size, cutout=cut, scale_share=0.3).layouts[4]
    back = compositor.backdrop((512, 512), PALETTE)
    return compositor.compose(layer, compositor.compose(composition.place(cut, replace(placed, x=60, y=300)), back))


def flat_product() -> Image.Image:
    arr = np.asarray(product()).copy()
    arr[:, :, :3] = (200, 40, 50)
    return Image.fromarray(arr, "RGBA")


def test_flat_product_is_searched_for_by_its_silhouette() -> None:
    cut = flat_product()
    layer, _, cand = scene(index=4, cutout=cut)
    v = by_name(gc.check(cand, layer))
    assert v["duplicated_product"]["status"] == "pass" and "silhouette" in v["duplicated_product"]["reason"]
    assert v["floating_product"]["status"] == "pass"
    found = by_name(gc.check(composited_copy(cut, layer), layer))["duplicated_product"]
    assert found["status"] == "fail" and found["value"] >= gc.SILHOUETTE_MIN_SCORE, found["reason"]


def test_product_without_structure_or_outline_cannot_be_searched_for() -> None:
    cut = flat_product()
    layout = composition.plan([(512, 512)], cut.size, cutout=cut, scale_share=0.3).layouts[4]
    layer = composition.place(cut, layout)
    cand = composition.paste_back(Image.new("RGB", (512, 512), (200, 40, 50)), layer)  # the product's own colour
    v = by_name(gc.check(cand, layer))["duplicated_product"]
    assert v["status"] == "unchecked" and v["value"] is None
    assert "no structure beyond smooth shading" in v["reason"]


def smooth_product() -> Image.Image:
    """A jar lit from above: its look is a smooth vertical ramp, like many products shot in a studio."""
    from workers.evaluation import qc_set

    source, mask = qc_set.source_photo("gradient_jar", "tune", np.random.default_rng(5))
    return qc_set.cutout(source, mask)[0]


def test_smooth_product_on_the_studio_backdrop_is_not_its_own_duplicate() -> None:
    # Issue 18: on the studio backdrop every candidate of such a product failed (this one: 18 of 27
    # layouts at 512 px, 27 of 27 at 1024) because NCC matched its ramp to the backdrop's gradients.
    cut = smooth_product()
    back = compositor.backdrop((512, 512), PALETTE)
    for layout in composition.plan([(512, 512)], cut.size, cutout=cut, scale_share=0.45).layouts:
        layer = composition.place(cut, layout)
        cand = np.asarray(compositor.compose(layer, back))
        v = gc.check_duplicated(cand, np.asarray(layer.getchannel("A")))
        assert v["status"] == "pass", (layout.layout_key, v["reason"])


def test_a_copy_of_a_smooth_product_is_still_found() -> None:
    cut = smooth_product()
    layer, _, cand = scene(index=4, cutout=cut)
    v = by_name(gc.check(composited_copy(cut, layer), layer))["duplicated_product"]
    assert v["status"] == "fail" and v["value"] >= gc.SILHOUETTE_MIN_SCORE, v["reason"]


# --- floating_product ----------------------------------------------------------------------


@pytest.mark.parametrize("index", [1, 13, 24])  # r1c1, r2c2, r3c3 at -15deg
def test_product_without_contact_shadow_floats(index: int) -> None:
    layer, bg, _ = scene(index=index)
    v = by_name(gc.check(blend_without_shadow(layer, bg), layer))
    assert v["floating_product"]["status"] == "fail"
    assert v["floating_product"]["value"] < gc.MIN_SHADOW_DROP
    assert v["distorted_product"]["status"] == "pass" and v["duplicated_product"]["status"] == "pass"


def test_floating_on_a_photo_background() -> None:
    layer, _, _ = scene(index=13)
    grounded = by_name(gc.check(compositor.compose(layer, photo()), layer))
    floating = by_name(gc.check(blend_without_shadow(layer, photo()), layer))
    assert grounded["floating_product"]["status"] == "pass" and floating["floating_product"]["status"] == "fail"
    # Nothing on a gradient photo has the product's contrast: a pass, with no NCC to report.
    assert grounded["duplicated_product"]["status"] == "pass" and grounded["duplicated_product"]["value"] is None


def test_base_on_the_bottom_edge_is_unchecked() -> None:
    cut = product()
    a = np.asarray(cut)[:, :, 3]
    ys, xs = np.nonzero(a >= 128)
    body = cut.crop((int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1))
    layer = Image.new("RGBA", (512, 512), (0, 0, 0, 0))
    layer.paste(body, (150, 512 - body.height))  # lowest opaque row = the canvas's last row
    cand = compositor.compose(layer, compositor.backdrop((512, 512), PALETTE))
    v = by_name(gc.check(cand, layer))
    assert v["floating_product"]["status"] == "unchecked" and v["floating_product"]["value"] is None
    assert "bottom edge" in v["floating_product"]["reason"]
    assert v["distorted_product"]["status"] == "pass"


# --- distorted_product ---------------------------------------------------------------------


def test_blurred_product_is_distorted() -> None:
    layer, _, cand = scene(index=13)
    arr = np.asarray(cand).copy()
    opaque = np.asarray(layer)[:, :, 3] == 255
    arr[opaque] = cv2.GaussianBlur(arr, (0, 0), 2.0)[opaque]
    v = by_name(gc.check(Image.fromarray(arr, "RGB"), layer))
    assert v["distorted_product"]["status"] == "fail"
    assert v["distorted_product"]["value"] < 0.5  # most blurred pixels change
    assert "bit-exact" in v["distorted_product"]["reason"]


def test_a_single_changed_pixel_is_within_tolerance() -> None:
    layer, _, cand = scene(index=13)
    arr = np.asarray(cand).copy()
    ys, xs = np.nonzero(np.asarray(layer)[:, :, 3] == 255)
    arr[ys[0], xs[0]] ^= 1
    v = by_name(gc.check(Image.fromarray(arr, "RGB"), layer))["distorted_product"]
    assert v["status"] == "pass" and gc.MIN_EXACT_FRACTION <= v["value"] < 1.0


# --- arguments and summary -----------------------------------------------------------------


def test_bad_arguments_name_the_argument() -> None:
    layer, _, cand = scene()
    empty = Image.new("RGBA", layer.size, (0, 0, 0, 0))
    cases = [
        (cand, cand, "layer: expected an RGBA"),
        (cand, "layer.png", "layer: expected an RGBA"),
        (cand, empty, "layer: has no fully opaque pixel"),
        (np.asarray(cand), layer, "candidate: expected an RGB PIL image of size"),
        (cand.convert("RGBA"), layer, "candidate: expected an RGB PIL image of size"),
        (cand.resize((256, 256)), layer, r"candidate: expected an RGB PIL image of size \(512, 512\)"),
    ]
    for candidate, lay, message in cases:
        with pytest.raises(ValueError, match=f"^{message}"):
            gc.check(candidate, lay)


def test_summary_lists_failures() -> None:
    verdicts = [
        {"guideline": n, "status": s}
        for n, s in zip(gc.BASELINE, ("fail", "unchecked", "fail", "unchecked", "pass"), strict=True)
    ]
    assert gc.summary(verdicts) == "1 pass, 2 fail (duplicated_product, floating_product), 2 unchecked"
    with pytest.raises(ValueError, match="^verdicts: unknown status"):
        gc.summary([{"guideline": "x", "status": "maybe"}])


# --- cost ------------------------------------------------------------------------------------


@pytest.mark.parametrize("share", [0.45, 0.15])  # the default product size, and a small one (widest search)
def test_check_time_on_1024(share: float) -> None:
    layer, bg, cand = scene(size=1024, index=13, share=share)
    known = Background(bg, verbatim=True, source="the studio backdrop")  # as QC passes it: no OCR needed
    gc.check(cand, layer, known)  # warm-up: first cv2 calls allocate
    runs = 5
    start = time.perf_counter()
    for _ in range(runs):
        verdicts = gc.check(cand, layer, known)
    ms = (time.perf_counter() - start) / runs * 1000
    print(f"\ncheck() on 1024x1024, product share {share}: {ms:.1f} ms; {gc.summary(verdicts)}")
    assert gc.summary(verdicts) == "4 pass, 0 fail, 1 unchecked"
    assert ms < 2000  # sanity bound only; the target (< 150 ms) is reported, not asserted
