"""Brand rules for one candidate: palette, product size, safe zones, exposure, contrast.

Pure numpy / OpenCV and fast (10-20 ms at 1024x1024 on one core, measured), so they can run
on every candidate before the costly checks. Each rule returns one verdict dict of the shape used
across QC; a rule that cannot apply says so (``status`` "unchecked", ``passed`` None) and
why, instead of passing by default.

Palette adherence compares the *background* with the brand's tints and shades, not with
the literal hex values. Brand palettes define hues; a studio wall is a light tint of the
primary colour, a floor a shade of the secondary, and lighting (gradient, vignette,
shadows) changes lightness everywhere. So each palette colour stands for its whole tonal
family: every mix of it with white and black (tints, shades and tones: the triangle
black - colour - white in sRGB, the space the backdrop is painted in). A background pixel
is on-palette when its dE00 to the nearest member of the nearest family is within
``palette_radius``. Neutrals (white, greys, black) belong to every family, so a brand can
never fail for a white or grey wall; the rule catches foreign hues (a red wall for a blue
brand). Comparing with the palette colour at the pixel's own lightness was tried and
rejected: a tint also loses chroma, and our own on-brand backdrop then scored 11-17 dE00
from its palette (0 % of the wall within 10), so no radius separated on- from off-brand.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
from PIL import Image

from workers.imaging.colour import ciede2000, palette_rgb, rgb01_to_lab
from workers.imaging.composition import SafeZone

__all__ = ["LIMIT_KEYS", "check"]

# The limits' defaults and their reasons live in shared/qc.py (QcThresholds), with the brand's overrides.
# Palette measurements behind them: a 1024 px studio backdrop is 100 % within 5 dE00 of its own palette
# and 1-6 % of foreign ones; photos from a media library are 5-97 % within 5 of the demo palette, so a
# required share is the brand's call (min_palette_share), not a default.
LIMIT_KEYS = (
    "palette_radius",
    "min_palette_share",
    "area_min",
    "area_max",
    "exposure_min",
    "exposure_max",
    "max_clipped",
    "min_contrast",
)
OPTIONAL = {"min_palette_share"}  # None = measured and reported, not enforced

PALETTE_SIDE = 256  # palette statistics on the background downsampled to this longest side: it is a share
EDGE_CLEARANCE = 0.01  # background this close to the product (share of the longest side) is not counted:
# the cut edge is harmonised and shadows gather there, neither is the backdrop's colour
QUANT_BITS = 6  # palette distances on a 64-level grid (see _palette_distance) ...
MAX_CELLS = 6000  # ... unless more cells than this are occupied
DOMINANT_SHARE = 0.02  # an off-palette colour bin holding this share of the background is "dominant"
SOLID = 128  # alpha at and above which a pixel is product (the cut line)
REC709 = np.array([0.2126, 0.7152, 0.0722], np.float32)
CLIP_LO, CLIP_HI = 2, 253  # of 255: luminance this dark / bright carries no detail


def check(
    candidate: Image.Image,
    layer: Image.Image,
    palette: list[str],
    safe_zones: list[dict[str, Any]],
    limits: Mapping[str, float | None],
) -> list[dict[str, Any]]:
    """Verdicts palette_adherence, product_area, safe_zones_clear, exposure, contrast (in this order)."""
    rgb, alpha = _images(candidate, layer)
    pal = palette_rgb(palette)
    zones = _zones(safe_zones)
    lim = _limits(limits)
    product = alpha >= SOLID
    lum = _luminance(rgb)
    return [
        palette_adherence(rgb, alpha, pal, lim["palette_radius"], lim["min_palette_share"]),
        product_area(product, lim["area_min"], lim["area_max"]),
        safe_zones_clear(product, zones),
        exposure(lum, lim["exposure_min"], lim["exposure_max"], lim["max_clipped"]),
        contrast(lum, lim["min_contrast"]),
    ]


# --- inputs ----------------------------------------------------------------------------------------


def _images(candidate: Image.Image, layer: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(layer, Image.Image) or layer.mode != "RGBA":
        raise ValueError("layer: expected an RGBA PIL image (alpha = product mask)")
    if not isinstance(candidate, Image.Image):
        raise ValueError(f"candidate: expected a PIL image, got {type(candidate).__name__}")
    if candidate.size != layer.size:
        raise ValueError(f"candidate: expected size {layer.size} (the layer's), got {candidate.size}")
    rgb = candidate if candidate.mode == "RGB" else candidate.convert("RGB")
    return np.asarray(rgb), np.asarray(layer.getchannel("A"))


def _zones(safe_zones: list[dict[str, Any]]) -> list[SafeZone]:
    if not isinstance(safe_zones, list | tuple):
        raise ValueError(f"safe_zones: expected a list of dicts, got {type(safe_zones).__name__}")
    out = []
    for i, zone in enumerate(safe_zones):
        try:
            made = SafeZone(**{"label": "text", **zone})  # the gateway's default label
            if not all(math.isfinite(float(v)) for v in (made.x, made.y, made.width, made.height)):
                raise ValueError("not finite")
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"safe_zones[{i}]: expected {{label, x, y, width, height}} in canvas fractions, got {zone!r}"
            ) from exc
        out.append(made)
    return out


def _limits(limits: Mapping[str, float | None]) -> dict[str, Any]:
    if not isinstance(limits, Mapping):
        raise ValueError(f"limits: expected a mapping, got {type(limits).__name__}")
    out: dict[str, Any] = {}
    for key in LIMIT_KEYS:
        if key not in limits:
            raise ValueError(f"limits: missing key {key!r} (shared.qc.QcThresholds has them all)")
        value = limits[key]
        if value is None and key in OPTIONAL:
            out[key] = None
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
            raise ValueError(f"limits[{key!r}]: expected a finite number >= 0, got {value!r}")
        out[key] = float(value)
    for lo, hi in (("area_min", "area_max"), ("exposure_min", "exposure_max")):
        if out[lo] > out[hi]:
            raise ValueError(f"limits[{lo!r}]: {out[lo]} is above limits[{hi!r}] {out[hi]}")
    return out


def _verdict(
    name: str, value: float | None, threshold: float | list[float] | None, passed: bool | None, reason: str
) -> dict[str, Any]:
    status = "unchecked" if passed is None else ("pass" if passed else "fail")
    return {
        "check": name,
        "value": None if value is None else round(float(value), 6),
        "threshold": threshold,
        "passed": passed,
        "status": status,
        "reason": reason,
    }


# --- palette ---------------------------------------------------------------------------------------


def palette_adherence(
    rgb: np.ndarray, alpha: np.ndarray, pal: np.ndarray, radius: float, min_share: float | None
) -> dict[str, Any]:
    """Share of the background within ``radius`` dE00 of a palette colour's tints and shades.

    min_share None: the share is measured and reported, status "unchecked" (the brand requires none)."""
    name = "palette_adherence"
    if len(pal) == 0:
        return _verdict(name, None, min_share, None, "the brand has no palette")
    pixels = _background_pixels(rgb, alpha)
    if len(pixels) == 0:
        return _verdict(name, None, min_share, None, "no background left to check: the product fills the canvas")
    dist = _palette_distance(pixels, pal)
    on = dist <= radius
    share = float(on.mean())
    required = (
        "not enforced: the brand sets no min_palette_share and no written 'only brand colours' guideline"
        if min_share is None
        else (f"at least {min_share:.0%} required")
    )
    reason = (
        f"{share:.1%} of the background is within {radius:g} dE00 of a palette colour's tints and shades ({required})"
        f"; dominant background colours {dominant_colours(pixels, dist)}"
    )
    if not on.all():
        hex_code, d = _farthest_dominant(pixels[~on], dist[~on], len(pixels))
        reason += f"; farthest-off dominant colour {hex_code} ({d:.1f} dE00 away)"
    return _verdict(name, share, min_share, None if min_share is None else share >= min_share, reason)


def _background_pixels(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(N, 3) uint8 background colours, downsampled, kept EDGE_CLEARANCE away from the product."""
    h, w = alpha.shape
    f = min(1.0, PALETTE_SIDE / max(h, w))
    size = (max(1, round(w * f)), max(1, round(h * f)))
    # Area averaging: a small pixel is background only when every canvas pixel under it is (alpha == 0).
    free = cv2.resize((alpha == 0).astype(np.uint8) * 255, size, interpolation=cv2.INTER_AREA) == 255
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA) if f < 1 else rgb
    r = max(1, math.ceil(EDGE_CLEARANCE * max(size)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    # Border 1: the canvas edge is not the product, keep background right up to it.
    free = cv2.erode(free.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=1) > 0
    return small[free]


def _palette_distance(pixels: np.ndarray, pal: np.ndarray) -> np.ndarray:
    """Per pixel: dE00 to the nearest tint / shade / tone of the nearest palette colour.

    Computed once per occupied cell of a 64-level-per-channel grid, at the mean colour of the
    pixels in it: they lie within 2 levels of it (under 1 dE00), and a backdrop or photo then
    costs a few thousand evaluations instead of one per pixel. A background busier than
    MAX_CELLS cells (heavy noise) falls back to 32 levels (within 4, about 2 dE00) to bound the cost.
    """
    inverse, counts = _cells(pixels, QUANT_BITS)
    if len(counts) > MAX_CELLS:
        inverse, counts = _cells(pixels, QUANT_BITS - 1)
    unit = (_cell_means(pixels, inverse, counts) / 255.0).astype(np.float32)
    lab = rgb01_to_lab(unit)
    best = np.full(len(unit), np.inf)
    for colour in pal.astype(np.float32) / 255.0:
        best = np.minimum(best, ciede2000(lab, rgb01_to_lab(nearest_tone(unit, colour))))
    per_pixel: np.ndarray = best[inverse]
    return per_pixel


def _cells(pixels: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Each pixel's cell of a 2**bits-level-per-channel grid, numbered over the occupied cells only; their counts.

    A bincount over the whole grid: linear time, several times faster than np.unique's sort.
    """
    q = (pixels >> (8 - bits)).astype(np.int32)
    codes = (q[:, 0] << (2 * bits)) | (q[:, 1] << bits) | q[:, 2]
    counts = np.bincount(codes, minlength=1 << (3 * bits))
    occupied = np.flatnonzero(counts)
    lut = np.zeros(len(counts), np.int32)
    lut[occupied] = np.arange(len(occupied), dtype=np.int32)
    return lut[codes], counts[occupied]


def _cell_means(pixels: np.ndarray, inverse: np.ndarray, counts: np.ndarray) -> np.ndarray:
    sums = [np.bincount(inverse, weights=pixels[:, c], minlength=len(counts)) for c in range(3)]
    means: np.ndarray = np.stack(sums, axis=1) / counts[:, None]
    return means


def nearest_tone(points: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Nearest points (sRGB, 0-1, Euclidean) of the triangle black - ``colour`` - white: its tints and shades.

    The nearest point is found in sRGB because that is where the backdrop mixes colour with
    white and scales it by light (a closed form, cheap); the caller measures the distance
    to it in dE00, which is what the radius means.
    """
    white = np.ones(3, np.float32)
    basis = np.stack([colour, white], axis=1)  # 3x2: p ~ a * colour + b * white, a, b >= 0, a + b <= 1
    gram = basis.T @ basis
    best = _nearest_on_edges(points, colour, white)
    if abs(float(np.linalg.det(gram))) < 1e-6:  # a grey palette colour: the triangle is a line
        return best
    coef = points @ basis @ np.linalg.inv(gram)
    inside = (coef >= 0).all(axis=1) & (coef.sum(axis=1) <= 1)
    return np.where(inside[:, None], coef @ basis.T, best)


def _nearest_on_edges(points: np.ndarray, colour: np.ndarray, white: np.ndarray) -> np.ndarray:
    black = np.zeros(3, np.float32)
    cands = []
    for a, b in ((black, colour), (black, white), (colour, white)):
        d = b - a
        t = np.clip((points - a) @ d / max(float(d @ d), 1e-12), 0.0, 1.0)
        cands.append(a + t[:, None] * d)
    stack = np.stack(cands)  # 3, N, 3
    pick = np.argmin(((stack - points) ** 2).sum(axis=2), axis=0)
    nearest: np.ndarray = stack[pick, np.arange(len(points))]
    return nearest


def dominant_colours(pixels: np.ndarray, dist: np.ndarray, top: int = 3) -> str:
    """The background's most common colours (binned 16 levels a channel), each with its share and its dE00
    to the nearest palette tint/shade: what the background mostly is, and how near the brand it is."""
    inverse, counts = _cells(pixels, 4)
    mean_d = np.bincount(inverse, weights=dist, minlength=len(counts)) / counts
    means = np.round(_cell_means(pixels, inverse, counts)).astype(int)
    order = np.argsort(counts)[::-1][:top]
    return ", ".join(
        "#{:02X}{:02X}{:02X}".format(*means[k]) + f" {counts[k] / len(pixels):.0%} ({mean_d[k]:.1f} dE00)"
        for k in order
    )


def _farthest_dominant(pixels: np.ndarray, dist: np.ndarray, total: int) -> tuple[str, float]:
    """Of the off-palette colours (binned 16 levels a channel) common enough to matter, the farthest off."""
    inverse, counts = _cells(pixels, 4)
    mean_d = np.bincount(inverse, weights=dist, minlength=len(counts)) / counts
    dominant = counts >= DOMINANT_SHARE * total
    k = int(np.argmax(np.where(dominant, mean_d, -1.0))) if dominant.any() else int(np.argmax(counts))
    colour = np.round(_cell_means(pixels, inverse, counts)[k]).astype(int)
    return "#{:02X}{:02X}{:02X}".format(*colour), float(mean_d[k])


# --- geometry --------------------------------------------------------------------------------------


def product_area(product: np.ndarray, lo: float, hi: float) -> dict[str, Any]:
    """Share of the canvas the product's convex hull covers (its pixels at alpha >= 128), within [lo, hi].

    The hull, not the opaque pixels: how much of the frame a product occupies is the space it spans. A thin
    desk lamp placed at half the canvas height has only 1.2-1.7 % opaque pixels (its arm and stem are a few
    pixels wide) and failed a 2 % floor however large it was drawn, while its hull is several times that.
    The hull rather than the bounding box: it does not grow when the product is rotated.
    """
    opaque = float(product.mean())
    hull = _hull_share(product)
    ok = lo <= hull <= hi
    reason = (
        f"the product's convex hull covers {hull:.1%} of the canvas ({lo:.0%}-{hi:.0%} allowed; "
        f"opaque pixels {opaque:.1%})"
    )
    return _verdict("product_area", hull, [lo, hi], ok, reason)


def _hull_share(product: np.ndarray) -> float:
    """Area of the convex hull of the product pixels over the canvas area (0 with no product pixel)."""
    points = cv2.findNonZero(product.astype(np.uint8))
    if points is None:
        return 0.0
    hull = cv2.convexHull(points)
    # contourArea measures between pixel centres; the pixels themselves are a unit square each, so a
    # hull never covers less than its own pixels (a one-pixel-wide line has area 0 otherwise).
    return max(float(cv2.contourArea(hull)), float(product.sum())) / product.size


def safe_zones_clear(product: np.ndarray, zones: list[SafeZone]) -> dict[str, Any]:
    """No product pixel inside any safe zone; value = share of the product that overlaps one."""
    name = "safe_zones_clear"
    if not zones:
        return _verdict(name, 0.0, 0.0, True, "no safe zones")
    n = int(product.sum())
    if n == 0:
        return _verdict(name, None, 0.0, None, "the layer has no product pixel (alpha >= 128) to place")
    h, w = product.shape
    covered = np.zeros_like(product)
    hits = []
    for zone in zones:
        rows, cols = _zone_slices(zone, w, h)
        inside = int(product[rows, cols].sum())
        covered[rows, cols] = True
        if inside:
            hits.append(f"'{zone.label}' ({inside / n:.1%} of the product)")
    share = float((product & covered).sum()) / n
    if not hits:
        return _verdict(name, 0.0, 0.0, True, f"the product is clear of all {len(zones)} safe zone(s)")
    return _verdict(name, share, 0.0, False, "the product covers safe zone(s) " + ", ".join(hits))


def _zone_slices(zone: SafeZone, w: int, h: int) -> tuple[slice, slice]:
    """Pixels a zone touches at all: composition.plan drops a layout whose box overlaps the zone's
    float rectangle (strict inequalities), so pixel [c, c + 1) counts when it overlaps [x0, x1)."""
    x0, y0, x1, y1 = zone.rect(w, h)
    cols = slice(max(0, math.floor(x0)), min(w, math.ceil(x1)))
    rows = slice(max(0, math.floor(y0)), min(h, math.ceil(y1)))
    return rows, cols


# --- tone ------------------------------------------------------------------------------------------


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec.709 luma of the encoded sRGB values, 0-1 (as workers/checks/aesthetic.py)."""
    return cv2.transform(rgb.astype(np.float32), REC709[None, :] / 255.0)


def exposure(lum: np.ndarray, lo: float, hi: float, max_clipped: float) -> dict[str, Any]:
    """Mean luminance within [lo, hi] and at most ``max_clipped`` of pixels crushed or blown.

    ``threshold`` is [lo, hi], the bounds of ``value``; the clipped share and its limit are in the reason.
    """
    mean = float(lum.mean())
    clipped = float(((lum <= CLIP_LO / 255) | (lum >= CLIP_HI / 255)).mean())
    ok = lo <= mean <= hi and clipped <= max_clipped
    reason = (
        f"mean luminance {mean:.3f} ({lo:g}-{hi:g} allowed), {clipped:.1%} of pixels clipped "
        f"(at most {max_clipped:.0%})"
    )
    return _verdict("exposure", mean, [lo, hi], ok, reason)


def contrast(lum: np.ndarray, lo: float) -> dict[str, Any]:
    """RMS contrast: standard deviation of luminance (0-1), at least ``lo``."""
    std = float(lum.std())
    return _verdict("contrast", std, lo, std >= lo, f"RMS contrast (luminance std) {std:.3f} (at least {lo:g})")
