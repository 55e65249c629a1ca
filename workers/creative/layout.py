"""Where each element goes: per-size templates and a search for free space outside the product.

A template (wide banner, tall skyscraper, square-ish) gives each element an anchor point, a largest
font size and a line count. The search tries font sizes from the largest down to the minimum and, at
each, every top-left position of the element's box (on a 2 px grid) inside its allowed region (its safe
zones, else the canvas inside the margin); a position is free when the box overlaps neither the product
(dilated by a gap) nor an element already placed (the logo with its clear space). Of the free positions
the one nearest the anchor wins, so a template degrades to "as close as the product allows".
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from workers.creative.schema import Box, Element, LayoutRules, Zone

Frac = tuple[float, float, float, float]  # x0, y0, x1, y1 in canvas fractions
TOP: Frac = (0, 0, 1, 0.42)
BOTTOM: Frac = (0, 0.58, 1, 1)
FOOT: Frac = (0, 0.8, 1, 1)
STRIDE = 2  # px between candidate positions
SHRINK = 0.92  # next font size to try, of the last


@dataclass(frozen=True)
class Slot:
    """A template's wish for one element: anchor (canvas fractions, of the box's own reference point),
    largest font size (px) and most lines."""

    anchor: tuple[float, float]
    max_px: int
    max_lines: int
    align: str  # "centre" | "start"
    bands: tuple[Frac, ...]  # where it may go, in order of preference (then anywhere), canvas fractions


@dataclass(frozen=True)
class Template:
    name: str  # "wide" | "tall" | "square"
    slots: dict[Element, Slot]
    logo_h: int  # target logo height, px


def template(w: int, h: int, rules: LayoutRules) -> Template:
    """The per-size template: 728x90-like banners, 160x600 / 9:16 columns, and everything squarer."""
    short = min(w, h)
    if w / h >= 2.5:
        return Template(
            "wide",
            {
                Element.HEADLINE: Slot((0.42, 0.4), round(0.30 * h), 2, "start", ((0.1, 0, 0.8, 1),)),
                Element.CTA: Slot((0.88, 0.5), round(0.22 * h), 1, "centre", ((0.6, 0, 1, 1), (0, 0, 0.4, 1))),
                Element.LEGAL: Slot((0.42, 0.85), round(0.12 * h), 1, "start", ((0.1, 0.5, 0.8, 1),)),
            },
            max(rules.min_logo_px, round(0.45 * h)),
        )
    if w / h <= 0.6:
        # A skyscraper (160x600) is so narrow that text must be large for its width; a 9:16 story is not.
        k = 1.0 if w / h <= 0.35 else 0.55
        return Template(
            "tall",
            {
                Element.HEADLINE: Slot((0.5, 0.2), round(0.16 * k * w), 4, "centre", (TOP, BOTTOM)),
                Element.CTA: Slot((0.5, 0.86), round(0.11 * k * w), 2, "centre", (BOTTOM, TOP)),
                Element.LEGAL: Slot((0.5, 0.97), round(0.07 * k * w), 3, "centre", (FOOT,)),
            },
            max(rules.min_logo_px, round(rules.logo_height_frac * short * 1.5)),
        )
    return Template(
        "square",
        {
            Element.HEADLINE: Slot((0.5, 0.12), round(0.085 * short), 2, "centre", (TOP, BOTTOM)),
            Element.CTA: Slot((0.5, 0.84), round(0.05 * short), 1, "centre", (BOTTOM, TOP)),
            Element.LEGAL: Slot((0.5, 0.97), round(0.025 * short), 2, "centre", (FOOT,)),
        },
        max(rules.min_logo_px, round(rules.logo_height_frac * short)),
    )


def font_sizes(largest: int, smallest: int) -> list[int]:
    """Largest first, each about 8 % smaller, ending exactly at the minimum."""
    sizes: list[int] = []
    size = float(max(largest, smallest))
    while round(size) > smallest:
        if not sizes or round(size) < sizes[-1]:
            sizes.append(round(size))
        size *= SHRINK
    return [*sizes, smallest]


def product_mask(product: np.ndarray | Box, w: int, h: int) -> np.ndarray:
    """The product as a boolean (H, W) mask, from a mask or a bounding box."""
    if isinstance(product, np.ndarray):
        if product.shape[:2] != (h, w):
            raise ValueError(f"product: expected a ({h}, {w}) mask, got shape {product.shape}")
        return product.astype(bool) if product.ndim == 2 else product[..., -1] > 0
    x0, y0, x1, y1 = (int(v) for v in product)
    mask = np.zeros((h, w), bool)
    mask[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = True
    return mask


def dilate(mask: np.ndarray, px: int) -> np.ndarray:
    if px <= 0:
        return mask.copy()
    kernel = np.ones((2 * px + 1, 2 * px + 1), np.uint8)
    return cv2.dilate(mask.astype(np.uint8), kernel).astype(bool)


class FreeSpace:
    """Obstacles on the canvas (the product, placed elements) and the search for a free box."""

    def __init__(self, obstacles: np.ndarray) -> None:
        self.blocked = obstacles.copy()
        self._integral: np.ndarray | None = None

    def block(self, box: Box) -> None:
        x0, y0, x1, y1 = box
        self.blocked[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)] = True
        self._integral = None

    def find(self, size: tuple[int, int], regions: list[Box], anchor: tuple[float, float]) -> Box | None:
        """The free box of ``size`` inside one of ``regions`` whose centre is nearest ``anchor`` (px)."""
        best: tuple[float, Box] | None = None
        for region in regions:
            found = self._nearest(size, region, anchor)
            if found and (best is None or found[0] < best[0]):
                best = found
        return best[1] if best else None

    def _nearest(self, size: tuple[int, int], region: Box, anchor: tuple[float, float]) -> tuple[float, Box] | None:
        bw, bh = size
        rx0, ry0, rx1, ry1 = region
        if rx1 - rx0 < bw or ry1 - ry0 < bh:
            return None
        s = self._sums()
        xs = np.arange(rx0, rx1 - bw + 1, STRIDE)
        ys = np.arange(ry0, ry1 - bh + 1, STRIDE)
        area = s[ys[:, None] + bh, xs[None, :] + bw] - s[ys[:, None], xs[None, :] + bw]
        area = area - s[ys[:, None] + bh, xs[None, :]] + s[ys[:, None], xs[None, :]]
        free = area == 0
        if not free.any():
            return None
        dist = (ys[:, None] + bh / 2 - anchor[1]) ** 2 + (xs[None, :] + bw / 2 - anchor[0]) ** 2
        dist = np.where(free, dist, np.inf)
        iy, ix = np.unravel_index(int(np.argmin(dist)), dist.shape)
        x, y = int(xs[ix]), int(ys[iy])
        return float(dist[iy, ix]), (x, y, x + bw, y + bh)

    def _sums(self) -> np.ndarray:
        if self._integral is None:
            self._integral = cv2.integral(self.blocked.astype(np.uint8))
        return self._integral


def regions_for(element: Element, slot: Slot, zones: tuple[Zone, ...], w: int, h: int, margin: int) -> list[list[Box]]:
    """Where the element may go, in order of preference: the safe zones with its label (else "text") if the
    brand has any, else the slot's bands and then the whole canvas, each inside the margin."""
    own = [z.box(w, h) for z in zones if z.label == element.value]
    text = [z.box(w, h) for z in zones if z.label == "text" and element is not Element.LOGO]
    if own or text:
        return [own or text]
    inner = (margin, margin, w - margin, h - margin)
    bands = [_clip((round(b[0] * w), round(b[1] * h), round(b[2] * w), round(b[3] * h)), inner) for b in slot.bands]
    return [[b] for b in bands] + [[inner]]


def _clip(box: Box, inner: Box) -> Box:
    return (max(box[0], inner[0]), max(box[1], inner[1]), min(box[2], inner[2]), min(box[3], inner[3]))


def corner_region(corner: str, name: str, w: int, h: int) -> Box:
    """Where a logo in ``corner`` may sit: a third of a banner's width, a quadrant otherwise."""
    left, top = corner.endswith("left"), corner.startswith("top")
    if name == "wide":
        return (0, 0, w // 3, h) if left else (w - w // 3, 0, w, h)
    cw, ch = (w + 1) // 2, (h + 1) // 2
    return (0 if left else w - cw, 0 if top else h - ch, cw if left else w, ch if top else h)


def corner_anchor(corner: str, w: int, h: int, name: str) -> tuple[float, float]:
    x = 0.0 if corner.endswith("left") else float(w)
    y = h / 2 if name == "wide" else (0.0 if corner.startswith("top") else float(h))
    return x, y
