"""Product fidelity QC: is the product in a candidate still exactly the product?

Three views of the same question, strictest first:

* ``exact_fraction`` - share of the layer's fully opaque pixels that are bit-identical
  in the candidate (composition.exact_counts; the generate stage already stored the
  sha256 proof in the candidate's integrity record, QC does not hash again). 1.0 is the promise.
* ``msssim_edges``   - MS-SSIM between edge maps of the product's bounding box in the
  candidate and in a reference built from the layer. Catches structural damage (blur,
  redrawn text, warped logos) that a generator might introduce even when colours are
  close, and degrades gracefully where exact comparison is all-or-nothing.
* ``mean_abs_diff``  - mean absolute RGB difference (0-255) over the opaque region.
* ``delta_e``        - mean CIEDE2000 colour difference over the opaque region: how far a
                       recoloured or re-lit product drifted, in perceptual units (2.3 ~ JND).

:func:`product_crops` gives the product's box in the candidate and in the reference (the
candidate with the placed product put back) for an embedding model to compare (DINOv2).

The MS-SSIM itself runs in torch (pytorch_msssim), through :mod:`workers.models.msssim`, which
imports it lazily: importing this module stays cheap for processes that never run QC.
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

from workers.imaging import colour
from workers.imaging.composition import exact_counts
from workers.models import msssim

MSSSIM_MIN_SIDE = 161  # 5 scales with an 11 px window need > (11 - 1) * 2**4 px
MSSSIM_MAX_SIDE = 1024  # larger crops are downscaled: cost, not accuracy, grows past this
BBOX_PAD = 4  # px of context around the product so its outline is inside the crop


def fidelity(candidate: Image.Image, layer: Image.Image) -> dict[str, float | int]:
    """Fidelity of ``candidate`` to the product in ``layer`` (RGBA, alpha = mask)."""
    opaque_n, exact_n = exact_counts(candidate, layer)  # also validates both arguments
    cand = np.asarray(candidate.convert("RGB"))
    arr = np.asarray(layer)
    opaque = arr[:, :, 3] == 255
    diff = np.abs(cand[opaque].astype(np.int16) - arr[:, :, :3][opaque].astype(np.int16))
    return {
        "opaque_pixels": opaque_n,
        "exact_pixels": exact_n,
        "exact_fraction": exact_n / opaque_n,
        "msssim_edges": round(msssim_edges(cand, arr[:, :, :3], opaque), 6),
        "mean_abs_diff": round(float(diff.mean()), 4),
        "delta_e": round(colour.mean_delta_e(cand, arr[:, :, :3], opaque), 4),
    }


def product_crops(candidate: Image.Image, layer: Image.Image) -> tuple[Image.Image, Image.Image]:
    """(candidate, reference) crops of the product's padded box; the reference has the placed product's
    opaque pixels, so the crops differ only where the product was changed."""
    cand = np.asarray(candidate.convert("RGB"))
    arr = np.asarray(layer.convert("RGBA"))
    opaque = arr[:, :, 3] == 255
    if not opaque.any():
        raise ValueError("layer: no opaque product pixel to compare")
    x0, y0, x1, y1 = _padded_bbox(opaque, BBOX_PAD)
    reference = cand.copy()
    reference[opaque] = arr[:, :, :3][opaque]
    return Image.fromarray(cand[y0:y1, x0:x1]), Image.fromarray(reference[y0:y1, x0:x1])


def msssim_edges(cand: np.ndarray, product: np.ndarray, opaque: np.ndarray) -> float:
    """MS-SSIM (data_range=255) of Sobel edge maps over the product's bounding box.

    The reference is the candidate with the product's opaque pixels put back, so the
    two images can only differ where the product is: background, shadow and the
    soft edge never count for or against the product.
    """
    x0, y0, x1, y1 = _padded_bbox(opaque, BBOX_PAD)
    reference = cand.copy()
    reference[opaque] = product[opaque]
    a = _edge_map(_fit_for_msssim(cand[y0:y1, x0:x1]))
    b = _edge_map(_fit_for_msssim(reference[y0:y1, x0:x1]))
    return msssim.ms_ssim(a, b, data_range=255.0)


def _padded_bbox(fg: np.ndarray, pad: int) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(fg)
    h, w = fg.shape
    return (
        max(0, int(xs.min()) - pad),
        max(0, int(ys.min()) - pad),
        min(w, int(xs.max()) + 1 + pad),
        min(h, int(ys.max()) + 1 + pad),
    )


def _fit_for_msssim(crop: np.ndarray) -> np.ndarray:
    # Upsample rather than pad: padding adds area that matches by construction and
    # would inflate the score of a small, damaged product.
    h, w = crop.shape[:2]
    f = min(1.0, MSSSIM_MAX_SIDE / max(h, w))  # shrink huge crops, for cost
    f = max(f, MSSSIM_MIN_SIDE / min(h, w))  # but never below the MS-SSIM minimum
    if f == 1.0:
        return crop
    size = (max(MSSSIM_MIN_SIDE, round(w * f)), max(MSSSIM_MIN_SIDE, round(h * f)))
    return cv2.resize(crop, size, interpolation=cv2.INTER_CUBIC if f > 1 else cv2.INTER_AREA)


def _edge_map(rgb: np.ndarray) -> np.ndarray:
    """Sobel gradient magnitude in grey levels (a step of d levels reads ~d), 0-255."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32)
    gx = cv2.Sobel(grey, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(grey, cv2.CV_32F, 0, 1, ksize=3)
    edges: np.ndarray = np.clip(cv2.magnitude(gx, gy) / 4.0, 0.0, 255.0)  # Sobel weights sum to 4
    return edges
