"""Embedded default generator: place the product cut-out on a backdrop, pixel-exact.

The promise of the whole product is that the product in every candidate *is* the
product. So nothing here paints over it: a layout only resamples the cut-out (scale,
rotation), :func:`compose` builds everything else around it and finally copies the
layer's RGB back verbatim wherever the layer is fully opaque, and :func:`composition.integrity`
proves it. Pure functions of pixels: no DB, no storage, no torch.

What grounds the product is all outside it: a contact shadow where it touches the floor,
a soft drop shadow of its silhouette cast back onto the floor by a key light from the
front left, and a light harmonisation of the cut edge (semi-transparent fringe and a
ring of a few px) so it does not look pasted. All of it is drawn in a window around the
product and its shadows; the rest of the canvas is the background verbatim.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image, ImageColor

from workers.imaging.composition import paste_back

__all__ = ["backdrop", "compose", "contact_shadow", "cover_crop", "drop_shadow"]

NEUTRAL = ((128, 128, 128), (96, 96, 96))  # backdrop colours when a brand has no palette
SHADOW_STRENGTH = 0.55  # darkest contact shadow multiplies the backdrop by 1 - this

# Drop shadow: the silhouette laid back onto the floor from the contact line.
LIGHT_SHEAR = 0.35  # shadow's run to the right per unit of product height (key light from the left)
FLOOR_DEPTH = 0.28  # shadow's run up the image per unit of height: the floor seen foreshortened
DROP_OPACITY = 0.3  # at the contact line the drop shadow multiplies the floor by 1 - this ...
DROP_FADE = 0.75  # ... and where the product's top falls, by 1 - this share of that
DROP_BLUR = (0.004, 0.03, 0.08)  # blur sigma / product height at the contact line, half-way, far end
DROP_RES = 96  # product height (px) the drop shadow is rendered at: it is blurred well past that detail

# Edge harmonisation: only where the layer's alpha is below 255.
RING = 3  # px either side of the cut line (alpha 128) that harmonisation may change
SPILL = 0.6  # at most this share of a light blur of the plain composite reaches the ring
SPILL_SIGMA = 1.5  # px: how far the spill reaches (about a pixel's share at RING px)
WRAP = 0.5  # the fringe's colour takes up to this share of the local background (light wrap)
WRAP_SIZE = 5  # px box that averages the "local" background colour

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), canvas coordinates


class Foot(NamedTuple):
    """Where the product stands: contact centre, contact line, footprint half-width, height."""

    cx: int
    base: int
    half_w: int
    height: int


# --- rendering -----------------------------------------------------------------------


def backdrop(canvas: tuple[int, int], palette: list[str]) -> Image.Image:
    """Studio backdrop in the brand colours: wall gradient, soft horizon, floor, vignette.

    Wall from a light tint of palette[0]; floor from palette[1] (or a darker palette[0]).
    Deterministic: same inputs, same pixels. Neutral greys when the palette is empty.
    """
    w, h = _check_canvas(canvas)
    wall, floor = _backdrop_colours(palette)
    y = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    wall_col = _mix(wall, 1.0, 0.88) * (1 - y) + _mix(wall, 1.0, 0.62) * y
    floor_col = _mix(floor, 1.0, 0.45) * (1 - 0.25 * y)
    t = _smoothstep(0.58, 0.70, y)  # soft horizon: no hard line for the eye to catch on
    img = wall_col * (1 - t) + floor_col * t
    img = img * _vignette(w, h)[:, :, None]
    return Image.fromarray(np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8), "RGB")


def _check_canvas(canvas: tuple[int, int]) -> tuple[int, int]:
    if len(canvas) != 2 or min(canvas) < 16 or max(canvas) > 8192:
        raise ValueError(f"canvas: expected (w, h) within 16..8192, got {canvas}")
    return int(canvas[0]), int(canvas[1])


def _backdrop_colours(palette: list[str]) -> tuple[np.ndarray, np.ndarray]:
    cols = []
    for i, value in enumerate(palette[:2]):
        try:
            cols.append(np.array(ImageColor.getrgb(value)[:3], np.float32) / 255)
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"palette[{i}]: not a colour: {value!r}") from exc
    if not cols:
        return (np.array(NEUTRAL[0], np.float32) / 255, np.array(NEUTRAL[1], np.float32) / 255)
    return cols[0], cols[1] if len(cols) > 1 else cols[0] * 0.6


def _mix(colour: np.ndarray, target: float, amount: float) -> np.ndarray:
    return colour * (1 - amount) + target * amount


def _smoothstep(lo: float, hi: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _vignette(w: int, h: int) -> np.ndarray:
    xs = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    ys = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    vignette: np.ndarray = 1.0 - 0.18 * np.clip((xs**2 + ys**2) / 2.0, 0.0, 1.0)
    return vignette


def cover_crop(background: Image.Image, canvas: tuple[int, int]) -> Image.Image:
    """Scale ``background`` to cover the canvas (no bars), then centre-crop to it."""
    w, h = _check_canvas(canvas)
    if not isinstance(background, Image.Image):
        raise ValueError(f"background: expected a PIL image, got {type(background).__name__}")
    bw, bh = background.size
    f = max(w / bw, h / bh)
    size = (max(w, math.ceil(bw * f)), max(h, math.ceil(bh * f)))
    big = background.convert("RGB").resize(size, Image.Resampling.LANCZOS)
    left, top = (size[0] - w) // 2, (size[1] - h) // 2
    return big.crop((left, top, left + w, top + h))


def compose(
    layer: Image.Image, background: Image.Image, *, drop_shadow: bool = True, harmonise: bool = True
) -> Image.Image:
    """Background + contact and drop shadows + product layer; opaque product pixels copied verbatim.

    ``drop_shadow`` and ``harmonise`` (the cut edge) can be switched off, e.g. to compare.
    Whatever is on, only the window around the product and its shadows changes, and
    :func:`paste_back` has the last word on every pixel of the product.
    """
    box = _product_box(layer)
    bg = _check_background(background, layer.size)
    foot = _foot(np.asarray(layer.crop(box).getchannel("A")), box)
    win = _window(box, foot, layer.size, drop_shadow)
    floor = _shaded(bg, layer, foot, win, drop_shadow)
    out = bg.copy()
    out.paste(Image.fromarray(floor, "RGB"), win[:2])
    # The product and its edge ring only: the rest of the window is floor and shadow.
    edge = _clip(_grow(box, RING + 1), layer.size)
    ground, part = floor[edge[1] - win[1] : edge[3] - win[1], edge[0] - win[0] : edge[2] - win[0]], layer.crop(edge)
    image, lay = _harmonised(ground, part) if harmonise else (Image.fromarray(ground, "RGB"), part)
    out.paste(paste_back(image, lay), edge[:2])
    return out


def _product_box(layer: Image.Image) -> Box:
    if not isinstance(layer, Image.Image) or layer.mode != "RGBA":
        raise ValueError("layer: expected an RGBA PIL image")
    box = layer.getbbox()  # of alpha > 0: Pillow >= 8 looks at an RGBA image's alpha only
    if box is None:
        raise ValueError("layer: has no fully opaque pixel, there is no product in it")
    return box


def _check_background(background: Image.Image, size: tuple[int, int]) -> Image.Image:
    if not isinstance(background, Image.Image) or background.size != size:
        raise ValueError(f"background: expected a PIL image of size {size}")
    return background if background.mode == "RGB" else background.convert("RGB")


def _foot(alpha_box: np.ndarray, box: Box) -> Foot:
    """The footprint of the product cropped to ``box``, in canvas coordinates."""
    solid = alpha_box >= 128
    if not solid.any():
        raise ValueError("layer: has no fully opaque pixel, there is no product in it")
    cx, base, half_w = footprint(solid)
    top = int(np.flatnonzero(solid.any(axis=1))[0])
    return Foot(cx + box[0], base + box[1], half_w, max(1, base - top))


def _window(box: Box, foot: Foot, size: tuple[int, int], drop: bool) -> Box:
    """Smallest canvas box holding the product, its edge ring and its shadows."""
    boxes = [_grow(box, RING + 1), _contact_box(foot, size)]
    if drop:
        boxes.append(_drop_box(box, foot))
    # Origin on the drop shadow's reduced grid, so compose renders exactly what drop_shadow() returns.
    k = _drop_step(foot)
    x0, y0 = (min(b[0] for b in boxes) // k) * k, (min(b[1] for b in boxes) // k) * k
    return _clip((x0, y0, max(b[2] for b in boxes), max(b[3] for b in boxes)), size)


def _grow(box: Box, pad: int) -> Box:
    return box[0] - pad, box[1] - pad, box[2] + pad, box[3] + pad


def _clip(box: Box, size: tuple[int, int]) -> Box:
    return max(0, box[0]), max(0, box[1]), min(size[0], box[2]), min(size[1], box[3])


def _shaded(bg: Image.Image, layer: Image.Image, foot: Foot, win: Box, drop: bool) -> np.ndarray:
    """The background in ``win`` (uint8 RGB) darkened by the contact and drop shadows."""
    mult = 1.0 - SHADOW_STRENGTH * _contact_map(foot, layer.size, win)
    if drop:
        local = foot._replace(cx=foot.cx - win[0], base=foot.base - win[1])
        mult *= 1.0 - _drop_map(np.asarray(layer.crop(win).getchannel("A")), local)
    # uint8 x float32 in one OpenCV pass: a quarter of numpy's float round trip, same rounding.
    return cv2.multiply(np.asarray(bg.crop(win)), cv2.merge([mult, mult, mult]), dtype=cv2.CV_8U)


# --- contact shadow ------------------------------------------------------------------------


def contact_shadow(alpha: np.ndarray) -> np.ndarray:
    """Float HxW in 0..1: a soft flattened ellipse where the product meets the floor.

    Centred under the product's lowest rows (not its bounding box) so a rotated
    product's shadow sits under the corner that actually touches the ground.
    """
    h, w = _check_alpha(alpha)
    return _contact_map(_foot(alpha, (0, 0, w, h)), (w, h), (0, 0, w, h))


def _check_alpha(alpha: np.ndarray) -> tuple[int, int]:
    if not isinstance(alpha, np.ndarray) or alpha.ndim != 2 or not (alpha >= 128).any():
        raise ValueError("alpha: expected an HxW array with a product (values >= 128) in it")
    return alpha.shape


def _contact_geometry(foot: Foot) -> tuple[int, float, int]:
    """(half height, blur sigma, pad) of the contact ellipse: flat, and as wide as the footprint."""
    half_h = max(2, round(foot.half_w * 0.12))
    blur = max(1.0, half_h * 0.8)
    return half_h, blur, int(3 * blur) + 2


def _contact_box(foot: Foot, size: tuple[int, int]) -> Box:
    half_h, _, pad = _contact_geometry(foot)
    box = (
        foot.cx - foot.half_w - pad,
        foot.base - half_h - pad,
        foot.cx + foot.half_w + pad + 1,
        foot.base + half_h + pad + 1,
    )
    return _clip(box, size)


def _contact_map(foot: Foot, size: tuple[int, int], win: Box) -> np.ndarray:
    """The contact shadow in ``win`` (which holds its whole box), blurred in its own box only."""
    half_h, blur, _ = _contact_geometry(foot)
    x0, y0, x1, y1 = _contact_box(foot, size)
    patch = np.zeros((y1 - y0, x1 - x0), np.float32)
    centre = (foot.cx - x0, foot.base - y0)
    cv2.ellipse(patch, centre, (foot.half_w, half_h), 0, 0, 360, 1.0, -1)
    cv2.ellipse(
        patch, centre, (max(1, foot.half_w * 2 // 3), max(1, half_h // 2)), 0, 0, 360, 1.6, -1
    )  # darker core right at the contact line
    out = np.zeros((win[3] - win[1], win[2] - win[0]), np.float32)
    out[y0 - win[1] : y1 - win[1], x0 - win[0] : x1 - win[0]] = np.clip(cv2.GaussianBlur(patch, (0, 0), blur), 0.0, 1.0)
    return out


def footprint(fg: np.ndarray) -> tuple[int, int, int]:
    """(centre x, base row, half-width) of where the product ``fg`` (bool HxW) stands: its contact
    shadow's ellipse. Public because the classical guideline check looks for the shadow there."""
    ys, xs = np.nonzero(fg)
    top, bottom = int(ys.min()), int(ys.max())
    low = ys >= bottom - max(1, (bottom - top) // 10)  # the lowest tenth of the product
    span = int(xs[low].max() - xs[low].min()) + 1
    width = int(xs.max() - xs.min()) + 1
    half_w = max(4, round(0.55 * max(span, 0.6 * width)))
    return int(round(xs[low].mean())), bottom, half_w


# --- drop shadow -----------------------------------------------------------------------------


def drop_shadow(alpha: np.ndarray) -> np.ndarray:
    """Float HxW in 0..DROP_OPACITY: how much :func:`compose` darkens the floor with the drop shadow.

    The silhouette laid back onto the floor from its contact line: each product row
    ``d`` px above that line falls ``FLOOR_DEPTH * d`` px above it, ``LIGHT_SHEAR * d`` px
    to the right. Crisp at the contact, softer and fainter the farther it falls, as a
    real shadow of an area light is.
    """
    h, w = _check_alpha(alpha)
    return _drop_map(alpha, _foot(alpha, (0, 0, w, h)))


def _drop_box(box: Box, foot: Foot) -> Box:
    """Where the drop shadow reaches: the cast silhouette plus 3 sigma of its blur.

    Shift and blur are both piecewise linear in the distance from the contact line
    (d = 0, 1/2, 1), so their extremes lie at those three rows.
    """
    h, slack = foot.height, 2 * _drop_step(foot) + 2  # the reduced grid smears about a step
    ends = [(LIGHT_SHEAR * d * h, FLOOR_DEPTH * d * h, 3 * s * h) for d, s in zip((0, 0.5, 1), DROP_BLUR, strict=True)]
    return (
        box[0] + math.floor(min(dx - r for dx, _, r in ends)) - slack,
        foot.base - math.ceil(max(dy + r for _, dy, r in ends)) - slack,
        box[2] + math.ceil(max(dx + r for dx, _, r in ends)) + slack,
        max(box[3], foot.base + 1) + math.ceil(ends[0][2]) + slack,
    )


def _drop_step(foot: Foot) -> int:
    return max(1, round(foot.height / DROP_RES))


def _drop_map(alpha: np.ndarray, foot: Foot) -> np.ndarray:
    """The drop shadow over ``alpha``'s extent (``foot`` in its coordinates), rendered at 1/step size."""
    k, (h, w) = _drop_step(foot), alpha.shape
    small = cv2.resize(_pad_to(alpha, k), None, fx=1 / k, fy=1 / k, interpolation=cv2.INTER_AREA)
    base = (foot.base + 0.5) / k - 0.5  # the contact line at the small size (pixel centres)
    lay = np.array([[1, -LIGHT_SHEAR, LIGHT_SHEAR * base], [0, FLOOR_DEPTH, (1 - FLOOR_DEPTH) * base]], np.float32)
    cast = cv2.warpAffine(small.astype(np.float32) / 255, lay, small.shape[::-1], flags=cv2.INTER_LINEAR)
    cast = _graded_blur(cast, base, foot.height / k)
    return cv2.resize(cast, (small.shape[1] * k, small.shape[0] * k), interpolation=cv2.INTER_LINEAR)[:h, :w]


def _pad_to(alpha: np.ndarray, k: int) -> np.ndarray:
    h, w = alpha.shape
    return np.pad(alpha, ((0, -h % k), (0, -w % k))) if (h % k or w % k) else alpha


def _graded_blur(cast: np.ndarray, base: float, height: float) -> np.ndarray:
    """Blur and opacity that grow / fade with the distance from the contact line."""
    near, mid, far = (cv2.GaussianBlur(cast, (0, 0), max(0.5, s * height)) for s in DROP_BLUR)
    rows = np.arange(cast.shape[0], dtype=np.float32)[:, None]
    d = np.clip((base - rows) / max(1.0, FLOOR_DEPTH * height), 0.0, 1.0)  # 0 at contact, 1 at the far end
    w_near, w_far = np.clip(1 - 2 * d, 0, 1), np.clip(2 * d - 1, 0, 1)
    shadow = near * w_near + mid * (1 - w_near - w_far) + far * w_far
    graded: np.ndarray = shadow * (DROP_OPACITY * (1 - DROP_FADE * d))
    return graded


# --- edge harmonisation ----------------------------------------------------------------------


def _harmonised(ground: np.ndarray, part: Image.Image) -> tuple[Image.Image, Image.Image]:
    """(background, layer) for paste_back with a softened cut edge; both differ only where alpha < 255.

    Only within RING px of the cut line (alpha 128), so a translucent part inside the
    product or a faint alpha tail far out stays as it is. There, the semi-transparent
    fringe's colour takes a little of the local background (light wraps around a real
    edge), and pixels outside the product (alpha 0) take a little of a light blur of the
    plain composite (a lens spills an edge a pixel or two): that ring is all a hard-edged
    mask gets. Only those few pixels are computed in float; blurs run on uint8.
    """
    rgba = np.asarray(part)
    alpha = rgba[:, :, 3]
    solid = (alpha >= 128).astype(np.uint8)
    at = np.nonzero((cv2.dilate(solid, _DISC) > 0) & (cv2.dilate(1 - solid, _DISC) > 0) & (alpha < 255))
    a = alpha[at][:, None].astype(np.float32) / 255
    out, lay = ground.copy(), rgba.copy()
    out[at] = _spilled(ground, rgba, at, a)
    lay[at[0], at[1], :3] = _wrapped(ground, rgba, at, a)
    return Image.fromarray(out, "RGB"), Image.fromarray(lay, "RGBA")


def _spilled(ground: np.ndarray, rgba: np.ndarray, at: tuple[np.ndarray, ...], a: np.ndarray) -> np.ndarray:
    """Floor colour at ``at``: outside the product, plus a little of the blurred plain composite."""
    alpha = rgba[:, :, 3]
    fg, bg = rgba[at][:, :3].astype(np.float32), ground[at].astype(np.float32)
    plain = cv2.copyTo(cv2.cvtColor(rgba, cv2.COLOR_RGBA2RGB), (alpha == 255).view(np.uint8), ground.copy())
    plain[at] = _u8(fg * a + bg * (1 - a))
    reach = cv2.GaussianBlur((alpha >= 128).astype(np.uint8) * 255, (0, 0), SPILL_SIGMA)[at][:, None] / 255
    soft = cv2.GaussianBlur(plain, (0, 0), 1.0)[at]
    return _u8(bg + SPILL * reach * (a == 0) * (soft - bg))  # under the fringe, paste_back's blend does it


def _wrapped(ground: np.ndarray, rgba: np.ndarray, at: tuple[np.ndarray, ...], a: np.ndarray) -> np.ndarray:
    """Product colour at ``at``: the less opaque, the more of the local background it takes."""
    fg = rgba[at][:, :3].astype(np.float32)
    local = cv2.blur(ground, (WRAP_SIZE, WRAP_SIZE))[at]
    return _u8(fg + WRAP * (1 - a) * (local - fg))


_DISC = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * RING + 1, 2 * RING + 1))


def _u8(values: np.ndarray) -> np.ndarray:
    return np.clip(values + 0.5, 0, 255).astype(np.uint8)
