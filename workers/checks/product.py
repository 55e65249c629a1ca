"""The product checks of one candidate: is the product exactly the product, and fully in frame?

Each check's verdict says pass, fail or unchecked with a reason; unchecked is never a made-up pass.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from shared.qc import QcThresholds


def verdict(
    check: str, group: str, value: float | None, threshold: Any, passed: bool | None, reason: str
) -> dict[str, Any]:
    """One check's outcome; ``passed`` None = unchecked (the reason says why), never a made-up pass."""
    status = "unchecked" if passed is None else ("pass" if passed else "fail")
    return {
        "check": check,
        "group": group,
        "value": None if value is None else round(float(value), 4),
        "threshold": threshold,
        "passed": passed,
        "status": status,
        "reason": reason,
    }


def product_checks(metrics: dict[str, Any], limits: QcThresholds) -> list[dict[str, Any]]:
    """Is the product exactly the product: pixels, edges, colour and (with DINOv2) appearance."""
    exact, ssim, de, dino = (
        metrics["exact_fraction"],
        metrics["msssim_edges"],
        metrics["delta_e"],
        metrics.get("dino_cosine"),
    )
    return [
        verdict(
            "product_exact",
            "product",
            exact,
            limits.min_exact,
            exact >= limits.min_exact,
            f"{exact:.2%} of opaque product pixels are identical to the placed product",
        ),
        verdict(
            "product_edges_msssim",
            "product",
            ssim,
            limits.min_msssim,
            ssim >= limits.min_msssim,
            f"MS-SSIM of product edge maps {ssim:.3f}",
        ),
        verdict(
            "product_colour_delta_e",
            "product",
            de,
            limits.max_delta_e,
            de <= limits.max_delta_e,
            f"mean CIEDE2000 over the product {de:.2f} (2.3 is a just-noticeable difference)",
        ),
        verdict(
            "product_dino",
            "product",
            dino,
            limits.min_dino,
            None if dino is None else dino >= limits.min_dino,
            "DINOv2 is not configured (ONBRAND_DINOV2_MODEL)"
            if dino is None
            else f"DINOv2 cosine of the product crops {dino:.3f}",
        ),
    ]


def frame_check(layer: Image.Image) -> dict[str, Any]:
    """A product cut by the canvas edge reads as a mistake in an ad."""
    import numpy as np

    alpha = np.asarray(layer.getchannel("A"))
    ys, xs = np.nonzero(alpha)
    h, w = alpha.shape
    inside = bool(ys.min() > 0 and xs.min() > 0 and ys.max() < h - 1 and xs.max() < w - 1)
    return verdict(
        "product_in_frame",
        "brand",
        1.0 if inside else 0.0,
        1.0,
        inside,
        "product fully inside the canvas" if inside else "product touches the canvas edge",
    )
