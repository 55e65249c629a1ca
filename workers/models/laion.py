"""The LAION "improved aesthetic predictor" as the learned alternative to the classical aesthetic score.

A CLIP ViT-L/14 image embedding, L2-normalised, goes through a small MLP trained on human ratings
(SAC, LAION-Logos, AVA) and comes out as a score of roughly 1-10. Only CLIP's vision tower and its
projection are loaded, from a full ``CLIPModel`` checkpoint (openai/clip-vit-large-patch14) or a vision-only
one; the MLP weights (``ONBRAND_AESTHETIC_MLP``, .pth or .safetensors) must have the published layout:
``layers`` = Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear, Linear (state-dict keys layers.0,
.2, .4, .6, .7). Its widths are read from the weights; its input must match CLIP's projection dim.
Preprocessing is CLIP's, with PIL and numpy (no processor file, no torchvision).

torch and transformers are imported inside functions only; one model per ModelSpec per process.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from PIL import Image

from shared.model_specs import ModelSpec
from workers.checks import aesthetic
from workers.models import runtime
from workers.models.dinov2 import check_images, pixel_values

if TYPE_CHECKING:
    import torch
    from transformers import CLIPVisionModelWithProjection

BATCH_SIZE = 32  # 224 px ViT-L/14: 257 tokens per image
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's preprocessing constants
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LINEAR = (0, 2, 4, 6, 7)  # indices of the Linear layers in the published Sequential (dropouts between)
DROPOUT = {1: 0.2, 3: 0.2, 5: 0.1}  # index -> p; inactive in eval mode, kept so the layout is the published one
MLP_SETTING = "ONBRAND_AESTHETIC_MLP"
SCORE_MAX = 10.0

_MODELS: dict[ModelSpec, LaionAesthetic] = {}
_LOCK = threading.Lock()  # Celery thread pools may load concurrently; load each model once


@dataclass
class LaionAesthetic:
    spec: ModelSpec
    vision: Any  # transformers CLIPVisionModelWithProjection, on ``device`` in ``dtype``, eval mode
    mlp: Any  # torch.nn.ModuleDict({"layers": Sequential}), float32 on ``device``, eval mode
    device: torch.device
    dtype: torch.dtype
    image_size: int

    def score_many(self, images: list[Image.Image]) -> list[float]:
        """The predictor's raw output (roughly 1-10) for each image, in order."""
        check_images(images, "images")
        return runtime.in_batches(images, BATCH_SIZE, self._run, on_oom=self._free)

    def score(self, candidate: Image.Image, layer: Image.Image) -> dict[str, Any]:
        """As aesthetic.score: {"score": 0-10, "parts": {"laion": raw}, "method", "model"}.

        ``layer`` (the product, RGBA) is validated like the classical scorer's but not used: the
        predictor rates the whole picture.
        """
        aesthetic.check_inputs(candidate, layer)
        raw = self.score_many([candidate])[0]
        return {
            "score": round(min(max(raw, 0.0), SCORE_MAX), 4),
            "parts": {"laion": round(raw, 4)},
            "method": "laion",
            "model": self.spec.model,
        }

    def _run(self, chunk: Sequence[Image.Image]) -> list[float]:
        import torch

        pixels = pixel_values(chunk, self.image_size, CLIP_MEAN, CLIP_STD)
        with torch.inference_mode():
            embeds = self.vision(pixel_values=torch.from_numpy(pixels).to(self.device, self.dtype)).image_embeds
            # the MLP was trained on unit-length float32 embeddings
            unit = torch.nn.functional.normalize(embeds.float(), dim=-1)
            return [float(v) for v in self.mlp["layers"](unit)[:, 0].cpu()]

    def _free(self) -> None:
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()


def load(spec: ModelSpec) -> LaionAesthetic:
    """The aesthetic predictor of ``spec``, loaded on first use and shared by every later call in this process."""
    if not isinstance(spec, ModelSpec) or spec.adapter != "laion":
        raise ValueError(f"spec: expected a laion ModelSpec, got {spec!r}")
    with _LOCK:
        if spec not in _MODELS:
            _MODELS[spec] = _load(spec)
        return _MODELS[spec]


def _load(spec: ModelSpec) -> LaionAesthetic:
    if not spec.source:
        raise runtime.ModelUnavailable(spec, "no CLIP model configured (set ONBRAND_AESTHETIC_CLIP_MODEL)")
    if (Path(spec.source).is_absolute() or spec.source.startswith(".")) and not spec.local:  # a path: say so
        raise runtime.ModelUnavailable(spec, f"{spec.source} does not exist")
    mlp = _load_mlp(spec)  # first: cheap, and the likelier thing to be missing
    dev = runtime.device(spec)
    dt = runtime.dtype(spec, dev)
    vision = _load_vision(spec, dt)
    inputs, projection = mlp["layers"][0].in_features, int(vision.config.projection_dim)
    if inputs != projection:
        raise runtime.ModelUnavailable(
            spec,
            f"the aesthetic MLP ({MLP_SETTING}) takes {inputs}-dim embeddings but "
            f"the CLIP model projects to {projection}: use the MLP trained for this CLIP",
        )
    return LaionAesthetic(spec, vision.to(dev).eval(), mlp.to(dev).eval(), dev, dt, int(vision.config.image_size))


def _load_vision(spec: ModelSpec, dt: torch.dtype) -> Any:
    """CLIP's vision tower and projection, from a full CLIPModel checkpoint or a vision-only one."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(spec.source)
        vision_config = _vision_config(config)
        # output_loading_info=True gives (model, loading info); transformers types the model alone
        model, info = cast(
            "tuple[Any, dict[str, list[str]]]",
            _vision_class().from_pretrained(spec.source, config=vision_config, dtype=dt, output_loading_info=True),
        )
    except Exception as exc:  # missing files, not cached offline, foreign or broken checkpoint
        raise runtime.ModelUnavailable(spec, f"{type(exc).__name__}: {exc}") from exc
    if info["missing_keys"]:  # transformers would initialise them randomly: scores would mean nothing
        raise runtime.ModelUnavailable(
            spec, f"not a CLIP checkpoint with an image projection, missing {sorted(info['missing_keys'])[:5]}"
        )
    return model


def _vision_config(config: Any) -> Any:
    if config.model_type == "clip_vision_model":
        return config
    if config.model_type != "clip":
        raise ValueError(f"expected a CLIP checkpoint, got model_type {config.model_type!r}")
    vision = config.vision_config
    # CLIPModel projects to the top-level projection_dim; the nested vision config may hold a stale
    # default (512) that would make visual_projection the wrong shape.
    vision.projection_dim = config.projection_dim
    return vision


@functools.cache
def _vision_class() -> type[CLIPVisionModelWithProjection]:
    from transformers import CLIPVisionModelWithProjection

    class CLIPVisionTower(CLIPVisionModelWithProjection):
        # A full CLIPModel checkpoint also holds the text tower: expected here, not worth a load-report warning.
        _keys_to_ignore_on_load_unexpected = [r"^text_model\.", r"^text_projection\.", r"^logit_scale$"]

    return CLIPVisionTower


def _load_mlp(spec: ModelSpec) -> Any:
    path = spec.option("mlp")
    if not path:
        raise runtime.ModelUnavailable(spec, f"no aesthetic MLP configured (set {MLP_SETTING})")
    if not Path(path).is_file():
        raise runtime.ModelUnavailable(spec, f"{MLP_SETTING}: no file at {path}")
    try:
        return build_mlp(_read_state(Path(path)))
    except Exception as exc:  # unreadable, pickled objects (weights_only), another layout
        raise runtime.ModelUnavailable(spec, f"{MLP_SETTING}: {path}: {type(exc).__name__}: {exc}") from exc


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    import torch

    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"expected a state dict, got {type(state).__name__}")
    return state


def build_mlp(state: dict[str, torch.Tensor]) -> torch.nn.ModuleDict:
    """The published predictor with ``state`` loaded (strict); its widths are those of the weights."""
    from torch import nn

    missing = [f"layers.{i}.weight" for i in LINEAR if f"layers.{i}.weight" not in state]
    if missing:
        raise ValueError(f"not the improved-aesthetic-predictor layout (layers.{LINEAR}): no {missing[0]}")
    widths = [int(state["layers.0.weight"].shape[1])] + [int(state[f"layers.{i}.weight"].shape[0]) for i in LINEAR]
    if widths[-1] != 1:
        raise ValueError(f"the last layer has {widths[-1]} outputs, expected 1 (a score)")
    linears = iter(nn.Linear(a, b) for a, b in zip(widths, widths[1:], strict=False))
    layers = nn.Sequential(*(nn.Dropout(DROPOUT[i]) if i in DROPOUT else next(linears) for i in range(LINEAR[-1] + 1)))
    mlp = nn.ModuleDict({"layers": layers})  # the attribute name gives the published keys layers.N.*
    mlp.load_state_dict(state, strict=True)  # shapes of biases and of each layer's inputs checked here
    return mlp.float()
