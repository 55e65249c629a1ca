"""Image stages: segmentation, layout, compositing, fidelity QC and aesthetic score.

Every image is synthesised here, so each test knows the ground truth it checks against.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from workers.checks import aesthetic, fidelity
from workers.imaging import composition, compositor, matting

# --- synthetic images -------------------------------------------------------------------


def product_rgba(w: int = 240, h: int = 320) -> Image.Image:
    """A red rounded product with cream stripes (inner detail) and a soft alpha edge."""
    shape = np.zeros((h, w), np.uint8)
    r = min(w, h) // 6
    cv2.rectangle(shape, (20 + r, 20), (w - 21 - r, h - 21), 255, -1)
    cv2.rectangle(shape, (20, 20 + r), (w - 21, h - 21 - r), 255, -1)
    for cx, cy in ((20 + r, 20 + r), (w - 21 - r, 20 + r), (20 + r, h - 21 - r), (w - 21 - r, h - 21 - r)):
        cv2.circle(shape, (cx, cy), r, 255, -1)
    alpha = cv2.GaussianBlur(shape, (0, 0), 1.2)  # anti-aliased edge: some alpha < 250
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:] = (200, 30, 40)
    rgb[(np.arange(h) // 12) % 3 == 0] = (250, 230, 200)
    cv2.putText(rgb, "BRAND", (40, h // 2), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (20, 20, 60), 3)
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


def studio_shot(size: int = 360, seed: int = 1) -> tuple[Image.Image, np.ndarray]:
    """A dark bottle-like object on a near-white, slightly noisy backdrop + its true mask."""
    rng = np.random.default_rng(seed)
    truth = np.zeros((size, size), np.uint8)
    cv2.ellipse(truth, (size // 2, size * 3 // 5), (size // 5, size // 4), 0, 0, 360, 255, -1)
    cv2.rectangle(truth, (size // 2 - size // 14, size // 6), (size // 2 + size // 14, size // 2), 255, -1)
    img = np.full((size, size, 3), 243.0) + np.linspace(-6, 6, size)[:, None, None]
    img += rng.normal(0.0, 2.5, img.shape)
    img[truth > 0] = (35, 45, 70) + rng.normal(0.0, 4.0, (int((truth > 0).sum()), 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB"), truth > 0


def photo_background(w: int = 320, h: int = 256, seed: int = 2) -> Image.Image:
    """A 'photo': colour gradients plus fine noise."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.dstack([90 + 100 * xs / w, 140 + 60 * ys / h, 170 - 80 * xs / w])
    img += rng.normal(0.0, 6.0, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def product_cutout(w: int = 240, h: int = 320) -> Image.Image:
    image = product_rgba(w, h)
    return matting.cutout(image, matting.segment(image))


def composed(
    canvas: tuple[int, int] = (512, 512), rotation: float = 15.0, row: int = 3, col: int = 2
) -> tuple[Image.Image, Image.Image, Image.Image]:
    """(candidate, layer, background) for one planned layout of the synthetic product."""
    cut = product_cutout()
    layouts = composition.plan([canvas], cut.size, cutout=cut).layouts
    layout = next(l for l in layouts if (l.row, l.col, l.rotation) == (row, col, rotation))
    layer = composition.place(cut, layout)
    background = compositor.backdrop(canvas, ["#2b59c3", "#e8b04b"])
    return compositor.compose(layer, background), layer, background


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# --- matting ------------------------------------------------------------------------------


def test_alpha_path_keeps_the_alpha() -> None:
    image = product_rgba()
    alpha = np.asarray(image)[:, :, 3]
    result = matting.segment(image)
    assert result.method == "alpha"
    assert np.array_equal(result.mask, np.where(alpha >= 128, 255, 0))
    assert np.array_equal(result.alpha, alpha)
    assert result.quality["components_removed"] == 0
    assert 0.95 < result.quality["edge_smoothness"] <= 1.0


def test_alpha_path_drops_specks_from_mask_and_alpha() -> None:
    arr = np.array(product_rgba(300, 320))
    arr[300:306, 280:286] = (0, 0, 0, 255)  # dust far from the product
    result = matting.segment(Image.fromarray(arr, "RGBA"))
    assert result.quality["components_removed"] == 1
    assert not result.mask[300:306, 280:286].any()
    assert not result.alpha[300:306, 280:286].any()


def test_grabcut_path_finds_the_object() -> None:
    image, truth = studio_shot()
    result = matting.segment(image)
    assert result.method == "grabcut"
    assert set(np.unique(result.mask)) == {0, 255}
    assert iou(result.mask > 0, truth) >= 0.9
    assert np.array_equal(result.alpha, result.mask)
    assert abs(result.quality["area_share"] - truth.mean()) < 0.02


def test_opaque_rgba_goes_through_grabcut() -> None:
    image, truth = studio_shot(seed=3)
    result = matting.segment(image.convert("RGBA"))  # alpha present but all 255
    assert result.method == "grabcut"
    assert iou(result.mask > 0, truth) >= 0.9


def test_clean_mask_drops_specks_fills_small_holes_keeps_openings() -> None:
    mask = np.zeros((300, 300), np.uint8)
    mask[50:250, 50:250] = 255  # product, 40 000 px
    mask[100:103, 100:103] = 0  # glint misread as backdrop: 9 px hole
    mask[150:200, 150:200] = 0  # real opening (inside of a handle): 2 500 px > 2 %
    mask[10:14, 280:284] = 255  # dust: 16 px, far below 5 % of the product
    clean, removed, filled = matting.clean_mask(mask, max_hole_share=0.02)
    assert (removed, filled) == (1, 1)
    assert clean[101, 101] == 255 and not clean[10:14, 280:284].any()
    assert not clean[150:200, 150:200].any()
    assert matting.clean_mask(mask, max_hole_share=1.0)[0][175, 175] == 255


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGB", (256, 256), (210, 210, 210)),
        Image.new("RGBA", (256, 256), (210, 20, 20, 0)),
    ],
)
def test_segmentation_error_when_there_is_no_product(image: Image.Image) -> None:
    with pytest.raises(matting.SegmentationError):
        matting.segment(image)


def test_segmentation_error_when_mask_is_the_whole_frame() -> None:
    arr = np.full((200, 200, 4), 255, np.uint8)
    arr[0, 0, 3] = 0  # meaningful alpha, but the "product" is the whole picture
    with pytest.raises(matting.SegmentationError, match="covers"):
        matting.segment(Image.fromarray(arr, "RGBA"))


def test_segment_names_bad_argument() -> None:
    with pytest.raises(ValueError, match="image"):
        matting.segment(np.zeros((64, 64, 3), np.uint8))  # type: ignore[arg-type]


def test_cutout_crops_to_mask_and_keeps_rgb() -> None:
    image = product_rgba()
    result = matting.segment(image)
    cut = matting.cutout(image, result)
    ys, xs = np.nonzero(np.asarray(image)[:, :, 3])
    assert cut.mode == "RGBA"
    assert cut.size == (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1)
    box = np.asarray(image)[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    assert np.array_equal(np.asarray(cut), box)


# --- layouts ------------------------------------------------------------------------------


def test_plan_covers_grid_and_stays_on_canvas() -> None:
    canvases = [(1024, 1024), (1080, 1920), (1200, 628)]
    layouts = composition.plan(canvases, (240, 320)).layouts
    assert len(layouts) == len(canvases) * 3 * 3 * 3
    assert len({l.layout_key for l in layouts}) == len(layouts)
    assert layouts == composition.plan(canvases, (240, 320)).layouts  # deterministic
    for l in layouts:
        assert 0 <= l.x and l.x + l.width <= l.canvas_w, l
        assert 0 <= l.y and l.y + l.height <= l.canvas_h, l
        assert l.scale <= 2.0
    assert layouts[0].layout_key == "1024x1024-r1c1-m15"
    assert layouts[5].layout_key == "1024x1024-r1c2-p15"


def test_plan_never_upscales_beyond_max() -> None:
    layouts = composition.plan([(1024, 1024)], (40, 50), max_upscale=2.0).layouts
    assert {l.scale for l in layouts} == {2.0}  # 0.45 * 1024 / 50 would be 9.2x
    big = composition.plan([(1024, 1024)], (300, 400), max_upscale=2.0).layouts
    assert all(abs(l.scale * 400 - 0.45 * 1024) < 1e-6 for l in big)


@pytest.mark.parametrize("with_cutout", [False, True])
def test_plan_stands_products_on_their_rows_ground_line(with_cutout: bool) -> None:
    margin, rows, cut = 0.04, 3, product_cutout()
    layouts = composition.plan([(1024, 1024)], cut.size, margin=margin, cutout=cut if with_cutout else None).layouts
    tallest = max(l.height - l.bottom_gap for l in layouts)
    grounds: dict[int, set[int]] = {}
    for l in layouts:
        assert l.y + l.height - l.bottom_gap == l.ground_y
        assert l.ground_y == composition.ground_line(1024, tallest, l.row, rows, margin)
        grounds.setdefault(l.row, set()).add(l.ground_y)
    assert all(len(g) == 1 for g in grounds.values())  # one floor per row, any rotation
    assert grounds[1].pop() < grounds[2].pop() < grounds[3].pop() == round(1024 * (1 - margin))
    assert any(l.bottom_gap > 0 for l in layouts) == with_cutout  # rounded corners rotated


def test_placed_product_stands_exactly_on_the_ground_line() -> None:
    cut = product_cutout()
    for l in composition.plan([(512, 512)], cut.size, rows=2, cols=1, cutout=cut).layouts:
        alpha = np.asarray(composition.place(cut, l))[:, :, 3]
        lowest = np.flatnonzero((alpha >= 128).any(axis=1)).max()
        assert lowest == l.ground_y - 1, l  # the last product row sits on the line


def test_plan_names_bad_arguments() -> None:
    with pytest.raises(ValueError, match="canvases"):
        composition.plan([], (10, 10))
    with pytest.raises(ValueError, match="scale_share"):
        composition.plan([(512, 512)], (10, 10), scale_share=0)
    with pytest.raises(ValueError, match="product_size"):
        composition.plan([(512, 512)], (0, 10))


# --- rendering ----------------------------------------------------------------------------


def test_place_at_unit_scale_is_the_product_itself() -> None:
    cut = product_cutout()
    layout = composition.Layout("t", 400, 400, 30, 50, 1.0, 0.0, 1, 1)
    layer = np.asarray(composition.place(cut, layout))
    assert np.array_equal(layer[50 : 50 + cut.height, 30 : 30 + cut.width], np.asarray(cut))
    assert not layer[:50].any() and not layer[:, :30].any()


def test_place_rejects_rgb_and_mismatched_layout() -> None:
    cut = product_cutout()
    layout = composition.plan([(512, 512)], cut.size).layouts[0]
    with pytest.raises(ValueError, match="cutout"):
        composition.place(cut.convert("RGB"), layout)
    with pytest.raises(ValueError, match="layout"):
        composition.place(product_cutout(100, 100), layout)


def test_compose_keeps_opaque_product_pixels_exact() -> None:
    candidate, layer, _ = composed(rotation=15.0)
    lay = np.asarray(layer)
    opaque = lay[:, :, 3] == 255
    assert opaque.sum() > 10_000
    assert np.array_equal(np.asarray(candidate)[opaque], lay[:, :, :3][opaque])


def test_compose_over_photo_background_is_exact_too() -> None:
    cut = product_cutout()
    layout = composition.plan([(256, 256)], cut.size).layouts[4]
    layer = composition.place(cut, layout)
    background = compositor.cover_crop(photo_background(), (256, 256))
    candidate = compositor.compose(layer, background)
    assert composition.integrity(candidate, layer)["exact_fraction"] == 1.0


def test_compose_shadow_darkens_under_the_product() -> None:
    candidate, layer, background = composed(rotation=0.0)
    alpha = np.asarray(layer)[:, :, 3]
    ys, xs = np.nonzero(alpha)
    bottom, cx = ys.max(), int(xs.mean())
    under = np.s_[bottom + 2 : bottom + 6, cx - 20 : cx + 20]  # floor just below, alpha == 0
    assert not alpha[under].any()
    cand, bg = (np.asarray(i).astype(int) for i in (candidate, background))
    assert (bg[under] - cand[under]).mean() > 15
    assert np.array_equal(cand[:40, :40], bg[:40, :40])  # far away: untouched


def test_compose_names_bad_background() -> None:
    _, layer, _ = composed()
    with pytest.raises(ValueError, match="background"):
        compositor.compose(layer, Image.new("RGB", (100, 100)))


def test_backdrop_is_deterministic_and_on_palette() -> None:
    a = compositor.backdrop((300, 260), ["#cc0000", "#004400"])
    assert a.size == (300, 260) and a.mode == "RGB"
    assert np.array_equal(np.asarray(a), np.asarray(compositor.backdrop((300, 260), ["#cc0000", "#004400"])))
    arr = np.asarray(a).astype(int)
    assert arr[5, 150, 0] > arr[5, 150, 2] + 10  # wall: a tint of palette[0] (red)
    assert arr[-5, 150, 1] > arr[-5, 150, 0] + 10  # floor: from palette[1] (green)
    grey = np.asarray(compositor.backdrop((300, 260), [])).astype(int)
    assert np.abs(grey[..., 0] - grey[..., 2]).max() <= 1
    with pytest.raises(ValueError, match=r"palette\[1\]"):
        compositor.backdrop((300, 260), ["#fff", "not-a-colour"])


def test_cover_crop_covers_and_centres() -> None:
    photo = np.zeros((200, 600, 3), np.uint8)
    photo[:, 300:] = 255  # left half black, right half white
    out = np.asarray(compositor.cover_crop(Image.fromarray(photo), (256, 256)))
    assert out.shape == (256, 256, 3)
    assert abs(int((out[:, :, 0] > 127).sum()) - 256 * 128) <= 256 * 2  # centred split


# --- fidelity -------------------------------------------------------------------------------


def test_fidelity_of_a_composed_candidate_is_perfect() -> None:
    candidate, layer, _ = composed()
    report = fidelity.fidelity(candidate, layer)
    assert report["exact_fraction"] == 1.0
    assert report["msssim_edges"] > 0.95
    assert report["mean_abs_diff"] == 0.0


def _altered(candidate: Image.Image, layer: Image.Image, how: str) -> Image.Image:
    cand = np.array(candidate)
    opaque = np.asarray(layer)[:, :, 3] == 255
    if how == "blur":
        cand[opaque] = cv2.GaussianBlur(cand, (0, 0), 2.5)[opaque]
    else:
        cand[opaque] = (180, 60, 60)  # product replaced by a plain look-alike colour
    return Image.fromarray(cand)


@pytest.mark.parametrize("how", ["blur", "replace"])
def test_fidelity_catches_an_altered_product(how: str) -> None:
    candidate, layer, _ = composed()
    good = fidelity.fidelity(candidate, layer)
    bad = fidelity.fidelity(_altered(candidate, layer, how), layer)
    assert bad["exact_fraction"] < 0.5
    assert bad["msssim_edges"] < good["msssim_edges"] - 0.1
    assert bad["mean_abs_diff"] > 5


def test_fidelity_handles_products_smaller_than_msssim_window() -> None:
    cut = product_cutout(60, 80)
    layout = composition.plan([(256, 256)], cut.size, max_upscale=1.0).layouts[0]
    layer = composition.place(cut, layout)
    candidate = compositor.compose(layer, compositor.backdrop((256, 256), []))
    assert fidelity.fidelity(candidate, layer)["msssim_edges"] > 0.95
    bad = fidelity.fidelity(_altered(candidate, layer, "blur"), layer)
    assert bad["msssim_edges"] < 0.9


# --- aesthetic ------------------------------------------------------------------------------


def test_aesthetic_prefers_sharp_well_exposed_over_blurred_dark() -> None:
    candidate, layer, _ = composed()
    good = aesthetic.score(candidate, layer)
    dull = np.asarray(candidate).astype(np.float32)
    dull = cv2.GaussianBlur(dull, (0, 0), 4.0) * 0.25
    bad = aesthetic.score(Image.fromarray(dull.astype(np.uint8)), layer)
    for result in (good, bad):
        assert 0.0 <= result["score"] <= 10.0
        assert all(0.0 <= v <= 1.0 for v in result["parts"].values())
    assert good["score"] > bad["score"] + 1.0
    assert good["parts"]["sharpness"] > bad["parts"]["sharpness"]
    assert good["parts"]["exposure"] > bad["parts"]["exposure"]
    assert good == aesthetic.score(candidate, layer)  # deterministic


def test_aesthetic_thirds_rewards_thirds_placement() -> None:
    alpha = np.zeros((300, 300), np.uint8)
    on_thirds, corner = alpha.copy(), alpha.copy()
    on_thirds[90:110, 90:110] = 255  # centroid at (1/3, 1/3)
    corner[0:20, 0:20] = 255
    assert aesthetic.thirds(on_thirds) > 0.95
    assert aesthetic.thirds(corner) < 0.1


def test_aesthetic_names_bad_layer() -> None:
    candidate, layer, _ = composed()
    with pytest.raises(ValueError, match="layer"):
        aesthetic.score(candidate, layer.convert("RGB"))


def test_aesthetic_grounding_prefers_products_standing_low() -> None:
    sky, floor = np.zeros((300, 300), np.uint8), np.zeros((300, 300), np.uint8)
    sky[20:80, 100:200] = 255  # base at 27 % of the height: standing in the sky
    floor[200:270, 100:200] = 255  # base at 90 %: on the floor
    assert aesthetic.grounding(sky) == 0.0
    assert aesthetic.grounding(floor) == 1.0
