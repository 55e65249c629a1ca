"""Product fidelity QC: is the product in a candidate still exactly the product?

Measured against the SOURCE product: the ``reference`` layer is re-derived from the stored
source photo and mask with the candidate's recorded transform (shared.integrity.derive_layer),
independently of the layer that was pasted. A layer that was recoloured, warped, blurred, cut
by a leaking mask or taken from another photo therefore lowers these numbers; comparing the
candidate with its own pasted layer would give 1.0 by construction. Without a reference (a
candidate with no integrity record) the placed layer stands in and ``fidelity_reference`` says so.

Three views of the same question, strictest first:

* ``exact_fraction`` - share of the reference's fully opaque pixels that are bit-identical
  in the candidate (composition.exact_counts). 1.0 is the promise.
* ``msssim_edges``   - MS-SSIM between edge maps of the product's padded box in the candidate
  (its soft edge and surroundings included) and the same box with the source product's
  opaque pixels put back. Catches structural damage (blur, redrawn text, warped
  logos) even when colours are close, and degrades gracefully where exact comparison is
  all-or-nothing.
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


def fidelity(
    candidate: Image.Image, layer: Image.Image, reference: Image.Image | None = None
) -> dict[str, float | int | str | bool]:
    """Fidelity of ``candidate`` to the source product ``reference`` (RGBA, re-derived from the source
    photo; the placed ``layer`` when there is none)."""
    ref = layer if reference is None else reference
    opaque_n, exact_n = exact_counts(candidate, ref)  # also validates both arguments
    cand = np.asarray(candidate.convert("RGB"))
    arr = np.asarray(ref.convert("RGBA"))
    opaque = arr[:, :, 3] == 255
    diff = np.abs(cand[opaque].astype(np.int16) - arr[:, :, :3][opaque].astype(np.int16))
    return {
        "fidelity_reference": "placed layer" if reference is None else "source",
        "layer_matches_source": reference is not None and np.array_equal(np.asarray(layer.convert("RGBA")), arr),
        "opaque_pixels": opaque_n,
        "exact_pixels": exact_n,
        "exact_fraction": exact_n / opaque_n,
        "msssim_edges": round(msssim_edges(cand, arr), 6),
        "mean_abs_diff": round(float(diff.mean()), 4),
        "delta_e": round(colour.mean_delta_e(cand, arr[:, :, :3], opaque), 4),
    }


def product_crops(candidate: Image.Image, reference: Image.Image) -> tuple[Image.Image, Image.Image]:
    """(candidate, reference) crops of the product's padded box, for an embedding model (DINOv2): the
    reference is the candidate with the source product's (``reference``, RGBA) opaque pixels put back, so
    the crops share their surroundings and differ where the product in the candidate is not the source's."""
    cand = np.asarray(candidate.convert("RGB"))
    arr = np.asarray(reference.convert("RGBA"))
    if not (arr[:, :, 3] == 255).any():
        raise ValueError("layer: no opaque product pixel to compare")
    x0, y0, x1, y1 = _padded_bbox(arr[:, :, 3] > 0, BBOX_PAD)
    return Image.fromarray(cand[y0:y1, x0:x1]), Image.fromarray(blended(cand, arr)[y0:y1, x0:x1])


def blended(cand: np.ndarray, rgba: np.ndarray) -> np.ndarray:
    """``cand`` (RGB) with the source product's opaque pixels put back: the candidate as it should be.

    Only where ``rgba`` is opaque does the source say what the pixel is; under its soft edge and
    translucent parts the colour depends on the scene behind, which only the candidate holds, so
    those stay the candidate's (blending the source over them again would count a clean glass
    product as damaged).
    """
    out = cand.copy()
    opaque = rgba[:, :, 3] == 255
    out[opaque] = rgba[:, :, :3][opaque]
    return out


def msssim_edges(cand: np.ndarray, reference: np.ndarray) -> float:
    """MS-SSIM (data_range=255) of Sobel edge maps over the product's padded box: the candidate as it is
    (soft edge, shadow, surroundings) against the same with the source product ``reference`` (RGBA) put back."""
    x0, y0, x1, y1 = _padded_bbox(reference[:, :, 3] > 0, BBOX_PAD)
    a = _edge_map(_fit_for_msssim(cand[y0:y1, x0:x1]))
    b = _edge_map(_fit_for_msssim(blended(cand, reference)[y0:y1, x0:x1]))
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
