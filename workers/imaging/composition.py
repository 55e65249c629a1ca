"""Composition geometry: where the product goes on each canvas, and the placed layer itself.

Planning is deterministic (same inputs, same layouts) and never paints: :func:`place` only
resamples the cut-out (scale, rotation), so with scale 1 and rotation 0 the layer holds the
uploaded product pixels bit for bit. Pure functions of pixels: no DB, no storage, no torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from shared import integrity as integrity_record


@dataclass
class Layout:
    layout_key: str  # e.g. "1024x1024-r2c1-p15" (m15 = -15 degrees)
    canvas_w: int
    canvas_h: int
    x: int  # top-left of the placed (scaled + rotated) product layer on the canvas
    y: int
    scale: float  # placed product height / original cut-out height (before rotation)
    rotation: float  # degrees, counter-clockwise (PIL convention)
    row: int  # 1-based grid row; row == rows is the lower third
    col: int  # 1-based grid column
    width: int = 0  # size of the placed, rotated box; place() checks the cut-out matches
    height: int = 0
    ground_y: int = 0  # the row's ground line (see ground_line)
    bottom_gap: int = 0  # transparent rows under the product's lowest opaque-ish pixel
    # invariant: y + height - bottom_gap == ground_y (the product stands on the line)

    def record(self) -> dict[str, Any]:
        """Where the product went, as a candidate stores it (Candidate.placement)."""
        return {
            "x": self.x,
            "y": self.y,
            "scale": self.scale,
            "rotation": self.rotation,
            "row": self.row,
            "col": self.col,
            "canvas": {"width": self.canvas_w, "height": self.canvas_h},
            # the placed layer's box with x, y: near-duplicate clustering tells apart products in different places
            "width": self.width,
            "height": self.height,
        }


# --- layout planning -----------------------------------------------------------------


@dataclass(frozen=True)
class SafeZone:
    """A region of every canvas the product must not cover (headline, logo), in canvas fractions."""

    label: str
    x: float
    y: float
    width: float
    height: float

    def rect(self, canvas_w: int, canvas_h: int) -> tuple[float, float, float, float]:
        return (
            self.x * canvas_w,
            self.y * canvas_h,
            (self.x + self.width) * canvas_w,
            (self.y + self.height) * canvas_h,
        )


@dataclass
class Plan:
    layouts: list[Layout]
    skipped_canvases: list[dict[str, object]]  # {"canvas": [w, h], "reason": ...}: no layout at all
    safe_zone_exclusions: dict[str, int]  # "WxH" -> layouts dropped because they cover a safe zone


def plan(
    canvases: list[tuple[int, int]],
    product_size: tuple[int, int],
    rows: int = 3,
    cols: int = 3,
    rotations: tuple[float, ...] = (-15, 0, 15),
    scale_share: float = 0.45,
    max_upscale: float = 2.0,
    margin: float = 0.04,
    cutout: Image.Image | None = None,
    *,
    min_share: float = 0.0,
    safe_zones: tuple[SafeZone, ...] = (),
) -> Plan:
    """Every canvas x grid row x grid column x rotation, in that (deterministic) order.

    One scale per canvas, so the product has the same size in all of that canvas's
    candidates: its larger relative side is ``scale_share`` of the canvas unless that would
    not fit (any rotation, inside the margins) or would upscale beyond ``max_upscale``.

    Pass the ``cutout`` itself (optional) to stand the product's real lowest pixel on
    the ground line: a rotated bottle touches the floor with its corner, a rotated
    round product would otherwise hover by a few pixels above its bounding box bottom.

    What cannot be placed is skipped and reported: a canvas where the product's larger
    relative side would stay below ``min_share`` (it does not fit any larger, or only by
    upscaling beyond ``max_upscale``); every layout whose box covers a safe zone; and a
    canvas left with none.
    """
    _check_plan_args(canvases, product_size, rows, cols, rotations, scale_share, max_upscale, margin)
    _check_cutout(cutout, product_size)
    if not 0 <= min_share < 1:
        raise ValueError(f"min_share: expected 0 <= share < 1, got {min_share}")
    grid = _Grid(rows, cols, tuple(float(r) for r in rotations), margin)
    out = Plan([], [], {})
    for canvas in canvases:
        _plan_canvas(out, canvas, product_size, cutout, grid, (scale_share, max_upscale, min_share), safe_zones)
    return out


def _plan_canvas(
    out: Plan,
    canvas: tuple[int, int],
    product: tuple[int, int],
    cutout: Image.Image | None,
    grid: _Grid,
    shares: tuple[float, float, float],
    zones: tuple[SafeZone, ...],
) -> None:
    scale_share, max_upscale, min_share = shares
    scale = _canvas_scale(canvas, product, grid, scale_share, max_upscale)
    achieved = scale * max(product[0] / canvas[0], product[1] / canvas[1])
    if achieved < min_share:
        out.skipped_canvases.append(
            {"canvas": list(canvas), "reason": _too_small(achieved, min_share, scale, max_upscale)}
        )
        return
    found = _canvas_layouts(canvas, product, cutout, scale, grid)
    kept = [lay for lay in found if not any(_covers(lay, zone) for zone in zones)]
    if len(kept) < len(found):
        out.safe_zone_exclusions[f"{canvas[0]}x{canvas[1]}"] = len(found) - len(kept)
    if not kept:
        out.skipped_canvases.append({"canvas": list(canvas), "reason": "every grid position covers a safe zone"})
    out.layouts += kept


def _too_small(achieved: float, min_share: float, scale: float, max_upscale: float) -> str:
    why = (
        f"upscaling is capped at {max_upscale:g}x"
        if scale >= max_upscale - 1e-9
        else "it does not fit the canvas any larger at every rotation"
    )
    return f"the product would cover only {achieved:.0%} of the canvas (minimum {min_share:.0%}): {why}"


def _covers(layout: Layout, zone: SafeZone) -> bool:
    x0, y0, x1, y1 = zone.rect(layout.canvas_w, layout.canvas_h)
    return layout.x < x1 and x0 < layout.x + layout.width and layout.y < y1 and y0 < layout.y + layout.height


@dataclass(frozen=True)
class _Grid:
    rows: int
    cols: int
    rotations: tuple[float, ...]
    margin: float


def _check_plan_args(
    canvases: list[tuple[int, int]],
    product_size: tuple[int, int],
    rows: int,
    cols: int,
    rotations: tuple[float, ...],
    scale_share: float,
    max_upscale: float,
    margin: float,
) -> None:
    if not canvases or any(len(c) != 2 or min(c) < 16 for c in canvases):
        raise ValueError(f"canvases: expected a non-empty list of (w, h) >= 16, got {canvases}")
    if len(product_size) != 2 or min(product_size) < 1:
        raise ValueError(f"product_size: expected (w, h) >= 1, got {product_size}")
    if rows < 1 or cols < 1:
        raise ValueError(f"rows/cols: expected >= 1, got rows={rows} cols={cols}")
    if not rotations or any(abs(r) >= 90 for r in rotations):
        raise ValueError(f"rotations: expected a non-empty tuple within (-90, 90), got {rotations}")
    if not 0 < scale_share <= 1:
        raise ValueError(f"scale_share: expected 0 < share <= 1, got {scale_share}")
    if max_upscale <= 0:
        raise ValueError(f"max_upscale: expected > 0, got {max_upscale}")
    if not 0 <= margin < 0.5:
        raise ValueError(f"margin: expected 0 <= margin < 0.5, got {margin}")


def _check_cutout(cutout: Image.Image | None, product_size: tuple[int, int]) -> None:
    if cutout is None:
        return
    if not isinstance(cutout, Image.Image) or cutout.mode != "RGBA":
        raise ValueError("cutout: expected an RGBA PIL image (alpha = product mask)")
    if cutout.size != tuple(product_size):
        raise ValueError(f"cutout: size {cutout.size} differs from product_size {product_size}")


def _canvas_scale(
    canvas: tuple[int, int], product: tuple[int, int], grid: _Grid, scale_share: float, max_upscale: float
) -> float:
    (cw, ch), (pw, ph) = canvas, product
    # 3 px of slack: rounding the scaled size and PIL's expand both round outwards.
    inner_w, inner_h = cw * (1 - 2 * grid.margin) - 3, ch * (1 - 2 * grid.margin) - 3
    fit = min(_fit_rotated(inner_w, inner_h, pw, ph, rot) for rot in grid.rotations)
    # The product's larger relative side gets scale_share of the canvas: a wide shoe and a tall
    # bottle then both leave room for the grid's columns and rows to differ.
    share = scale_share * min(cw / pw, ch / ph)
    return max(1e-6, min(share, max_upscale, fit))


def _fit_rotated(inner_w: float, inner_h: float, pw: int, ph: int, rot: float) -> float:
    """Largest scale at which the rotated bounding box still fits inner_w x inner_h."""
    c, s = abs(math.cos(math.radians(rot))), abs(math.sin(math.radians(rot)))
    return min(inner_w / (pw * c + ph * s), inner_h / (pw * s + ph * c))


def _canvas_layouts(
    canvas: tuple[int, int], product: tuple[int, int], cutout: Image.Image | None, scale: float, grid: _Grid
) -> list[Layout]:
    boxes = {rot: _placed_box(product, cutout, scale, rot) for rot in grid.rotations}
    # Ground lines belong to the row, not the rotation: the band is set by the tallest
    # standing product, so every rotation in a row stands on the same floor.
    tallest = max(h - gap for _, h, gap in boxes.values())
    return [
        _layout(
            canvas,
            scale,
            (row, col),
            rot,
            boxes[rot],
            ground_line(canvas[1], tallest, row, grid.rows, grid.margin),
            grid,
        )
        for row in range(1, grid.rows + 1)
        for col in range(1, grid.cols + 1)
        for rot in grid.rotations
    ]


def _layout(
    canvas: tuple[int, int],
    scale: float,
    cell: tuple[int, int],
    rot: float,
    box: tuple[int, int, int],
    ground: int,
    grid: _Grid,
) -> Layout:
    (cw, ch), (row, col), (w, h, gap) = canvas, cell, box
    centre_x = cw * grid.margin + (col - 0.5) * cw * (1 - 2 * grid.margin) / grid.cols
    lo, hi = round(cw * grid.margin), cw - round(cw * grid.margin) - w
    x = min(max(round(centre_x - w / 2), lo), hi)  # edge columns clamp to the margins
    x = min(max(x, 0), cw - w)  # and, whatever the margins, onto the canvas
    y = min(max(ground - h + gap, 0), ch - h)
    key = f"{cw}x{ch}-r{row}c{col}-{'m' if rot < 0 else 'p'}{abs(rot):g}"
    return Layout(key, cw, ch, int(x), int(y), scale, rot, row, col, w, h, ground, gap)


def ground_line(canvas_h: int, band_h: int, row: int, rows: int, margin: float) -> int:
    """y of the floor the products of grid ``row`` stand on (bottom-centre anchor).

    Rows spread their ground lines evenly over the band where a box ``band_h`` tall fits
    between the margins: row 1 stands highest (its tallest box touches the top margin),
    the last row stands on the bottom margin (lower third). Every product stands on its
    line and none is clamped off it, so nothing floats.
    """
    top, bottom = canvas_h * margin + band_h, canvas_h * (1 - margin)
    share = 1.0 if rows == 1 else (row - 1) / (rows - 1)
    return int(round(min(top, bottom) + max(0.0, bottom - top) * share))


def _placed_box(product: tuple[int, int], cutout: Image.Image | None, scale: float, rot: float) -> tuple[int, int, int]:
    """(w, h, bottom_gap) of the placed product; gap 0 when only the size is known."""
    if cutout is None:
        return (*placed_size(product, scale, rot), 0)
    # Alpha alone transforms exactly like the A of the RGBA (same filter per channel)
    # at a quarter of the cost.
    alpha = np.asarray(transform(cutout.getchannel("A"), scale, rot))
    rows = np.flatnonzero((alpha >= 128).any(axis=1))
    gap = alpha.shape[0] - 1 - int(rows.max()) if rows.size else 0
    return alpha.shape[1], alpha.shape[0], gap


def placed_size(product_size: tuple[int, int], scale: float, rotation: float) -> tuple[int, int]:
    """Exact (w, h) :func:`place` will produce: same rounding, same PIL expand."""
    return integrity_record.placed_size(layout_transform(product_size, scale, rotation))


def layout_transform(
    product_size: tuple[int, int],
    scale: float,
    rotation: float,
    offset: tuple[int, int] = (0, 0),
    canvas: tuple[int, int] | None = None,
    crop: tuple[int, int, int, int] | None = None,
) -> integrity_record.Transform:
    """The integrity transform of a layout: ``crop`` (the cut-out's box in its source photo; the whole
    cut-out by default) resized by ``scale``, rotated, its top-left at ``offset`` on the canvas."""
    w, h = product_size
    box = crop or (0, 0, w, h)
    if (box[2] - box[0], box[3] - box[1]) != (w, h):
        raise ValueError(f"crop: {box} is not the size of the {w}x{h} cut-out")
    return integrity_record.transform_for(box, scale, rotation, offset, canvas or (w, h))


def transform_of(
    layout: Layout, product_size: tuple[int, int], crop: tuple[int, int, int, int] | None = None
) -> integrity_record.Transform:
    """Where ``layout`` puts a cut-out of ``product_size`` (cut from ``crop`` of its source), as recorded."""
    return layout_transform(
        product_size, layout.scale, layout.rotation, (layout.x, layout.y), (layout.canvas_w, layout.canvas_h), crop
    )


def place(cutout: Image.Image, layout: Layout) -> Image.Image:
    """Canvas-sized transparent RGBA layer with the scaled, rotated cut-out at (x, y).

    Scale 1 and rotation 0 are plain copies, so in that case the layer holds the
    uploaded product pixels bit for bit. The resampling and the paste are
    :mod:`shared.integrity`'s, the very code that verifies a candidate later.
    """
    if not isinstance(cutout, Image.Image) or cutout.mode != "RGBA":
        raise ValueError("cutout: expected an RGBA PIL image (alpha = product mask)")
    t = transform_of(layout, cutout.size)
    placed = integrity_record.resample(cutout, t)
    check_placed_size(placed.size, layout)
    return integrity_record.place_on_canvas(placed, t)


def check_placed_size(size: tuple[int, int], layout: Layout) -> None:
    """ValueError unless a placed product of ``size`` has the planned size and lies on the canvas."""
    if layout.width and size != (layout.width, layout.height):
        raise ValueError(
            f"layout: planned a {layout.width}x{layout.height} box but the cut-out places as {size[0]}x{size[1]}"
        )
    if not (0 <= layout.x <= layout.canvas_w - size[0] and 0 <= layout.y <= layout.canvas_h - size[1]):
        raise ValueError(f"layout: {layout.layout_key} puts the product off the canvas")


def transform(cutout: Image.Image, scale: float, rotation: float) -> Image.Image:
    """The cut-out scaled (LANCZOS) then rotated about its centre (BICUBIC, expand)."""
    return integrity_record.resample(cutout, layout_transform(cutout.size, scale, rotation))


# --- the promise: paste back, prove it ---------------------------------------------------


def paste_back(image: Image.Image, layer: Image.Image) -> Image.Image:
    """``image`` with the placed product layer on top; opaque product pixels copied verbatim.

    Every generator ends here, whatever it painted: the soft edge is alpha-blended over the
    generated scene, and wherever the layer's alpha is 255 the output equals the layer.
    """
    fg, alpha = split_layer(layer, "layer")
    if not isinstance(image, Image.Image) or image.size != layer.size:
        raise ValueError(f"image: expected a PIL image of size {layer.size}")
    out = np.array(image.convert("RGB"))
    ys, xs = np.nonzero(alpha)  # blend only the product's box: the rest of the canvas is untouched
    box = np.s_[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    a = alpha[box].astype(np.float32)[:, :, None] / 255.0
    out[box] = np.clip(fg[box] * a + out[box] * (1 - a) + 0.5, 0, 255).astype(np.uint8)
    opaque = alpha == 255
    out[opaque] = fg[opaque]  # exact product pixels, never a blend of them
    return Image.fromarray(out, "RGB")


def split_layer(layer: Image.Image, name: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(layer, Image.Image) or layer.mode != "RGBA":
        raise ValueError(f"{name}: expected an RGBA PIL image")
    arr = np.asarray(layer)
    if not (arr[:, :, 3] == 255).any():
        raise ValueError(f"{name}: has no fully opaque pixel, there is no product in it")
    return arr[:, :, :3], arr[:, :, 3]


def integrity(candidate: Image.Image, layer: Image.Image) -> dict[str, Any]:
    """How many of the layer's fully opaque pixels survive bit-exact in ``candidate``, with digests."""
    return integrity_record.pixel_integrity(candidate, layer)


def exact_counts(candidate: Image.Image, layer: Image.Image) -> tuple[int, int]:
    """(opaque product pixels, those bit-exact in ``candidate``): integrity without the digests, for checks
    that only need the share (QC runs it per candidate; hashing a megapixel region twice costs ~6 ms)."""
    region, product = integrity_record.opaque_regions(candidate, layer)
    return len(product), int(np.all(region == product, axis=1).sum())
