"""Embedded default segmenter: the product mask from an alpha channel, ISNet, or a studio shot.

The default segmenter is a chooser (:class:`Chooser`): it tries the methods in order and keeps the
first mask that is plausible (not empty, not the whole frame) and passes the mask-quality checks
against the photo (workers.checks.mask_quality: leak, clipping, filled holes):

* ``alpha``   - the upload already carries transparency (a designer's PNG cut-out). That alpha is
  the ground truth; we only binarise it for the mask and drop stray specks. No fallback after it.
* ``isnet``   - an opaque shot and ISNet's weights are present (`onbrand models pull`): the model's
  foreground probability >= 0.5 (the prediction itself comes from workers.models.isnet, injected
  as a plain function, so this module stays free of ML imports).
* ``isnet+grabcut`` - ISNet's mask failed a check: GrabCut re-estimates the product's colours from
  ISNet's confident core and takes back what ISNet was unsure of (a dark upper on a dark wall).
* ``grabcut`` - the backdrop colour is estimated from the border (a plane per channel, to follow the
  light falloff of a studio sweep), everything border-connected and close to the colour expected
  there is definite background, and cv2.grabCut refines the rest.
* ``grabcut-centre`` - a busy photo (brick, lawn, a table) has no backdrop colour to flood: GrabCut
  starts from the frame's border as background and the centre as probable product.

When no method yields a plausible mask we raise :class:`SegmentationError` with each method's reason
and what to upload instead, never a mask that only looks like one. The chooser records which method
made the mask and every attempt in ``SegmentResult.quality``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from PIL import Image

from workers.checks import mask_quality as source_checks

# An alpha channel "means something" once any pixel is visibly see-through; 250 leaves
# room for encoders that write 254/253 into nominally opaque exports.
ALPHA_MEANINGFUL_BELOW = 250
# GrabCut is O(pixels x iterations); it runs on a copy no larger than this and the
# full-resolution border flood fill restores crisp edges afterwards.
WORK_MAX_SIDE = 512
MIN_SIDE = 16
BACKDROP_FIT_ROUNDS = 3  # robust refits of the backdrop plane (see _fit_backdrop)
BORDER_SAMPLES = 20_000  # border pixels the backdrop plane is fitted to, at most
MAX_AREA_SHARE = 0.98
# Components smaller than this share of the largest are dust, shadows or reflections.
KEEP_COMPONENT_SHARE = 0.05
# What the user is told when no method finds the product.
UPLOAD_ADVICE = "upload a cut-out PNG with transparency or a shot on a plain backdrop"
CENTRE_INSET = 0.04  # grabcut-centre: the outer 4 % of the frame is taken as background
ISNET_CORE, ISNET_SURE_BACKGROUND = 0.95, 0.05  # isnet+grabcut: probabilities GrabCut may not overturn

Predictor = Callable[[np.ndarray], np.ndarray]  # RGB uint8 HxWx3 -> foreground probability float HxW 0..1


class SegmentationError(RuntimeError):
    """The image cannot be split into product and background with any confidence."""


@dataclass
class SegmentResult:
    mask: np.ndarray  # uint8 HxW, 0 or 255
    alpha: np.ndarray  # uint8 HxW soft alpha (original alpha, or the cleaned mask)
    method: str  # "alpha" | "isnet" | "isnet+grabcut" | "grabcut" | "grabcut-centre" (SAM: its own)
    quality: dict[str, Any] = field(default_factory=dict)  # numbers, plus the adapter's prompt box


def segment(
    image: Image.Image,
    *,
    iterations: int = 4,
    max_hole_share: float = 0.02,
    predictor: Predictor | None = None,
) -> SegmentResult:
    """Segment the product in ``image`` with the default chooser (see the module docstring).

    ``max_hole_share``: enclosed background regions up to this share of the product area
    are filled (speckle, glare misread as backdrop); larger ones are real openings such
    as a mug handle and stay transparent, so no backdrop pixels end up in the product.
    ``predictor``: ISNet's foreground probability (workers.models.isnet), None when absent.
    """
    return Chooser(predictor, iterations, max_hole_share).segment(image)


@dataclass(frozen=True)
class Chooser:
    """The default segmenter (the registry's ``matting`` adapter): alpha, ISNet, GrabCut, in that order."""

    predictor: Predictor | None = None
    iterations: int = 4
    max_hole_share: float = 0.02
    absent: str = ""  # why ISNet is not in the chain (recorded with every mask)

    def segment(self, image: Image.Image) -> SegmentResult:
        check_image(image)
        if not 1 <= self.iterations <= 10:
            raise ValueError(f"iterations: expected 1..10, got {self.iterations}")
        if not 0.0 <= self.max_hole_share <= 1.0:
            raise ValueError(f"max_hole_share: expected 0..1, got {self.max_hole_share}")
        alpha = meaningful_alpha(image)
        if alpha is not None:
            return _segment_alpha(alpha, self.max_hole_share)
        return self._opaque(np.asarray(image.convert("RGB")))

    def _opaque(self, rgb: np.ndarray) -> SegmentResult:
        background = border_background(rgb)
        attempts: list[dict[str, Any]] = []
        if self.absent:
            attempts.append({"method": "isnet", "ok": False, "reason": self.absent})
        fallback: tuple[str, np.ndarray, dict[str, Any], source_checks.MaskQuality] | None = None
        for method, make in self._methods(rgb, background):
            try:
                mask, removed, filled = make()
                check_plausible(mask, method)
            except SegmentationError as exc:
                attempts.append({"method": method, "ok": False, "reason": str(exc)})
                continue
            verdict = source_checks.check(rgb, mask, background if method.startswith("grabcut") else None)
            reason = "; ".join(verdict.reasons)
            attempts.append({"method": method, "ok": verdict.clean, "reason": reason, **verdict.numbers()})
            if verdict.clean:
                return _checked(method, mask, removed, filled, verdict, attempts)
            if verdict.ok and fallback is None:  # only advisory doubts: kept in case no method is clean
                fallback = (method, mask, {"removed": removed, "filled": filled}, verdict)
        if fallback is not None:
            method, mask, counts, verdict = fallback
            return _checked(method, mask, counts["removed"], counts["filled"], verdict, attempts)
        reasons = "; ".join(f"{a['method']}: {a['reason']}" for a in attempts if a["reason"])
        raise SegmentationError(f"no method found the product ({reasons}); {UPLOAD_ADVICE}")

    def _methods(
        self, rgb: np.ndarray, background: np.ndarray
    ) -> list[tuple[str, Callable[[], tuple[np.ndarray, int, int]]]]:
        hole, its = self.max_hole_share, self.iterations
        methods: list[tuple[str, Callable[[], tuple[np.ndarray, int, int]]]] = []
        if self.predictor is not None:
            predict = _once(lambda: self.predictor(rgb))  # type: ignore[misc]  # checked not None above
            methods.append(("isnet", lambda: clean_mask(_binary(predict() >= 0.5), hole)))
            methods.append(("isnet+grabcut", lambda: clean_mask(_refine(rgb, predict(), its), hole)))
        methods.append(("grabcut", lambda: _grabcut_border(rgb, background, its, hole)))
        methods.append(("grabcut-centre", lambda: clean_mask(_grabcut_centre(rgb, background, its), hole)))
        return methods


def _checked(
    method: str, mask: np.ndarray, removed: int, filled: int, verdict: source_checks.MaskQuality, attempts: list[Any]
) -> SegmentResult:
    quality = {
        **mask_quality(mask, removed, filled),
        **verdict.numbers(),
        "mask_advisory": verdict.advisory,  # doubts the checks raised but may not gate on (measured)
        "backdrop_palette": verdict.palette,  # QC's halo check compares the placed edge with it
        "backdrop_tolerance": verdict.tolerance,
        "attempts": attempts,
    }
    return SegmentResult(mask, mask.copy(), method, quality)


def _once(compute: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
    """``compute`` run at most once (ISNet's ~5 s prediction feeds two methods)."""
    cache: list[np.ndarray] = []

    def get() -> np.ndarray:
        if not cache:
            cache.append(compute())
        return cache[0]

    return get


def _binary(fg: np.ndarray) -> np.ndarray:
    out: np.ndarray = fg.astype(np.uint8) * 255
    return out


def cutout(image: Image.Image, result: SegmentResult) -> Image.Image:
    """RGBA crop of the product: RGB untouched, alpha = ``result.alpha``.

    The crop is the mask's bounding box widened to any soft alpha fringe, so the
    anti-aliased edge of a designer's cut-out is not sliced off.
    """
    check_image(image)
    if result.alpha.shape != (image.height, image.width):
        raise ValueError(f"result: alpha is {result.alpha.shape}, image is {(image.height, image.width)}")
    x0, y0, x1, y1 = _bbox((result.alpha > 0) | (result.mask > 0))
    rgba = np.dstack([np.asarray(image.convert("RGB")), result.alpha])
    return Image.fromarray(np.ascontiguousarray(rgba[y0:y1, x0:x1]), "RGBA")


# --- input checks -------------------------------------------------------------------


def check_image(image: Image.Image) -> None:
    """ValueError unless ``image`` is a PIL image of at least MIN_SIDE px a side (every segmenter's input)."""
    if not isinstance(image, Image.Image):
        raise ValueError(f"image: expected a PIL image, got {type(image).__name__}")
    if min(image.size) < MIN_SIDE:
        raise ValueError(f"image: {image.size} is smaller than {MIN_SIDE}px on a side")


def meaningful_alpha(image: Image.Image) -> np.ndarray | None:
    """The alpha channel (uint8 HxW) when some pixel is visibly see-through, else None (opaque shot)."""
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if not has_alpha:
        return None
    alpha = np.asarray(image.convert("RGBA"))[:, :, 3]
    return alpha if (alpha < ALPHA_MEANINGFUL_BELOW).any() else None


# --- alpha path ----------------------------------------------------------------------


def _segment_alpha(alpha: np.ndarray, max_hole_share: float) -> SegmentResult:
    raw = np.where(alpha >= 128, 255, 0).astype(np.uint8)
    mask, removed, filled = clean_mask(raw, max_hole_share)
    check_plausible(mask, "alpha")
    soft = np.where(_touching(alpha > 0, mask > 0), alpha, 0).astype(np.uint8)
    soft[(mask > 0) & (raw == 0)] = 255  # filled holes are product
    return SegmentResult(mask, soft, "alpha", mask_quality(mask, removed, filled))


def _touching(visible: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Visible regions (8-connected) that overlap ``keep``.

    Keeps the designer's soft edge however wide it fades, while specks the mask dropped
    cannot sneak back in through their own faint fringe.
    """
    _, labels = cv2.connectedComponents(visible.astype(np.uint8), connectivity=8)
    kept = np.unique(labels[keep])
    return np.isin(labels, kept[kept > 0])


# --- grabcut path --------------------------------------------------------------------


def _grabcut_border(
    rgb: np.ndarray, background: np.ndarray, iterations: int, max_hole_share: float
) -> tuple[np.ndarray, int, int]:
    if background.all():
        raise SegmentationError("no product found: every pixel matches the border colour")
    if not background.any():
        raise SegmentationError("no backdrop found along the border (full-bleed photo?)")
    init = np.where(background, cv2.GC_BGD, cv2.GC_PR_FGD).astype(np.uint8)
    rough = _grabcut_mask(rgb, init, iterations)
    # Upscaled GrabCut edges are blocky; the full-resolution flood fill is exact where
    # the product contrasts with the backdrop, so it has the last word there.
    rough[background] = 0
    return clean_mask(rough, max_hole_share)


def _grabcut_centre(rgb: np.ndarray, background: np.ndarray, iterations: int) -> np.ndarray:
    """GrabCut with a centre prior: the frame's outer strip is background, the flood-filled backdrop
    probably background, the rest probably product. For busy photos, where the border colour floods
    into the product or nowhere at all."""
    h, w = background.shape
    init = np.where(background, cv2.GC_PR_BGD, cv2.GC_PR_FGD).astype(np.uint8)
    b = max(2, round(CENTRE_INSET * min(h, w)))
    init[:b], init[-b:], init[:, :b], init[:, -b:] = cv2.GC_BGD, cv2.GC_BGD, cv2.GC_BGD, cv2.GC_BGD
    return _grabcut_mask(rgb, init, iterations)


def _refine(rgb: np.ndarray, prob: np.ndarray, iterations: int) -> np.ndarray:
    """GrabCut seeded by ISNet: its confident core is product, confident far background is background,
    the rest is decided by the colour models."""
    init = np.where(prob >= 0.5, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    init[prob >= ISNET_CORE] = cv2.GC_FGD
    far = cv2.distanceTransform((prob < 0.5).astype(np.uint8), cv2.DIST_L2, 3) > 0.04 * min(prob.shape)
    init[far & (prob < ISNET_SURE_BACKGROUND)] = cv2.GC_BGD
    return _grabcut_mask(rgb, init, iterations)


def border_background(rgb: np.ndarray) -> np.ndarray:
    """Bool HxW: pixels near the backdrop colour expected at their place and connected to the border.

    The expected colour is a plane per channel fitted to the border, not one border colour: a
    studio sweep's light falloff is a gradient, and against one global colour a product part
    close to the backdrop's tone (a dark sole on charcoal) matches one end of the sweep although
    it stands out where it is.
    """
    ys, xs = _border_coords(rgb.shape[:2])
    border = rgb[ys, xs].astype(np.float32)
    design = _design(ys, xs, rgb.shape[:2])
    plane = _fit_backdrop(design, border)
    residual = np.linalg.norm(border - design @ plane, axis=1)
    dist = np.linalg.norm(rgb.astype(np.float32) - _backdrop_image(plane, rgb.shape[:2]), axis=2)
    near = (dist <= _tolerance(residual)).astype(np.uint8)
    _, labels = cv2.connectedComponents(near, connectivity=4)
    edge_labels = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    return np.isin(labels, edge_labels[edge_labels > 0])


def _border_coords(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of a border strip 1 % of the short side wide (at least 1 px).

    Evenly thinned to at most BORDER_SAMPLES pixels: a plane and a percentile need no more,
    and the fit's cost then does not grow with the photo.
    """
    b = max(1, round(0.01 * min(shape)))
    strip = np.zeros(shape, bool)
    strip[:b], strip[-b:], strip[:, :b], strip[:, -b:] = True, True, True, True
    ys, xs = np.nonzero(strip)
    step = max(1, ys.size // BORDER_SAMPLES)
    return ys[::step], xs[::step]


def _design(ys: np.ndarray, xs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """N x 3 rows [1, x, y], x and y scaled to 0..1: the backdrop plane's inputs."""
    h, w = shape
    return np.stack([np.ones(ys.size), xs / max(1, w - 1), ys / max(1, h - 1)], axis=1).astype(np.float32)


def _fit_backdrop(design: np.ndarray, border: np.ndarray) -> np.ndarray:
    """3 x 3 plane coefficients (rows: 1, x, y; columns: RGB) of the backdrop along the border.

    Refitted to the pixels the previous fit explains (within tolerance), so a product that
    touches the border does not tilt the plane; three rounds settle in practice.
    """
    keep = np.ones(border.shape[0], bool)
    for _ in range(BACKDROP_FIT_ROUNDS):
        plane, *_ = np.linalg.lstsq(design[keep], border[keep], rcond=None)
        dist = np.linalg.norm(border - design @ plane, axis=1)
        keep = dist <= _tolerance(dist)
    fitted: np.ndarray = plane.astype(np.float32)  # lstsq's result is untyped in numpy's stubs
    return fitted


def _backdrop_image(plane: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """HxWx3 float32: the backdrop colour the plane expects at every pixel."""
    h, w = shape
    x = (np.arange(w, dtype=np.float32) / max(1, w - 1))[None, :, None]
    y = (np.arange(h, dtype=np.float32) / max(1, h - 1))[:, None, None]
    expected: np.ndarray = plane[0] + x * plane[1] + y * plane[2]
    return expected


def _tolerance(border_dist: np.ndarray) -> float:
    # Scale with the backdrop's own spread (sensor noise, what the plane does not model) but
    # stay bounded: too tight leaves noise as "product", too loose eats pale products.
    return float(np.clip(np.percentile(border_dist, 75) * 2.5 + 10.0, 12.0, 60.0))


def _grabcut_mask(rgb: np.ndarray, init_full: np.ndarray, iterations: int) -> np.ndarray:
    """cv2.grabCut from a full-size GC_* label map, run at WORK_MAX_SIDE; 0/255 mask at full size."""
    h, w = init_full.shape
    f = min(1.0, WORK_MAX_SIDE / max(h, w))
    size = (max(1, round(w * f)), max(1, round(h * f)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA) if f < 1 else rgb
    init = cv2.resize(init_full, size, interpolation=cv2.INTER_NEAREST) if f < 1 else init_full.copy()
    product = np.isin(init, (cv2.GC_FGD, cv2.GC_PR_FGD)).sum()
    if product < 64 or init.size - product < 64:
        raise SegmentationError("product or backdrop too small to model (< 64 px at work size)")
    models = (np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64))
    # rect=None: OpenCV ignores the rectangle with GC_INIT_WITH_MASK, but its stubs require a Sequence[int]
    cv2.grabCut(np.ascontiguousarray(small), init, None, *models, iterations, cv2.GC_INIT_WITH_MASK)  # type: ignore[call-overload]
    fg = np.isin(init, (cv2.GC_FGD, cv2.GC_PR_FGD)).astype(np.uint8) * 255
    return (cv2.resize(fg, (w, h), interpolation=cv2.INTER_LINEAR) >= 128).astype(np.uint8) * 255


# --- cleaning and quality ------------------------------------------------------------


def clean_mask(mask: np.ndarray, max_hole_share: float = 0.02) -> tuple[np.ndarray, int, int]:
    """Keep components >= 5 % of the largest, fill small holes.

    Returns (mask 0/255, components_removed, holes_filled).
    """
    if mask.ndim != 2:
        raise ValueError(f"mask: expected HxW, got shape {mask.shape}")
    kept, removed = _keep_large_components(mask > 0)
    filled_mask, filled = _fill_holes(kept, max_hole_share)
    return filled_mask.astype(np.uint8) * 255, removed, filled


def _keep_large_components(fg: np.ndarray) -> tuple[np.ndarray, int]:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(fg.astype(np.uint8), connectivity=8)
    if n <= 1:
        return fg, 0
    areas = stats[1:, cv2.CC_STAT_AREA]
    keep = np.flatnonzero(areas >= KEEP_COMPONENT_SHARE * areas.max()) + 1
    return np.isin(labels, keep), int(n - 1 - keep.size)


def _fill_holes(fg: np.ndarray, max_hole_share: float) -> tuple[np.ndarray, int]:
    n, labels, stats, _ = cv2.connectedComponentsWithStats((~fg).astype(np.uint8), connectivity=4)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    limit = max_hole_share * fg.sum()
    holes = [i for i in range(1, n) if i not in edge and stats[i, cv2.CC_STAT_AREA] <= limit]
    return fg | np.isin(labels, holes), len(holes)


def check_plausible(mask: np.ndarray, method: str) -> None:
    """SegmentationError for an empty or near full-frame mask: no product, whatever the method."""
    share = float((mask > 0).mean())
    if share == 0.0:
        raise SegmentationError(f"{method}: the mask is empty after cleaning")
    if share > MAX_AREA_SHARE:
        raise SegmentationError(
            f"{method}: the mask covers {share:.1%} of the image; product and backdrop are not separable"
        )


def mask_quality(mask: np.ndarray, removed: int, filled: int) -> dict[str, float | int]:
    """The numbers every segmenter reports in SegmentResult.quality (SAM adds its own)."""
    return {
        "area_share": round(float((mask > 0).mean()), 6),
        "edge_smoothness": round(edge_smoothness(mask), 4),
        "components_removed": removed,
        "holes_filled": filled,
    }


def edge_smoothness(mask: np.ndarray) -> float:
    """0-1: contour length of a lightly smoothed mask over that of the mask itself.

    A clean edge loses almost no length when smoothed (~1); ragged, fringy edges and
    hair-like noise lose a lot (-> 0). Unlike perimeter^2/area it does not punish
    legitimately elongated or concave product shapes.
    """
    raw = _contour_length(mask)
    if raw == 0.0:
        return 0.0
    smooth = (cv2.GaussianBlur(mask, (0, 0), 2.0) >= 128).astype(np.uint8) * 255
    return float(min(1.0, _contour_length(smooth) / raw))


def _contour_length(mask: np.ndarray) -> float:
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    return float(sum(cv2.arcLength(c, True) for c in contours))


def _bbox(fg: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(fg)
    if ys.size == 0:
        raise ValueError("result: the mask is empty, nothing to cut out")
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
