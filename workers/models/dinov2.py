"""DINOv2 image embeddings for QC: is the product in a candidate still the product, and are two candidates
near-duplicates?

DINOv2 is trained without labels or captions to tell objects and their parts apart, so its (layernormed)
CLS embedding moves with shape, texture and print detail rather than with what a caption would say; the
cosine of two embeddings is the similarity QC compares against thresholds. Preprocessing is DINOv2's own
(bicubic resize of the shorter side, centre crop, ImageNet normalisation) done with PIL and numpy, so no
processor file and no torchvision are needed; :func:`pixel_values` is shared with the laion adapter.

torch and transformers are imported inside functions only; one model per ModelSpec per process.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from PIL import Image

from shared.model_specs import ModelSpec
from workers.models import runtime

if TYPE_CHECKING:
    import torch

BATCH_SIZE = 16  # DINOv2 checkpoints default to 518 px (1370 tokens): 16 fit a 16 GB GPU in half precision
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # DINOv2's processor normalisation (BitImageProcessor)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Behind transparent pixels: ~ the normalisation mean, so padding reads as "nothing" rather than a shape.
BACKDROP_GREY = (128, 128, 128)

_MODELS: dict[ModelSpec, Dinov2Embedder] = {}
_LOCK = threading.Lock()  # Celery thread pools may load concurrently; load each model once


@dataclass
class Dinov2Embedder:
    spec: ModelSpec
    model: Any  # transformers Dinov2Model, on ``device`` in ``dtype``, eval mode
    device: torch.device
    dtype: torch.dtype
    dim: int  # hidden size: the length of every embedding
    image_size: int  # square side the model sees

    def embed(self, images: list[Image.Image]) -> np.ndarray:
        """(n, dim) float32, one L2-normalised CLS embedding per image, in order."""
        check_images(images, "images")
        rows = runtime.in_batches(images, BATCH_SIZE, self._run, on_oom=self._free)
        return np.asarray(rows, np.float32).reshape(len(images), self.dim)

    def similarity(self, a: list[Image.Image], b: list[Image.Image]) -> list[float]:
        """Cosine similarity of a[i] and b[i] for every i (1.0 = the same embedding)."""
        check_images(a, "a")
        check_images(b, "b")
        if len(a) != len(b):
            raise ValueError(f"b: expected as many images as a ({len(a)}), got {len(b)}")
        both = self.embed([*a, *b])  # one batched pass for both sides
        cosines = np.einsum("ij,ij->i", both[: len(a)], both[len(a) :])
        return [float(c) for c in np.clip(cosines, -1.0, 1.0)]  # float32 rounding may pass 1.0

    def _run(self, chunk: Sequence[Image.Image]) -> list[np.ndarray]:
        import torch

        pixels = pixel_values(chunk, self.image_size, IMAGENET_MEAN, IMAGENET_STD)
        with torch.inference_mode():
            out = self.model(pixel_values=torch.from_numpy(pixels).to(self.device, self.dtype))
            # pooler_output is DINOv2's layernormed CLS token: the image-level feature of the paper
            unit = torch.nn.functional.normalize(out.pooler_output.float(), dim=-1)
        return list(unit.cpu().numpy())

    def _free(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()


def load(spec: ModelSpec) -> Dinov2Embedder:
    """The DINOv2 embedder of ``spec``, loaded on first use and shared by every later call in this process."""
    if not isinstance(spec, ModelSpec) or spec.adapter != "dinov2":
        raise ValueError(f"spec: expected a dinov2 ModelSpec, got {spec!r}")
    with _LOCK:
        if spec not in _MODELS:
            _MODELS[spec] = _load(spec)
        return _MODELS[spec]


def _load(spec: ModelSpec) -> Dinov2Embedder:
    if not spec.source:
        raise runtime.ModelUnavailable(spec, "no model configured (set ONBRAND_DINOV2_MODEL)")
    if (Path(spec.source).is_absolute() or spec.source.startswith(".")) and not spec.local:  # a path: say so
        raise runtime.ModelUnavailable(spec, f"{spec.source} does not exist")
    dev = runtime.device(spec)
    dt = runtime.dtype(spec, dev)
    from transformers import Dinov2Model

    try:
        # output_loading_info=True gives (model, loading info); transformers types the model alone
        model, info = cast(
            "tuple[Any, dict[str, list[str]]]",
            Dinov2Model.from_pretrained(spec.source, dtype=dt, output_loading_info=True),
        )
    except Exception as exc:  # missing files, not cached offline, foreign or broken checkpoint
        raise runtime.ModelUnavailable(spec, f"{type(exc).__name__}: {exc}") from exc
    if info["missing_keys"]:  # transformers would run them randomly initialised: no embedding to trust
        raise runtime.ModelUnavailable(spec, f"not a DINOv2 checkpoint, missing {sorted(info['missing_keys'])[:5]}")
    # facebook/dinov2-* configs say 518 (their position table); option image_size (a multiple of the patch
    # size, e.g. 224 as in their processor) caps it, trading detail for ~5x less compute
    size = min(int(spec.option("image_size") or model.config.image_size), int(model.config.image_size))
    return Dinov2Embedder(spec, model.to(dev).eval(), dev, dt, int(model.config.hidden_size), size)


# --- shared with laion: input checks and preprocessing --------------------------------------


def check_images(images: Any, name: str) -> None:
    """ValueError naming ``name`` unless ``images`` is a list (or tuple) of non-empty PIL images."""
    if not isinstance(images, (list, tuple)):
        raise ValueError(f"{name}: expected a list of PIL images, got {type(images).__name__}")
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise ValueError(f"{name}[{i}]: expected a PIL image, got {type(image).__name__}")
        if image.width < 1 or image.height < 1:
            raise ValueError(f"{name}[{i}]: the image is empty ({image.width}x{image.height})")


def pixel_values(images: Sequence[Image.Image], size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """(n, 3, size, size) float32: shorter side resized to ``size`` (bicubic), centre-cropped, normalised."""
    out = np.empty((len(images), 3, size, size), np.float32)
    for i, image in enumerate(images):
        square = np.asarray(_square(to_rgb(image), size), np.float32) / 255.0
        out[i] = ((square - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).transpose(2, 0, 1)
    return out


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB; transparent parts over BACKDROP_GREY (dropping alpha would show whatever colour they hold)."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        grey = Image.new("RGBA", image.size, (*BACKDROP_GREY, 255))
        return Image.alpha_composite(grey, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _square(rgb: Image.Image, size: int) -> Image.Image:
    scale = size / min(rgb.size)
    w, h = (max(size, round(side * scale)) for side in rgb.size)
    resized = rgb.resize((w, h), Image.Resampling.BICUBIC)  # a no-op copy when already size x size
    left, top = (w - size) // 2, (h - size) // 2
    return resized.crop((left, top, left + size, top + size))
