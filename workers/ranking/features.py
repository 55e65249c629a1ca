"""A fixed, named feature vector per candidate, from what the qc and rank stages stored on it.

The learner (workers.ranking.pairwise) compares candidates through these numbers only, so each one is
something stored on every candidate that reached rank, and numeric:

* the aesthetic score (0-10, as 0-1) and its classical parts (workers.checks.aesthetic: sharpness,
  exposure, colourfulness, contrast, thirds, grounding; each 0-1);
* QC metrics: exact-pixel share of the product region, MS-SSIM of edge maps, mean CIEDE2000 of the
  product, DINOv2 cosine, the product's share of the canvas (the product_area verdict's hull share),
  the background's share within the brand palette, the image's mean luminance and RMS contrast;
* placement: the product's centre x and y as canvas fractions, its scale, |rotation| in degrees, the grid
  row and column.

A missing value (the laion scorer stores no classical parts, DINOv2 or a palette not configured) reads as
the documented NEUTRAL value. Such gaps are deployment- or brand-wide, so both sides of a pair lack the
same value and it drops out of the difference the learner sees: no presence flags are needed. The one
per-candidate gap, a product_area verdict missing, falls back to the placed box's share of the canvas.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

PARTS = ("sharpness", "exposure", "colourfulness", "contrast", "thirds", "grounding")
METRICS = ("exact_fraction", "msssim_edges", "delta_e", "dino_cosine")
# feature -> the QC verdict whose measured value it is
VERDICTS = {
    "product_area": "product_area",
    "palette_share": "palette_adherence",
    "luminance": "exposure",
    "rms_contrast": "contrast",
}
PLACEMENT = ("centre_x", "centre_y", "scale", "rotation", "row", "col")
FEATURES: tuple[str, ...] = ("aesthetic", *PARTS, *METRICS, *VERDICTS, *PLACEMENT)

# Neutral values of missing data: a part half-way, a product copied exactly, a centred product.
NEUTRAL: dict[str, float] = {
    **dict.fromkeys(FEATURES, 0.0),
    **dict.fromkeys(PARTS, 0.5),
    "aesthetic": 0.5,
    "exact_fraction": 1.0,
    "msssim_edges": 1.0,
    "dino_cosine": 1.0,
    "palette_share": 0.5,
    "luminance": 0.5,
    "centre_x": 0.5,
    "centre_y": 0.5,
    "scale": 1.0,
    "row": 2.0,
    "col": 2.0,
}


class CandidateLike(Protocol):
    """What features() reads: a Candidate row, or anything with the same three attributes."""

    @property
    def qc(self) -> Mapping[str, Any]: ...

    @property
    def placement(self) -> Mapping[str, Any]: ...

    @property
    def aesthetic(self) -> float | None: ...


def features(cand: CandidateLike) -> dict[str, float]:
    """FEATURES -> value for ``cand`` (every name present, every value a finite float)."""
    qc = cand.qc or {}
    found: dict[str, float | None] = {"aesthetic": None if cand.aesthetic is None else cand.aesthetic / 10.0}
    parts = (qc.get("aesthetic") or {}).get("parts") or {}
    found |= {name: parts.get(name) for name in PARTS}
    metrics = qc.get("metrics") or {}
    found |= {name: metrics.get(name) for name in METRICS}
    values = {v.get("check"): v.get("value") for v in qc.get("verdicts") or []}
    found |= {name: values.get(check) for name, check in VERDICTS.items()}
    found |= placement_features(cand.placement or {})
    if found["product_area"] is None:
        found["product_area"] = box_share(cand.placement or {})
    return {name: _number(found.get(name), NEUTRAL[name]) for name in FEATURES}


def placement_features(placement: Mapping[str, Any]) -> dict[str, float | None]:
    """Centre (canvas fractions), scale, |rotation|, grid row and column of a stored placement record."""
    canvas = placement.get("canvas") or {}
    cw, ch = _number(canvas.get("width"), 0.0), _number(canvas.get("height"), 0.0)
    x, y = _number(placement.get("x"), -1.0), _number(placement.get("y"), -1.0)
    w, h = _number(placement.get("width"), 0.0), _number(placement.get("height"), 0.0)
    known = cw > 0 and ch > 0 and x >= 0 and y >= 0
    rotation = placement.get("rotation")
    return {
        "centre_x": (x + w / 2) / cw if known else None,
        "centre_y": (y + h / 2) / ch if known else None,
        "scale": placement.get("scale"),
        "rotation": abs(rotation) if isinstance(rotation, int | float) else None,
        "row": placement.get("row"),
        "col": placement.get("col"),
    }


def box_share(placement: Mapping[str, Any]) -> float | None:
    """The placed (rotated) box's share of the canvas: an upper bound of the product's own share."""
    canvas = placement.get("canvas") or {}
    area = (canvas.get("width") or 0) * (canvas.get("height") or 0)
    w, h = placement.get("width") or 0, placement.get("height") or 0
    return w * h / area if area and w and h else None


def _number(value: Any, neutral: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value or abs(value) == float("inf"):
        return neutral
    return float(value)
