"""Mask quality against the source photo: leaks, clipping, holes that should be holes, and halos.

A product mask is judged by what the photo says along and inside it, not by its own shape:

* **boundary support** - at every point of the mask's outline, the mean colour (CIELAB) of a thin band
  just inside is compared with that of a band just outside. A true outline separates product from
  backdrop, so the two differ; where they agree the outline runs through one material.
* **leak** - an unsupported outline whose colour is the backdrop's (the photo's border palette, i.e.
  what surrounds the product: backdrop, table, wall) means backdrop inside the mask; so does mask area
  that the backdrop model (matting.border_background, when given) marks as border-connected backdrop.
* **clipping** - an unsupported outline whose colour is not the backdrop's: the mask cuts across the
  product (a handle, a cap) and leaves part of it outside.
* **filled holes** - a region inside the mask, enclosed by it, whose colour is the backdrop's: the hole
  of a mug's handle kept as product.
* **halo** (per candidate) - pixels on the placed product's edge that carry the source backdrop's colour
  and stand out against the new surroundings: a fringe.

Thresholds were set on the ``tune`` split of workers.evaluation.seg_set (clean masks pass, leaked,
clipped and hole-filled ones fail) and are reported on ``heldout`` (tests/workers/test_mask_quality.py).
Pure functions of pixels: no model, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

BAND = 4  # px: width of the inside / outside bands compared along the outline
WINDOW = 9  # px: side of the window the band means are taken over, around each outline point
UNSUPPORTED_DE = 9.0  # CIELAB distance under which inside and outside of the outline are "the same"
ENCLOSED = BAND + 3  # px of product a filled hole keeps between itself and the mask's outline
PALETTE_SIZE = 12  # k-means colours of the photo's border: the backdrop palette
BORDER_SHARE = 0.04  # width of the border strip the palette is learned from (share of the short side)
# verdict thresholds (tuned on seg_set "tune"; see the module docstring)
MAX_LEAK_SHARE = 0.2  # of the outline: unsupported and backdrop-coloured
MAX_CLIP_SHARE = 0.02  # of the outline: unsupported and product-coloured
# of the mask: border-connected backdrop per the backdrop model. Recorded, not gated: on busy photos and
# for white parts on a white sweep the flood fill itself is wrong (tune split: up to 54 % on true masks).
BACKDROP_SHARE_GATED = False
MAX_BACKDROP_SHARE = 0.03
# of the mask's interior: backdrop-coloured pixels. Tune split: true masks <= 13 % (white on white aside),
# leaked bands >= 16 %, GrabCut masks that follow a brick wall's mortar or gravel 21-90 %.
MAX_BACKDROP_COLOUR_SHARE = 0.2
# ... gated on textured backdrops only (border colours spread at least this far, Lab): on a plain sweep a
# white product part has the sweep's colour, and the outline measures already see leaks there.
TEXTURED_SPREAD = 10.0
MAX_FILLED_HOLE_SHARE = 0.02  # of the mask: enclosed, backdrop-coloured region
# of the placed product's edge ring: backdrop-coloured fringe (QC set tune: clean <= 0.36, leaked >= 0.48 but one)
MAX_HALO_SHARE = 0.42


@dataclass(frozen=True)
class MaskQuality:
    """Source-photo checks of one mask: the numbers, and the reasons it fails (empty = plausible)."""

    leak_share: float
    clip_share: float
    backdrop_share: float
    filled_hole_share: float
    outline_support: float  # share of the outline where inside and outside differ
    failures: list[str] = field(default_factory=list)  # gating: the mask is not used
    advisory: list[str] = field(default_factory=list)  # measured too often on clean masks to gate (see below)
    backdrop_colour_share: float = 0.0  # of the mask's interior: pixels of the backdrop palette's colours
    backdrop_spread: float = 0.0  # how far the border's colours spread (Lab, 90th percentile): texture
    palette: list[list[float]] = field(default_factory=list)  # the photo's backdrop palette (Lab), for the halo
    tolerance: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failures

    @property
    def clean(self) -> bool:
        return not self.failures and not self.advisory

    @property
    def reasons(self) -> list[str]:
        return [*self.failures, *(f"{r} (advisory)" for r in self.advisory)]

    def numbers(self) -> dict[str, Any]:
        return {
            "leak_share": round(self.leak_share, 4),
            "clip_share": round(self.clip_share, 4),
            "backdrop_share": round(self.backdrop_share, 4),
            "filled_hole_share": round(self.filled_hole_share, 4),
            "outline_support": round(self.outline_support, 4),
            "backdrop_colour_share": round(self.backdrop_colour_share, 4),
            "backdrop_spread": round(self.backdrop_spread, 2),
        }


def check(rgb: np.ndarray, mask: np.ndarray, background: np.ndarray | None = None) -> MaskQuality:
    """Judge ``mask`` (HxW, > 0 = product) against the opaque photo ``rgb`` (uint8 HxWx3).

    ``background``: optional bool HxW backdrop model (border-connected pixels of the backdrop colour).
    """
    fg = _validate(rgb, mask)
    lab = to_lab(rgb)
    palette, tolerance = backdrop_palette(lab, fg)
    inside, outside, points = _outline_means(lab, fg)
    if points.size == 0:
        return MaskQuality(0.0, 0.0, 0.0, 0.0, 0.0, ["the mask has no outline (empty)"])
    # On a plain sweep a white product's edge is a small but clean step; on texture only a big one counts.
    same = np.linalg.norm(inside - outside, axis=1) < min(UNSUPPORTED_DE, 0.6 * tolerance)
    backdrop_like = _palette_distance((inside + outside) / 2, palette) < tolerance
    leak = float((same & backdrop_like).mean())
    clip = float((same & ~backdrop_like).mean())
    backdrop = float((background & fg).sum() / fg.sum()) if background is not None else 0.0
    holes = filled_holes(lab, fg, palette, tolerance)
    result = MaskQuality(
        leak_share=leak,
        clip_share=clip,
        backdrop_share=backdrop,
        filled_hole_share=holes,
        outline_support=float(1.0 - same.mean()),
        backdrop_colour_share=backdrop_colour_share(lab, fg, palette, tolerance),
        backdrop_spread=border_spread(lab, fg),
        palette=palette.round(2).tolist(),
        tolerance=round(tolerance, 3),
    )
    for reason in _reasons(result):
        # On a plain sweep the outline measure cannot tell a white product part from the sweep itself (the QC
        # set's white label box and sole: 12 of 66 clean masks flagged), so there it only advises.
        plain_outline = reason.startswith("leaked_mask") and "outline" in reason
        advisory = plain_outline and result.backdrop_spread < TEXTURED_SPREAD
        (result.advisory if advisory else result.failures).append(reason)
    return result


def _reasons(q: MaskQuality) -> list[str]:
    reasons = []
    if q.leak_share > MAX_LEAK_SHARE:
        reasons.append(
            f"leaked_mask: {q.leak_share:.0%} of the mask's outline runs through backdrop-coloured pixels "
            f"(limit {MAX_LEAK_SHARE:.0%})"
        )
    if q.backdrop_spread >= TEXTURED_SPREAD and q.backdrop_colour_share > MAX_BACKDROP_COLOUR_SHARE:
        reasons.append(
            f"leaked_mask: {q.backdrop_colour_share:.0%} of the mask has the backdrop's colours "
            f"(limit {MAX_BACKDROP_COLOUR_SHARE:.0%})"
        )
    if BACKDROP_SHARE_GATED and q.backdrop_share > MAX_BACKDROP_SHARE:
        reasons.append(
            f"leaked_mask: {q.backdrop_share:.1%} of the mask is plain backdrop (limit {MAX_BACKDROP_SHARE:.0%})"
        )
    if q.clip_share > MAX_CLIP_SHARE:
        reasons.append(
            f"clipped_mask: {q.clip_share:.0%} of the mask's outline cuts across the product "
            f"(limit {MAX_CLIP_SHARE:.0%})"
        )
    if q.filled_hole_share > MAX_FILLED_HOLE_SHARE:
        reasons.append(
            f"filled_hole: {q.filled_hole_share:.1%} of the mask is an enclosed backdrop-coloured region "
            f"(limit {MAX_FILLED_HOLE_SHARE:.0%})"
        )
    return reasons


# --- the pieces ----------------------------------------------------------------------------------


def _validate(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"rgb: expected uint8 HxWx3, got {rgb.dtype} {rgb.shape}")
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask: shape {mask.shape} differs from the photo's {rgb.shape[:2]}")
    fg: np.ndarray = mask > 0
    return fg


def to_lab(rgb: np.ndarray, smooth: bool = True) -> np.ndarray:
    """Float CIELAB (L 0..100); ``smooth``: lightly blurred first, so sensor noise does not read as texture
    (off for the halo, whose fringes are only 1-3 px wide)."""
    src = cv2.GaussianBlur(rgb, (0, 0), 1.0) if smooth else rgb
    lab: np.ndarray = cv2.cvtColor(src.astype(np.float32) / 255.0, cv2.COLOR_RGB2LAB)
    return lab


def _border_strip(fg: np.ndarray) -> np.ndarray:
    h, w = fg.shape
    b = max(2, round(BORDER_SHARE * min(h, w)))
    strip = np.zeros((h, w), bool)
    strip[:b], strip[-b:], strip[:, :b], strip[:, -b:] = True, True, True, True
    return strip


def border_spread(lab: np.ndarray, fg: np.ndarray) -> float:
    """90th percentile Lab distance of the border's colours from their median: ~5 for a studio sweep,
    15+ for brick, gravel or a lawn."""
    samples = lab[_border_strip(fg) & ~fg]
    if samples.shape[0] == 0:
        return 0.0
    return float(np.percentile(np.linalg.norm(samples - np.median(samples, axis=0), axis=1), 90))


def backdrop_palette(lab: np.ndarray, fg: np.ndarray) -> tuple[np.ndarray, float]:
    """(PALETTE_SIZE x 3 Lab colours of the photo's border outside the mask, distance tolerance).

    The border strip is what surrounds the product in this photo (backdrop, wall, table, lawn); its
    k-means palette is the "backdrop model" for textured scenes. The tolerance follows the palette's own
    spread, so a busy texture is allowed more variation than a plain sweep.
    """
    strip = _border_strip(fg)
    samples = lab[strip & ~fg]
    if samples.shape[0] < PALETTE_SIZE:
        samples = lab[strip]
    samples = samples[:: max(1, samples.shape[0] // 4000)].astype(np.float32)
    k = min(PALETTE_SIZE, samples.shape[0])
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
    cv2.setRNGSeed(0)  # deterministic verdicts
    _, labels, centres = cv2.kmeans(samples, k, None, criteria, 2, cv2.KMEANS_PP_CENTERS)  # type: ignore[call-overload]
    spread = np.linalg.norm(samples - centres[labels.ravel()], axis=1)
    tolerance = float(np.clip(np.percentile(spread, 90) * 1.5, 6.0, 20.0))
    return centres.astype(np.float32), tolerance


def _palette_distance(colours: np.ndarray, palette: np.ndarray) -> np.ndarray:
    d: np.ndarray = np.linalg.norm(colours[:, None, :] - palette[None, :, :], axis=2).min(axis=1)
    return d


def _outline_means(lab: np.ndarray, fg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(inside means N x 3, outside means N x 3, outline points N x 2) along the mask's outline.

    Bands start 1 px off the outline: the anti-aliased edge pixel itself is a mix of both sides.
    """
    u8 = fg.astype(np.uint8)
    dist_in = cv2.distanceTransform(u8, cv2.DIST_L2, 3)
    dist_out = cv2.distanceTransform(1 - u8, cv2.DIST_L2, 3)
    band_in = ((dist_in > 1.5) & (dist_in <= 1.5 + BAND)).astype(np.float32)
    band_out = ((dist_out > 1.5) & (dist_out <= 1.5 + BAND)).astype(np.float32)
    outline = fg & (cv2.erode(u8, np.ones((3, 3), np.uint8)) == 0)
    # points on the frame edge have no outside: the product is cut by the photo, not by the mask
    outline[0], outline[-1], outline[:, 0], outline[:, -1] = False, False, False, False
    ys, xs = np.nonzero(outline)
    mean_in = _band_mean(lab, band_in)[ys, xs]
    mean_out = _band_mean(lab, band_out)[ys, xs]
    seen = np.isfinite(mean_in).all(axis=1) & np.isfinite(mean_out).all(axis=1)
    return mean_in[seen], mean_out[seen], np.stack([ys, xs], axis=1)[seen]


def _band_mean(lab: np.ndarray, band: np.ndarray) -> np.ndarray:
    size = (WINDOW, WINDOW)
    count = cv2.boxFilter(band, -1, size, normalize=False)
    total = cv2.boxFilter(lab * band[..., None], -1, size, normalize=False)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean: np.ndarray = total / np.where(count > 0, count, np.nan)[..., None]
    return mean


def backdrop_colour_share(lab: np.ndarray, fg: np.ndarray, palette: np.ndarray, tolerance: float) -> float:
    """Share of the mask's interior (BAND px in from its outline) whose colour is one of the backdrop's.

    Catches what the outline cannot: a mask that follows the backdrop's own texture edges (the mortar of a
    brick wall, pebbles) has a well supported outline but is largely backdrop inside.
    """
    core = cv2.distanceTransform(fg.astype(np.uint8), cv2.DIST_L2, 3) > BAND
    ys, xs = np.nonzero(core)
    if ys.size == 0:
        return 0.0
    return float((_palette_distance(lab[ys, xs], palette) < tolerance * 0.8).mean())


def filled_holes(lab: np.ndarray, fg: np.ndarray, palette: np.ndarray, tolerance: float) -> float:
    """Share of the mask in enclosed regions that look like the backdrop (a hole kept as product).

    Backdrop-like pixels inside the mask, at least BAND px from its outline, grouped; a group counts
    when it is sizeable (>= 0.3 % of the mask) and cut off from the outline: a hole the mask closed.
    """
    u8 = fg.astype(np.uint8)
    depth = cv2.distanceTransform(u8, cv2.DIST_L2, 3)
    core = depth > BAND
    like = np.zeros(fg.shape, bool)
    ys, xs = np.nonzero(core)
    if ys.size == 0:
        return 0.0
    like[ys, xs] = _palette_distance(lab[ys, xs], palette) < tolerance * 0.8
    like = cv2.morphologyEx(like.astype(np.uint8), cv2.MORPH_OPEN, np.ones((5, 5), np.uint8)) > 0
    n, labels, stats, _ = cv2.connectedComponentsWithStats(like.astype(np.uint8), connectivity=8)
    area = float(fg.sum())
    # enclosed: product all round it, at least ENCLOSED px thick (a label or a sole that reaches the
    # outline is a product part of the backdrop's colour, not a hole)
    shallow = np.unique(labels[(depth <= ENCLOSED) & (labels > 0)])
    held = sum(
        int(stats[i, cv2.CC_STAT_AREA])
        for i in range(1, n)
        if stats[i, cv2.CC_STAT_AREA] >= 0.003 * area and i not in shallow and _sharp_rim(lab, labels == i)
    )
    return held / area


def _sharp_rim(lab: np.ndarray, region: np.ndarray) -> bool:
    """The region's rim is a real edge: mean colour just inside and just outside it differ by more than
    UNSUPPORTED_DE x 2. A hole is cut out of the product (a hard edge); a glossy highlight of the
    backdrop's tone fades into the product around it."""
    u8 = region.astype(np.uint8)
    inner = (cv2.distanceTransform(u8, cv2.DIST_L2, 3) > 1.5) & (
        cv2.distanceTransform(u8, cv2.DIST_L2, 3) <= 1.5 + BAND
    )
    away = cv2.distanceTransform(1 - u8, cv2.DIST_L2, 3)
    outer = (away > 1.5) & (away <= 1.5 + BAND)
    if not inner.any() or not outer.any():
        return False
    return float(np.linalg.norm(lab[inner].mean(axis=0) - lab[outer].mean(axis=0))) > 2 * UNSUPPORTED_DE


# --- per candidate: the halo -----------------------------------------------------------------------


def halo_share(candidate: np.ndarray, alpha: np.ndarray, palette: np.ndarray, tolerance: float) -> float:
    """Share of the placed product's edge ring that carries the source backdrop's colour and stands out
    against the candidate's surroundings there: a fringe of the old backdrop around the product.

    ``candidate``: uint8 HxWx3 final image; ``alpha``: uint8 HxW placed product alpha in its frame;
    ``palette``/``tolerance``: the source photo's backdrop palette (:func:`backdrop_palette`), as Lab.
    """
    _validate(candidate, alpha)
    fg = alpha >= 128  # the product proper; its feathered rim is mostly the new background already
    u8 = fg.astype(np.uint8)
    ring = fg & (cv2.distanceTransform(u8, cv2.DIST_L2, 3) <= 3.0)
    if not ring.any():
        return 0.0
    lab = to_lab(candidate, smooth=False)
    around = _band_mean(lab, ((cv2.distanceTransform(1 - u8, cv2.DIST_L2, 3) > 1.5) & ~fg).astype(np.float32))
    ys, xs = np.nonzero(ring)
    colours = lab[ys, xs]
    old = _palette_distance(colours, np.asarray(palette, np.float32)) < tolerance
    sticks_out = np.linalg.norm(colours - around[ys, xs], axis=1) > UNSUPPORTED_DE
    sticks_out &= np.isfinite(around[ys, xs]).all(axis=1)
    return float((old & sticks_out).mean())


def halo_verdicts(segment_quality: dict[str, Any], image: Any, layer: Any) -> list[dict[str, Any]]:
    """QC's ``mask_halo`` verdict for one candidate (PIL candidate and placed RGBA layer), from the backdrop
    palette the segment stage recorded; none for a cut-out upload, whose source has no backdrop to fringe."""
    from workers.checks.product import verdict

    palette = segment_quality.get("backdrop_palette")
    if not palette:
        return []
    share = halo_share(
        np.asarray(image.convert("RGB")),
        np.asarray(layer.getchannel("A")),
        np.asarray(palette, np.float32),
        float(segment_quality.get("backdrop_tolerance", 6.0)),
    )
    ok = share <= MAX_HALO_SHARE
    reason = f"{share:.0%} of the product's edge carries the source backdrop's colour (limit {MAX_HALO_SHARE:.0%})"
    return [verdict("mask_halo", "product", share, MAX_HALO_SHARE, ok, reason)]
