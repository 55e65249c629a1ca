"""Embedded default generator: place the product cut-out on a backdrop, pixel-exact.

The promise of the whole product is that the product in every candidate *is* the
product. So nothing here paints over it: a layout only resamples the cut-out (scale,
rotation), :func:`compose` builds everything else around it and finally copies the
layer's RGB back verbatim wherever the layer is fully opaque, and :func:`integrity`
proves it. Pure functions of pixels: no DB, no storage, no torch.
"""
from __future__ import annotations

import math

import cv2
import numpy as np
from PIL import Image, ImageColor

from workers.models.composition import paste_back, split_layer

NEUTRAL = ((128, 128, 128), (96, 96, 96))  # backdrop colours when a brand has no palette
SHADOW_STRENGTH = 0.55  # darkest shadow multiplies the backdrop by 1 - this


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
    return 1.0 - 0.18 * np.clip((xs**2 + ys**2) / 2.0, 0.0, 1.0)


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


def compose(layer: Image.Image, background: Image.Image) -> Image.Image:
    """Backdrop + contact shadow + product layer; opaque product pixels copied verbatim."""
    _, alpha = split_layer(layer, "layer")
    if not isinstance(background, Image.Image) or background.size != layer.size:
        raise ValueError(f"background: expected a PIL image of size {layer.size}")
    bg = np.asarray(background.convert("RGB")).astype(np.float32)
    bg *= 1.0 - SHADOW_STRENGTH * contact_shadow(alpha)[:, :, None]
    return paste_back(Image.fromarray(np.clip(bg + 0.5, 0, 255).astype(np.uint8), "RGB"), layer)


def contact_shadow(alpha: np.ndarray) -> np.ndarray:
    """Float HxW in 0..1: a soft flattened ellipse where the product meets the floor.

    Centred under the product's lowest rows (not its bounding box) so a rotated
    product's shadow sits under the corner that actually touches the ground.
    """
    cx, base, half_w = _footprint(alpha >= 128)
    half_h = max(2, round(half_w * 0.12))
    blur = max(1.0, half_h * 0.8)
    pad = int(3 * blur) + 2
    h, w = alpha.shape
    x0, x1 = max(0, cx - half_w - pad), min(w, cx + half_w + pad + 1)
    y0, y1 = max(0, base - half_h - pad), min(h, base + half_h + pad + 1)
    patch = np.zeros((y1 - y0, x1 - x0), np.float32)  # blur only the shadow's patch
    cv2.ellipse(patch, (cx - x0, base - y0), (half_w, half_h), 0, 0, 360, 1.0, -1)
    cv2.ellipse(patch, (cx - x0, base - y0), (max(1, half_w * 2 // 3), max(1, half_h // 2)),
                0, 0, 360, 1.6, -1)  # darker core right at the contact line
    shadow = np.zeros((h, w), np.float32)
    shadow[y0:y1, x0:x1] = np.clip(cv2.GaussianBlur(patch, (0, 0), blur), 0.0, 1.0)
    return shadow


def _footprint(fg: np.ndarray) -> tuple[int, int, int]:
    ys, xs = np.nonzero(fg)
    top, bottom = int(ys.min()), int(ys.max())
    low = ys >= bottom - max(1, (bottom - top) // 10)  # the lowest tenth of the product
    span = int(xs[low].max() - xs[low].min()) + 1
    width = int(xs.max() - xs.min()) + 1
    half_w = max(4, round(0.55 * max(span, 0.6 * width)))
    return int(round(xs[low].mean())), bottom, half_w
