"""Segmentation IoU per segmenter on the held-out split of workers.evaluation.seg_set (`make bench`).

Segmenters: ``before`` (the classical chain with no checks: border flood fill + GrabCut, as shipped
before issue 18), ``classical`` (the default chooser without ISNet: GrabCut, GrabCut with a centre
prior, gated by the mask-quality checks), ``isnet`` (the model alone, probability >= 0.5) and
``default`` (the chooser with ISNet). A failed segmentation counts as IoU 0.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from workers.evaluation import seg_set
from workers.imaging import matting

WEIGHTS = Path(".onbrand/models/isnet/model.onnx")


def _before(sample: seg_set.Sample) -> np.ndarray:
    rgb = np.asarray(sample.image.convert("RGB"))
    alpha = matting.meaningful_alpha(sample.image)
    if alpha is not None:
        return matting.clean_mask(np.where(alpha >= 128, 255, 0).astype(np.uint8))[0]
    background = matting.border_background(rgb)
    init = np.where(background, 0, 3).astype(np.uint8)
    import cv2

    models = (np.zeros((1, 65)), np.zeros((1, 65)))
    cv2.grabCut(np.ascontiguousarray(rgb), init, None, *models, 4, cv2.GC_INIT_WITH_MASK)  # type: ignore[call-overload]
    rough = np.isin(init, (1, 3)).astype(np.uint8) * 255
    rough[background] = 0
    return matting.clean_mask(rough)[0]


@pytest.mark.skipif(not WEIGHTS.is_file(), reason=f"ISNet weights absent at {WEIGHTS}: run `onbrand models pull`")
def test_bench_segmentation_iou() -> None:
    from workers.models import isnet

    predict = isnet.load(WEIGHTS).predict
    rows: dict[str, list[float]] = {"before": [], "classical": [], "isnet": [], "default": []}
    seconds: dict[str, float] = dict.fromkeys(rows, 0.0)
    for sample in seg_set.samples("heldout"):
        for name, run in (
            ("before", lambda s: _before(s)),
            ("classical", lambda s: matting.segment(s.image).mask),
            ("isnet", lambda s: predict(np.asarray(s.image.convert("RGB"))) >= 0.5),
            ("default", lambda s: matting.segment(s.image, predictor=predict).mask),
        ):
            started = time.perf_counter()
            try:
                rows[name].append(seg_set.iou(run(sample), sample.mask))
            except matting.SegmentationError:
                rows[name].append(0.0)
            seconds[name] += time.perf_counter() - started
    print(f"\nheld-out segmentation IoU ({len(rows['default'])} photos)")
    print(f"{'segmenter':<10} {'median':>7} {'worst':>7} {'< 0.95':>7} {'s/photo':>8}")
    for name, ious in rows.items():
        n = len(ious)
        below = sum(i < 0.95 for i in ious)
        print(f"{name:<10} {np.median(ious):7.4f} {min(ious):7.4f} {below:7d} {seconds[name] / n:8.2f}")
    assert np.median(rows["default"]) >= 0.98
