"""Segment Anything through Meta's original ``segment-anything`` package (the GPU image only).

Same contract as :mod:`workers.models.sam` (``load(spec)`` once per process, ``.segment(image)``
-> SegmentResult, method "segment-anything") and the same box prompt and post-processing; only
the model runs through ``sam_model_registry`` and ``SamPredictor`` on a ``.pth`` checkpoint. The
package needs torchvision, which this project installs in the GPU image only (its PyPI wheel
breaks transformers in the CPU environment), so it is imported lazily and its absence is a
ModelUnavailable that says so.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from shared.model_specs import ModelSpec
from workers.imaging import matting
from workers.models import runtime, sam

if TYPE_CHECKING:
    import torch

NOT_INSTALLED = "segment-anything is not installed (pip install 'onbrand[gpu]' in the GPU image; it needs torchvision)"
MODEL_TYPES = ("vit_h", "vit_l", "vit_b")

_MODELS: dict[ModelSpec, OriginalSamSegmenter] = {}
_LOCK = threading.Lock()  # Celery thread pools may load concurrently; load each model once


@dataclass
class OriginalSamSegmenter:
    spec: ModelSpec
    predictor: Any  # segment_anything.SamPredictor around the model, on ``device``
    device: torch.device
    dtype: torch.dtype  # compute dtype under autocast on CUDA; the weights stay float32
    # SamPredictor keeps the current image's embedding as state: one image at a time
    _busy: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def segment(self, image: Image.Image) -> matting.SegmentResult:
        """The product mask of ``image`` (method "segment-anything"); SegmentationError when implausible."""
        matting.check_image(image)
        alpha = matting.meaningful_alpha(image)
        box = sam.product_box(image)
        mask, score, seconds = self._predict(sam.model_input(image, alpha), box)
        return sam.finish(mask, alpha, box, score, "segment-anything", seconds)

    def _predict(self, rgb: Image.Image, box: tuple[int, int, int, int]) -> tuple[np.ndarray, float, float]:
        """(bool mask HxW at the original size, predicted IoU, seconds) of the best of three masks."""
        import torch

        # autocast rather than .half(): SamPredictor feeds float32 tensors it builds itself
        on_cuda = self.device.type == "cuda"
        with (
            self._busy,
            torch.inference_mode(),
            torch.autocast(self.device.type, self.dtype, enabled=on_cuda),
            runtime.timed(self.device) as seconds,
        ):
            self.predictor.set_image(np.asarray(rgb))
            masks, scores, _ = self.predictor.predict(box=np.asarray(box, np.float32), multimask_output=True)
        best = int(np.argmax(scores))
        return np.asarray(masks[best], bool), float(scores[best]), seconds[0]


def load(spec: ModelSpec) -> OriginalSamSegmenter:
    """The segment-anything segmenter of ``spec``, loaded on first use and shared by later calls."""
    if spec.adapter != "segment-anything":
        raise ValueError(f"spec: expected adapter 'segment-anything', got {spec.adapter!r}")
    with _LOCK:
        if spec not in _MODELS:
            _MODELS[spec] = _load(spec)
        return _MODELS[spec]


def _load(spec: ModelSpec) -> OriginalSamSegmenter:
    model_type = spec.option("model_type", "vit_h")
    if model_type not in MODEL_TYPES:
        raise runtime.ModelUnavailable(spec, f"model_type {model_type!r} is not one of {', '.join(MODEL_TYPES)}")
    if not spec.source or not Path(spec.source).is_file():
        raise runtime.ModelUnavailable(
            spec, "checkpoint file not found (set ONBRAND_SAM_CHECKPOINT to a segment-anything .pth)"
        )
    registry, predictor_class = _package(spec)
    dev = runtime.device(spec)
    try:
        model = registry[model_type](checkpoint=spec.source)
    except (OSError, RuntimeError, KeyError) as exc:  # unreadable file, weights of another model_type
        raise runtime.ModelUnavailable(spec, f"{type(exc).__name__}: {exc}") from exc
    model.to(dev).eval()
    return OriginalSamSegmenter(spec, predictor_class(model), dev, runtime.dtype(spec, dev))


def _package(spec: ModelSpec) -> tuple[Any, Any]:
    """(sam_model_registry, SamPredictor), or ModelUnavailable where the package cannot be imported."""
    try:
        from segment_anything import SamPredictor, sam_model_registry
    except ImportError as exc:  # also torchvision missing underneath it
        raise runtime.ModelUnavailable(spec, NOT_INSTALLED) from exc
    return sam_model_registry, SamPredictor
