"""Segment Anything (transformers ``SamModel``) as the segment stage: a box prompt, the best of three masks.

SAM needs a prompt; ours is the product's bounding box (:func:`product_box`): the alpha channel's
extent when the upload has one, else the region that is not the border-connected backdrop, and for
shots without a clean backdrop a frequency-tuned saliency estimate. SAM proposes three masks for
the box; the one with the best predicted IoU wins and is kept inside the (slightly widened) box,
cleaned and checked exactly like the embedded matting segmenter's: an empty or near full-frame mask
raises :class:`matting.SegmentationError` rather than posing as a product.

torch and transformers are imported inside functions only; one model per ModelSpec per process.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
from PIL import Image

from shared.model_specs import ModelSpec
from workers.imaging import matting
from workers.models import runtime

if TYPE_CHECKING:
    import torch

# Neutral grey behind transparent pixels: close to SAM's normalisation mean, so the padding reads
# as "nothing" instead of a black or white shape with an edge of its own.
BACKDROP_GREY = (128, 128, 128)
# The mask may reach this share of the box side beyond the prompt box (SAM's edge vs. ours).
BOX_SLACK = 0.05
# Images whose luminance spread (1st..99th percentile) is below this have no product to find.
MIN_CONTRAST = 8.0
# Salient = this many times the mean saliency (Achanta et al. use 2x for objects; 1.5x keeps the
# fainter parts of a product inside the box, SAM trims what is not product).
SALIENT = 1.5
MAX_HOLE_SHARE = 0.02  # as matting.segment: small enclosed gaps are glare, larger ones real openings

_MODELS: dict[ModelSpec, SamSegmenter] = {}
_LOCK = threading.Lock()  # Celery thread pools may load concurrently; load each model once


@dataclass
class SamSegmenter:
    spec: ModelSpec
    model: Any  # transformers SamModel, on ``device`` in ``dtype``, eval mode
    processor: Any  # transformers SamProcessor
    device: torch.device
    dtype: torch.dtype

    def segment(self, image: Image.Image) -> matting.SegmentResult:
        """The product mask of ``image`` (method "sam"); SegmentationError when SAM finds no plausible one."""
        matting.check_image(image)
        alpha = matting.meaningful_alpha(image)
        box = product_box(image)
        logits, predicted_iou, seconds = self._predict(model_input(image, alpha), box)
        return finish(logits > 0.0, alpha, box, predicted_iou, "sam", seconds)

    def _predict(self, rgb: Image.Image, box: tuple[int, int, int, int]) -> tuple[np.ndarray, float, float]:
        """(mask logits HxW at the original size, predicted IoU, seconds) of the best of three masks."""
        import torch

        inputs = self.processor(images=rgb, input_boxes=[[[float(v) for v in box]]], return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, self.dtype)
        boxes = inputs["input_boxes"].to(self.device, self.dtype)
        with torch.inference_mode(), runtime.timed(self.device) as seconds:
            out = self.model(pixel_values=pixels, input_boxes=boxes, multimask_output=True)
        scores = out.iou_scores[0, 0].float()
        best = int(scores.argmax())
        masks = self.processor.image_processor.post_process_masks(
            out.pred_masks[:, :, best : best + 1].float().cpu(),
            inputs["original_sizes"],
            inputs["reshaped_input_sizes"],
            binarize=False,
        )
        return masks[0][0, 0].numpy(), float(scores[best]), seconds[0]


def load(spec: ModelSpec) -> SamSegmenter:
    """The SAM segmenter of ``spec``, loaded on first use and shared by every later call in this process."""
    if spec.adapter != "sam":
        raise ValueError(f"spec: expected adapter 'sam', got {spec.adapter!r}")
    with _LOCK:
        if spec not in _MODELS:
            _MODELS[spec] = _load(spec)
        return _MODELS[spec]


def _load(spec: ModelSpec) -> SamSegmenter:
    if not spec.source:
        raise runtime.ModelUnavailable(spec, "no model configured (set ONBRAND_SAM_MODEL)")
    if (Path(spec.source).is_absolute() or spec.source.startswith(".")) and not spec.local:  # a path: say so
        raise runtime.ModelUnavailable(spec, f"{spec.source} does not exist")
    dev = runtime.device(spec)
    dt = runtime.dtype(spec, dev)
    from transformers import SamModel, SamProcessor

    try:
        processor = SamProcessor.from_pretrained(spec.source)
        model = SamModel.from_pretrained(spec.source, dtype=dt)
    except (OSError, ValueError, KeyError) as exc:  # missing files, not cached offline, bad config
        raise runtime.ModelUnavailable(spec, f"{type(exc).__name__}: {exc}") from exc
    # transformers wraps PreTrainedModel.to in functools.wraps, whose type does not bind self
    return SamSegmenter(spec, model.to(dev).eval(), processor, dev, dt)  # type: ignore[arg-type]


# --- shared with sam_original: prompt, input and post-processing -----------------------------


def model_input(image: Image.Image, alpha: np.ndarray | None) -> Image.Image:
    """RGB for SAM: a cut-out composited over neutral grey, anything else converted as it is."""
    if alpha is None:
        return image.convert("RGB")
    grey = Image.new("RGBA", image.size, (*BACKDROP_GREY, 255))
    return Image.alpha_composite(grey, image.convert("RGBA")).convert("RGB")


def finish(
    raw: np.ndarray,
    alpha: np.ndarray | None,
    box: tuple[int, int, int, int],
    predicted_iou: float,
    method: str,
    seconds: float,
) -> matting.SegmentResult:
    """Bool mask from a SAM model -> the stage's SegmentResult, with matting's cleaning and checks."""
    if alpha is not None and alpha.shape != raw.shape:
        raise ValueError(f"alpha: shape {alpha.shape} differs from the mask's {raw.shape}")
    inside = raw & _box_mask(raw.shape, box)
    mask, removed, filled = matting.clean_mask(inside.astype(np.uint8) * 255, MAX_HOLE_SHARE)
    matting.check_plausible(mask, method)
    soft = mask.copy() if alpha is None else np.minimum(mask, alpha)
    quality = {
        **matting.mask_quality(mask, removed, filled),
        "predicted_iou": round(predicted_iou, 4),
        "box": list(box),
        "seconds": round(seconds, 4),
    }
    return matting.SegmentResult(mask, soft, method, quality)


def _box_mask(shape: tuple[int, ...], box: tuple[int, int, int, int]) -> np.ndarray:
    """The prompt box widened by BOX_SLACK (at least 2 px) on every side, as a bool HxW."""
    x0, y0, x1, y1 = box
    dx, dy = max(2, round(BOX_SLACK * (x1 - x0))), max(2, round(BOX_SLACK * (y1 - y0)))
    keep = np.zeros(shape[:2], bool)
    keep[max(0, y0 - dy) : y1 + dy, max(0, x0 - dx) : x1 + dx] = True
    return keep


# --- the prompt box ----------------------------------------------------------------------------


def product_box(image: Image.Image) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), exclusive ends: where the product is, for SAM's box prompt.

    Meaningful alpha: the extent of the (speck-free) opaque part. Opaque shots: the extent of what
    is not border-connected backdrop (matting.border_background). When the border gives nothing
    (no backdrop, or backdrop everywhere): the extent of the salient region (:func:`saliency`),
    and the whole frame when nothing stands out, leaving the choice to SAM. A uniform image has
    no product: SegmentationError.
    """
    matting.check_image(image)
    alpha = matting.meaningful_alpha(image)
    if alpha is not None:
        return _extent(alpha >= 128, "alpha")
    rgb = np.asarray(image.convert("RGB"))
    if np.subtract(*np.percentile(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), [99, 1])) < MIN_CONTRAST:
        raise matting.SegmentationError("no product found: the image is practically uniform")
    foreground = ~matting.border_background(rgb)
    if 0 < foreground.mean() <= matting.MAX_AREA_SHARE:
        return _extent(foreground, "backdrop")
    salient = saliency(rgb) >= SALIENT
    return _extent(salient, "saliency") if salient.any() else (0, 0, image.width, image.height)


def _extent(fg: np.ndarray, source: str) -> tuple[int, int, int, int]:
    """Bounding box of ``fg`` after matting's speck removal (dust and noise would stretch it)."""
    kept, _, _ = matting.clean_mask(fg.astype(np.uint8) * 255, 0.0)
    ys, xs = np.nonzero(kept)
    if ys.size == 0:
        raise matting.SegmentationError(f"no product found: nothing to box ({source})")
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def saliency(rgb: np.ndarray) -> np.ndarray:
    """Float HxW, 1.0 = the image's mean: frequency-tuned saliency (Achanta et al., CVPR 2009).

    Each (lightly blurred) pixel's CIELAB distance from the image's mean colour: what differs
    from the overall look is likely the subject. No model, deterministic, one pass over the
    pixels; the fallback prompt for shots without a backdrop along the border.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb: expected HxWx3, got shape {rgb.shape}")
    lab = cv2.cvtColor(cv2.GaussianBlur(rgb, (5, 5), 0), cv2.COLOR_RGB2LAB).astype(np.float32)
    distance = np.linalg.norm(lab - lab.reshape(-1, 3).mean(axis=0), axis=2)
    relative: np.ndarray = distance / max(float(distance.mean()), 1e-6)
    return relative
