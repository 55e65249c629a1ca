"""Object expansion: did the generated pixels grow the product, or add a second one next to it?

Eshratifar et al. (CVPRW'24, "Salient object-aware background generation") measure how far an
outpainting model extends the salient object past its mask: the object found in the generated
image against the object that was placed. Here the "object found" is what looks like the product
around the placed mask: a colour model of the product (its own placed pixels) against a colour
model of the scene around it (a ring farther out), a likelihood ratio per pixel, at a reduced
size (QC runs this on hundreds of candidates; a 1024 px candidate costs a few ms).

* ``expansion``  - (found - placed) / placed: product-like pixels connected to the placed mask
                   just outside it (past the soft edge and the harmonised ring), over the placed
                   area. 0 for a pixel-exact paste on a scene that does not look like the product.
* ``duplicate``  - the largest product-like region around the product that does NOT touch it,
                   over the placed area: a second copy the generator painted beside it.

A product whose colours are the scene's own (a white mug on a white sweep), or spread over
every colour (a multicoloured print), cannot be told from the scene by colour: ``separable``
says how far its colours stand apart, and below MIN_SEPARABLE the verdict is unchecked rather
than a made-up pass.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from PIL import Image

from workers.checks.product import verdict

WORK_SIDE = 192  # the analysis window's longer side after downscaling
WINDOW = 0.6  # the window reaches this share of the product's larger side past its box
EDGE = 0.04  # share of the product's size (at least 2 px) just outside the mask that is never counted:
# its soft edge, the harmonised ring and the contact shadow's core
NEAR = 0.2  # growth is looked for up to this share of the product's size from the mask
FAR = 0.3  # the scene's colour model comes from farther than this
BINS = 8  # per channel: 512 colour bins
# How dark a shadow may make the scene's colours, in fine steps: a bin is 32 levels wide.
SHADES = tuple(float(k) for k in np.arange(0.4, 0.99, 0.04))
RATIO = 4.0  # a pixel is product-like where the product model is this many times likelier than the scene's
MIN_SEPARABLE = 0.65  # share of the product's pixels its own model calls product-like against the scene
# Gates, set on the QC set's tune split (clean: at most 0.005 expansion, 0.012 duplicate; a product
# grown 20 %: at least 0.106 expansion); held out: clean at most 0.006 and 0.010, grown at least 0.101.
MAX_EXPANSION = 0.05
MAX_DUPLICATE = 0.15


def measure(candidate: Image.Image, layer: Image.Image) -> dict[str, float | None]:
    """``expansion``, ``duplicate`` (shares of the placed area) and ``separable`` of ``candidate``."""
    rgb, placed = _window(candidate, layer)
    dist = cv2.distanceTransform((~placed).astype(np.uint8), cv2.DIST_L2, 3)
    size = float(max(np.ptp(np.nonzero(placed)[0]), np.ptp(np.nonzero(placed)[1])) + 1)
    edge = max(2.0, EDGE * size)
    likely = _product_like(rgb, placed, dist > FAR * size)
    separable = float(likely[placed].mean())
    if separable < MIN_SEPARABLE:
        return {"expansion": None, "duplicate": None, "separable": round(separable, 4)}
    outside = likely & (dist > edge)
    labels = cv2.connectedComponentsWithStats(outside.astype(np.uint8), connectivity=8)[1]
    touching = np.unique(labels[(dist > edge) & (dist <= edge + 1.5) & outside])
    grown = np.isin(labels, touching[touching > 0]) & (dist <= NEAR * size)
    area = float(placed.sum())
    return {
        "expansion": round(float(grown.sum()) / area, 4),
        "duplicate": round(_largest_detached(labels, touching, dist > NEAR * size) / area, 4),
        "separable": round(separable, 4),
    }


def check(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Verdicts on :func:`measure`'s numbers (group product: the product must stay the product's size)."""
    expansion, duplicate, separable = metrics["expansion"], metrics["duplicate"], metrics["separable"]
    if expansion is None or duplicate is None:
        why = f"the product's colours do not stand apart from the scene's (separable {separable:.2f} < {MIN_SEPARABLE})"
        return [
            verdict("product_expansion", "product", None, MAX_EXPANSION, None, why),
            verdict("product_duplicate_nearby", "product", None, MAX_DUPLICATE, None, why),
        ]
    return [
        verdict(
            "product_expansion",
            "product",
            expansion,
            MAX_EXPANSION,
            expansion <= MAX_EXPANSION,
            f"product-like pixels joined to the product past its mask: {expansion:.1%} of its area",
        ),
        verdict(
            "product_duplicate_nearby",
            "product",
            duplicate,
            MAX_DUPLICATE,
            duplicate <= MAX_DUPLICATE,
            f"largest product-like region beside the product: {duplicate:.1%} of its area",
        ),
    ]


def _window(candidate: Image.Image, layer: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """The candidate around the product, downscaled to WORK_SIDE, and the placed mask (alpha >= 128) there."""
    alpha = np.asarray(layer.getchannel("A"))
    if candidate.size != layer.size or not (alpha >= 128).any():
        raise ValueError("expansion: expected a candidate and a layer of one size, with a product in the layer")
    ys, xs = np.nonzero(alpha >= 128)
    pad = round(WINDOW * max(np.ptp(ys), np.ptp(xs)))
    h, w = alpha.shape
    x0, y0 = max(0, int(xs.min()) - pad), max(0, int(ys.min()) - pad)
    x1, y1 = min(w, int(xs.max()) + 1 + pad), min(h, int(ys.max()) + 1 + pad)
    rgb = np.asarray(candidate.convert("RGB").crop((x0, y0, x1, y1)))
    a = alpha[y0:y1, x0:x1]
    f = min(1.0, WORK_SIDE / max(x1 - x0, y1 - y0))
    if f < 1.0:
        size = (max(1, round((x1 - x0) * f)), max(1, round((y1 - y0) * f)))
        rgb, a = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA), cv2.resize(a, size, interpolation=cv2.INTER_AREA)
    return rgb, a >= 128


def _product_like(rgb: np.ndarray, placed: np.ndarray, scene: np.ndarray) -> np.ndarray:
    """Per pixel: the product's colour model over the scene's, above RATIO (both smoothed by one count)."""
    q = rgb.astype(np.int32) * BINS // 256
    index = (q[:, :, 0] * BINS + q[:, :, 1]) * BINS + q[:, :, 2]
    product = np.bincount(index[placed], minlength=BINS**3) + 1.0
    # The scene in shadow is still the scene: each bin is as likely as the scene's colours at their most
    # likely shade (a contact or drop shadow darkens them), the scene as it is included.
    around = rgb[scene].astype(np.float32)
    scene_p = np.zeros(BINS**3)
    for k in (1.0, *SHADES):
        q = np.clip(around * k, 0, 255).astype(np.int32) * BINS // 256
        shade = np.bincount((q[:, 0] * BINS + q[:, 1]) * BINS + q[:, 2], minlength=BINS**3) + 1.0
        scene_p = np.maximum(scene_p, shade / shade.sum())
    ratio = (product / product.sum()) / scene_p
    likely: np.ndarray = ratio[index] > RATIO
    return likely


def _largest_detached(labels: np.ndarray, touching: np.ndarray, beyond: np.ndarray) -> float:
    """Pixels of the largest product-like region that does not touch the product, counted where it lies
    beyond the growth zone (growth is measured there, a copy is measured here)."""
    detached = np.where(np.isin(labels, touching), 0, labels)
    counts = np.bincount(detached[beyond].ravel(), minlength=int(labels.max()) + 1)
    counts[0] = 0
    return float(counts.max()) if counts.size else 0.0
