"""Compositor: product pixels exact on every canvas, drop shadow on the floor, edge harmonisation.

Every product and background is synthesised here (numpy), so each test knows its truth.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.factories import bottle
from workers.imaging import composition, compositor

CANVASES = {"1:1": (256, 256), "4:5": (240, 300), "9:16": (180, 320), "16:9": (320, 180), "1.91:1": (382, 200)}
ROTATIONS = (-15.0, 0.0, 15.0)
PALETTE = ["#e4572e", "#17bebb"]


# --- synthetic inputs ---------------------------------------------------------------------------


def photo(w: int = 500, h: int = 400, seed: int = 4) -> Image.Image:
    """A 'photo': colour gradients plus fine noise (cover-cropped onto each canvas)."""
    rng = np.random.default_rng(seed)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.dstack([80 + 120 * xs / w, 150 + 60 * ys / h, 180 - 90 * xs / w])
    return Image.fromarray(np.clip(img + rng.normal(0.0, 6.0, img.shape), 0, 255).astype(np.uint8), "RGB")


def background(kind: str, canvas: tuple[int, int]) -> Image.Image:
    return compositor.backdrop(canvas, PALETTE) if kind == "backdrop" else compositor.cover_crop(photo(), canvas)


def layer_at(canvas: tuple[int, int], index: int = 22, cut: Image.Image | None = None) -> Image.Image:
    """Layer of layout ``index`` of the default 3x3 x (-15, 0, 15) plan (22: r3c2 at 0 degrees)."""
    cut = cut or bottle()
    return composition.place(cut, composition.plan([canvas], cut.size, cutout=cut).layouts[index])


def alpha_of(layer: Image.Image) -> np.ndarray:
    return np.asarray(layer)[:, :, 3]


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def distance_to_product(alpha: np.ndarray) -> np.ndarray:
    """Pixel distance to the nearest pixel the layer covers at all (alpha > 0)."""
    return cv2.distanceTransform((alpha == 0).astype(np.uint8), cv2.DIST_L2, 5)


# --- the promise: exact product pixels ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["backdrop", "photo"])
@pytest.mark.parametrize("shape", list(CANVASES))
def test_product_pixels_are_exact_for_every_layout(shape: str, kind: str) -> None:
    canvas, cut = CANVASES[shape], bottle()
    bg = background(kind, canvas)
    layouts = composition.plan([canvas], cut.size, cutout=cut).layouts
    assert {lay.rotation for lay in layouts} == set(ROTATIONS)
    for layout in layouts:
        layer = composition.place(cut, layout)
        report = composition.integrity(compositor.compose(layer, bg), layer)
        assert report["exact_fraction"] == 1.0, layout.layout_key
        assert report["product_sha256"] == report["layer_sha256"], layout.layout_key


@pytest.mark.parametrize("corner", [(0, 0), (1, 1), (0, 1), (1, 0)])
def test_product_on_the_canvas_edge_is_exact(corner: tuple[int, int]) -> None:
    """Shadows and edge ring clipped by the canvas: still exact, nothing out of bounds."""
    cut = bottle()
    layer = Image.new("RGBA", (200, 240), (0, 0, 0, 0))
    layer.paste(cut, (corner[0] * (200 - cut.width), corner[1] * (240 - cut.height)))
    out = compositor.compose(layer, compositor.cover_crop(photo(), (200, 240)))
    assert out.size == (200, 240) and out.mode == "RGB"
    assert composition.integrity(out, layer)["exact_fraction"] == 1.0


def test_compose_is_deterministic() -> None:
    layer = layer_at((382, 200), index=26)
    bg = background("photo", (382, 200))
    first = compositor.compose(layer, bg)
    again = compositor.compose(layer.copy(), bg.copy())
    assert first.tobytes() == again.tobytes()
    assert np.array_equal(compositor.drop_shadow(alpha_of(layer)), compositor.drop_shadow(alpha_of(layer).copy()))


def test_compose_leaves_its_inputs_alone() -> None:
    layer, bg = layer_at((256, 256)), background("backdrop", (256, 256))
    before = (layer.tobytes(), bg.tobytes())
    compositor.compose(layer, bg)
    assert (layer.tobytes(), bg.tobytes()) == before


# --- drop shadow ---------------------------------------------------------------------------------


def test_drop_shadow_darkens_the_floor_behind_and_beside_the_product() -> None:
    layer = layer_at((256, 256))
    bg = background("backdrop", (256, 256))
    plain = arr(compositor.compose(layer, bg, drop_shadow=False, harmonise=False))
    cast = arr(compositor.compose(layer, bg, harmonise=False))
    alpha = alpha_of(layer)
    ys, xs = np.nonzero(alpha >= 128)
    base, height, right = ys.max(), ys.max() - ys.min(), np.nonzero(alpha.any(axis=0))[0].max()
    # Light from the front left: the shadow falls back (up the image) and to the right of the product.
    beside = np.s_[base - height // 8 : base - 2, right + 3 : right + 3 + height // 10]
    assert not alpha[beside].any()
    assert (plain[beside] - cast[beside]).mean() > 8
    darker = (plain - cast).sum(axis=2) > 0
    assert darker[:, right:].sum() > darker[:, : xs.min()].sum()
    assert not darker[base + 6 :].any()  # nothing cast in front of the contact line


def test_drop_shadow_starts_at_the_contact_line_and_fades() -> None:
    """Anchored where the product touches the floor: strongest there, fainter the farther it falls."""
    for index in (21, 22, 23):  # r3c2 at -15, 0, +15 degrees
        alpha = alpha_of(layer_at((256, 256), index))
        ys = np.nonzero(alpha >= 128)[0]
        base, reach = int(ys.max()), int(compositor.FLOOR_DEPTH * (ys.max() - ys.min()))  # far end of the cast
        shadow = compositor.drop_shadow(alpha)
        assert shadow.shape == alpha.shape and 0.0 <= shadow.min() and shadow.max() <= compositor.DROP_OPACITY
        rows = shadow.max(axis=1)
        assert base - reach // 3 <= int(np.argmax(rows)) <= base + 2  # darkest just behind the contact line
        assert rows[base - reach // 2] > rows[base - 3 * reach // 4] > rows[base - reach] > 0
        assert rows[base - reach] < 0.25 * rows.max()  # faint where the product's top falls
        assert rows[base + 8 :].max() < 0.02  # nothing in front of the footprint


def test_compose_darkens_by_exactly_the_drop_shadow() -> None:
    """drop_shadow() is what compose() applies: the floor is multiplied by 1 - it (away from the contact)."""
    layer = layer_at((320, 180), index=25)
    bg = background("photo", (320, 180))
    alpha = alpha_of(layer)
    out = arr(compositor.compose(layer, bg, harmonise=False)).astype(np.float32)
    free = (distance_to_product(alpha) > compositor.RING + 1) & (compositor.contact_shadow(alpha) == 0)
    want = arr(bg) * (1 - compositor.drop_shadow(alpha))[:, :, None]
    assert np.abs(out - want)[free].max() <= 1.0


def test_background_far_from_the_product_is_untouched() -> None:
    for kind in ("backdrop", "photo"):
        layer, bg = layer_at((382, 200), index=18), background(kind, (382, 200))  # r3c1: room on the right
        alpha = alpha_of(layer)
        changed = (arr(compositor.compose(layer, bg)) != arr(bg)).any(axis=2)
        allowed = (
            (distance_to_product(alpha) <= compositor.RING + 1)
            | (compositor.contact_shadow(alpha) > 0)
            | (compositor.drop_shadow(alpha) > 1e-3)
        )
        assert changed.any() and not (changed & ~allowed).any()
        assert allowed.mean() < 0.5
        assert not changed[:, 260:].any() and not changed[:20].any()  # far right, top: background verbatim


def test_floating_check_still_sees_the_contact_shadow() -> None:
    """The drop shadow must not darken the floor the classical check compares the contact band with."""
    from workers.checks import guideline_classical

    for index in (3, 14, 24, 26):  # tilted: the soft edge under a flat base would hide the band
        layer, bg = layer_at((256, 256), index), background("backdrop", (256, 256))
        verdicts = [
            guideline_classical.check_floating(
                np.asarray(compositor.compose(layer, bg, drop_shadow=on)), alpha_of(layer)
            )
            for on in (True, False)
        ]
        assert verdicts[0]["status"] == "pass" and verdicts[0]["value"] >= 0.9 * verdicts[1]["value"]


# --- edge harmonisation --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["backdrop", "photo"])
def test_harmonisation_changes_only_the_soft_edge(kind: str) -> None:
    layer, bg = layer_at((256, 256), index=23), background(kind, (256, 256))
    alpha = alpha_of(layer)
    soft = arr(compositor.compose(layer, bg))
    hard = arr(compositor.compose(layer, bg, harmonise=False))
    changed = (soft != hard).any(axis=2)
    fringe = (alpha > 0) & (alpha < 255)
    assert not changed[alpha == 255].any()
    assert changed[fringe].mean() > 0.3  # most of the fringe takes a little of the background
    assert (distance_to_product(alpha)[changed] <= compositor.RING).all()  # and a ring of at most RING px
    assert changed[alpha == 0].any()
    assert np.abs(soft - hard).max() < 40  # light: the edge is softened, not repainted


def test_harmonisation_pulls_the_fringe_towards_the_background() -> None:
    """A red product with a soft edge on a blue floor: its fringe turns a little bluer."""
    alpha = np.zeros((200, 200), np.uint8)
    cv2.circle(alpha, (100, 100), 50, 255, -1)
    rgba = np.dstack(
        [np.full((200, 200), 220, np.uint8), np.zeros((200, 200, 2), np.uint8), cv2.GaussianBlur(alpha, (0, 0), 2.0)]
    )
    layer = Image.fromarray(rgba, "RGBA")
    bg = Image.new("RGB", (200, 200), (20, 40, 230))
    fringe = (rgba[..., 3] > 40) & (rgba[..., 3] < 215)
    soft = arr(compositor.compose(layer, bg, drop_shadow=False))[fringe]
    hard = arr(compositor.compose(layer, bg, drop_shadow=False, harmonise=False))[fringe]
    assert (soft[:, 2] - hard[:, 2]).mean() > 2 and (soft[:, 0] - hard[:, 0]).mean() < -2


def test_translucent_part_inside_the_product_is_not_an_edge() -> None:
    """A see-through window in the product (alpha 160) keeps its plain blend: only the cut line is softened."""
    rgba = np.array(bottle())
    rgba[60:140, 30:90, 3] = 160
    layer = layer_at((256, 256), index=22, cut=Image.fromarray(rgba, "RGBA"))
    bg = background("photo", (256, 256))
    changed = (arr(compositor.compose(layer, bg)) != arr(compositor.compose(layer, bg, harmonise=False))).any(axis=2)
    window = cv2.erode((alpha_of(layer) == 160).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
    assert window.sum() > 500 and changed.any() and not changed[window].any()


def test_hard_edged_cutout_gets_a_soft_ring_outside_it() -> None:
    """A binary mask (no fringe at all): only pixels outside the product soften the cut."""
    placed = np.asarray(layer_at((256, 256), index=22))
    binary = np.where(placed[..., 3] >= 128, 255, 0).astype(np.uint8)
    layer, bg = Image.fromarray(np.dstack([placed[..., :3], binary]), "RGBA"), background("photo", (256, 256))
    soft = arr(compositor.compose(layer, bg))
    hard = arr(compositor.compose(layer, bg, harmonise=False))
    changed = (soft != hard).any(axis=2)
    assert changed.sum() > 50 and not changed[binary == 255].any()
    assert (distance_to_product(binary)[changed] <= compositor.RING).all()


# --- arguments --------------------------------------------------------------------------------------


def test_bad_arguments_name_the_argument() -> None:
    layer, bg = layer_at((256, 256)), background("backdrop", (256, 256))
    empty = Image.new("RGBA", (256, 256), (0, 0, 0, 0))
    faint = Image.new("RGBA", (256, 256), (9, 9, 9, 200))  # covers, but nothing fully opaque
    cases = [
        (lambda: compositor.compose("layer.png", bg), "^layer: expected an RGBA"),
        (lambda: compositor.compose(layer.convert("RGB"), bg), "^layer: expected an RGBA"),
        (lambda: compositor.compose(empty, bg), "^layer: has no fully opaque pixel"),
        (lambda: compositor.compose(faint, bg), "^layer: has no fully opaque pixel"),
        (lambda: compositor.compose(layer, np.asarray(bg)), "^background: expected a PIL image"),
        (lambda: compositor.compose(layer, bg.resize((128, 128))), r"^background: .*\(256, 256\)"),
        (lambda: compositor.drop_shadow(np.zeros((64, 64), np.uint8)), "^alpha: "),
        (lambda: compositor.contact_shadow(np.zeros((4, 64, 64), np.uint8)), "^alpha: "),
        (lambda: compositor.backdrop((8, 8), PALETTE), "^canvas: "),
        (lambda: compositor.cover_crop("photo.jpg", (64, 64)), "^background: "),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()


def test_other_background_modes_are_accepted() -> None:
    layer = layer_at((256, 256))
    bg = background("photo", (256, 256))
    rgb = compositor.compose(layer, bg)
    assert compositor.compose(layer, bg.convert("RGBA")).tobytes() == rgb.tobytes()
    grey = compositor.compose(layer, bg.convert("L"))
    assert grey.mode == "RGB" and composition.integrity(grey, layer)["exact_fraction"] == 1.0
