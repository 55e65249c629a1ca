"""sd-inpaint generator: a diffusers inpainting pipeline paints the scene around the placed product.

The product is never generated: the mask is black on it (the model keeps it as context) and
white where the scene goes, and every pass ends with :func:`paste_back` at full canvas
resolution, so wherever the placed layer is opaque the output *is* the layer.

The model runs at a working size (the canvas fitted to ``resolution`` on its longer side,
both sides multiples of 8, which SD's VAE needs); the result is resized back to the canvas.
Two modes (spec option ``mode``):

- ``outpaint``: one pass everywhere outside the product.
- ``layered``: pass 1 paints the background with the background prompt; pass 2 repaints the
  band where the product meets its surface with the caption (contact, shadow, reflection);
  pass 3 repaints everything above that band with the background prompt. Passes 2 and 3
  start from the previous pass and only replace their band.

torch and diffusers are imported lazily (inside functions), so importing this module is free
for processes that never generate.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageFilter

from shared.model_specs import ModelSpec
from workers.imaging.composition import paste_back
from workers.models import runtime

if TYPE_CHECKING:
    import torch

MODES = {"outpaint": ("outpaint",), "layered": ("background", "ground", "upper")}
NEUTRAL = (128, 128, 128)  # what the scene starts from without a reference background
LAYER_STRENGTH = 0.75  # passes 2 and 3 keep a quarter of the previous pass: the scene stays one scene
GROUND_ABOVE = 0.15  # the ground band: this share of the canvas height above the product's bottom ...
GROUND_BELOW = 0.10  # ... to this share below it
KEEP_ALPHA = 128  # layer pixels at least this opaque are product to the model (mask black)
FEATHER = 0.01  # band seams fade over this share of the canvas height
REDUCING_GAP = 3.0  # model inputs shrink by box-reduce first, then LANCZOS: same look, a fraction of the time
MIN_CANVAS = 16

_CACHE: dict[ModelSpec, SdInpainter] = {}
_LOCK = threading.Lock()  # Celery thread pools may load concurrently


@dataclass(frozen=True)
class Job:
    """One candidate: a placed product layer, an optional reference background, a seed."""

    layer: Image.Image  # RGBA, canvas size: the placed product (composition.place)
    init: Image.Image | None  # RGB, canvas size: reference background (already cover-cropped), or None
    seed: int


@dataclass
class Output:
    image: Image.Image  # RGB, canvas size, product pasted back
    seed: int
    gpu_seconds: float  # this candidate's share of pipeline time, all passes
    passes: list[str]  # ["outpaint"] or ["background", "ground", "upper"]
    size: tuple[int, int]  # working size the model ran at


@dataclass(frozen=True)
class _Pass:
    name: str
    prompt: str
    negative: str
    strength: float


@dataclass
class _Work:
    """A job on its way through the passes: the canvas image so far (None before pass 1)."""

    job: Job
    image: Image.Image | None = None
    gpu_seconds: float = 0.0


# --- loading ----------------------------------------------------------------------------


def load(spec: ModelSpec) -> SdInpainter:
    """The inpainter for ``spec``, loaded once per worker process (later calls return the same one)."""
    _check_spec(spec)
    with _LOCK:
        if spec not in _CACHE:
            _CACHE[spec] = _load(spec)
        return _CACHE[spec]


def _check_spec(spec: ModelSpec) -> None:
    if not isinstance(spec, ModelSpec) or spec.adapter != "sd-inpaint":
        raise ValueError(f"spec: expected an sd-inpaint ModelSpec, got {spec!r}")
    if spec.option("mode", "outpaint") not in MODES:
        raise ValueError(f"spec: mode must be one of {sorted(MODES)}, got {spec.option('mode')!r}")


def _load(spec: ModelSpec) -> SdInpainter:
    dev = runtime.device(spec)
    pipe = _from_pretrained(spec, runtime.dtype(spec, dev))
    pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    if dev.type == "cuda":
        _tune_cuda(pipe, spec)
    runtime.log.info("sd-inpaint: loaded %s on %s", spec.source, dev)
    return SdInpainter(pipe, spec, dev)


def _from_pretrained(spec: ModelSpec, torch_dtype: torch.dtype) -> Any:
    try:
        from diffusers import AutoPipelineForInpainting

        # Picks the inpainting class from model_index.json: SD 1.5/2 and SDXL alike.
        return AutoPipelineForInpainting.from_pretrained(spec.source, **{_dtype_keyword(): torch_dtype})
    except Exception as exc:  # missing path, not cached offline, broken or foreign files
        raise runtime.ModelUnavailable(spec, f"{type(exc).__name__}: {exc}") from exc


def _dtype_keyword() -> str:
    """``dtype`` where diffusers has it (torch_dtype is deprecated there), ``torch_dtype`` before."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


def _tune_cuda(pipe: Any, spec: ModelSpec) -> None:
    import torch
    from diffusers.models.attention_processor import AttnProcessor2_0

    # SDPA is torch 2's default; set it anyway so a checkpoint saved with another processor
    # (xformers, sliced) cannot silently run the slow path.
    pipe.unet.set_attn_processor(AttnProcessor2_0())
    if spec.option("channels_last", False):
        pipe.unet.to(memory_format=torch.channels_last)
    if spec.option("torch_compile", False):
        pipe.unet = torch.compile(pipe.unet)


# --- generation -------------------------------------------------------------------------


class SdInpainter:
    """A loaded pipeline and the spec's knobs; :meth:`generate` paints candidates in batches."""

    def __init__(self, pipe: Any, spec: ModelSpec, dev: torch.device) -> None:
        _check_spec(spec)
        self.pipe = pipe  # callable like a diffusers inpainting pipeline (tests wrap it)
        self.spec = spec
        self.device = dev
        self.mode: str = spec.option("mode", "outpaint")
        self.steps = int(spec.option("steps", 30))
        self.guidance = float(spec.option("guidance", 7.5))
        self.strength = float(spec.option("strength", 0.85))
        self.resolution = int(spec.option("resolution", 512))
        self.batch_size = int(spec.option("batch_size", 4))
        self._lock = threading.Lock()  # a pipeline's scheduler keeps per-call state: one call at a time

    def generate(
        self, jobs: Sequence[Job], prompt: str, negative_prompt: str = "", background_prompt: str | None = None
    ) -> list[Output]:
        """One Output per job, in order. Jobs are grouped by (canvas size, has init) so that
        each pipeline call has uniform arguments, then run ``batch_size`` images a call."""
        _check_jobs(jobs)
        _check_prompts(prompt, negative_prompt, background_prompt)
        works = [_Work(job) for job in jobs]
        for group in _groups(works):
            for step in self._passes(group[0].job.init is not None, prompt, negative_prompt, background_prompt):
                self._run_pass(group, step)
        return [self._output(w) for w in works]

    def _output(self, work: _Work) -> Output:
        if work.image is None:  # every job is in a group and every group runs every pass
            raise RuntimeError("sd-inpaint: a job finished without a pass")
        return Output(
            work.image,
            work.job.seed,
            work.gpu_seconds,
            list(MODES[self.mode]),
            working_size(work.job.layer.size, self.resolution),
        )

    def _passes(self, has_init: bool, prompt: str, negative: str, background: str | None) -> list[_Pass]:
        # Without a reference there is nothing to keep of the grey start: strength 1.0.
        first = self.strength if has_init else 1.0
        scene = background or prompt
        prompts = {"outpaint": prompt, "background": scene, "ground": prompt, "upper": scene}
        return [
            _Pass(name, prompts[name], negative, first if i == 0 else LAYER_STRENGTH)
            for i, name in enumerate(MODES[self.mode])
        ]

    def _run_pass(self, group: list[_Work], step: _Pass) -> None:
        results = runtime.in_batches(
            group, self.batch_size, lambda chunk: self._call(chunk, step), on_oom=self._on_oom()
        )
        for work, (image, seconds) in zip(group, results, strict=True):
            work.image = _merge(work, image, step.name)
            work.gpu_seconds += seconds

    def _call(self, chunk: Sequence[_Work], step: _Pass) -> list[tuple[Image.Image, float]]:
        args = self._pipeline_args(chunk, step)
        with self._lock, runtime.timed(self.device) as took:
            images = self.pipe(**args).images
        share = took[0] / len(chunk)  # a batch costs one call: each candidate carries its share
        return [(image, share) for image in images]

    def _pipeline_args(self, chunk: Sequence[_Work], step: _Pass) -> dict[str, Any]:
        """The diffusers call for one batch: uniform arguments, per-image seeds (lists)."""
        import torch

        size = working_size(chunk[0].job.layer.size, self.resolution)
        n = len(chunk)
        return dict(
            prompt=[step.prompt] * n,
            negative_prompt=[step.negative] * n if step.negative else None,
            image=[_model_input(w, size) for w in chunk],
            mask_image=[pass_mask(w.job.layer, step.name, size) for w in chunk],
            height=size[1],
            width=size[0],
            strength=step.strength,
            num_inference_steps=_steps(self.steps, step.strength),
            guidance_scale=self.guidance,
            generator=[torch.Generator(self.device).manual_seed(w.job.seed) for w in chunk],
            output_type="pil",
        )

    def _on_oom(self) -> Any:
        import torch

        return torch.cuda.empty_cache if self.device.type == "cuda" else None


def _model_input(work: _Work, size: tuple[int, int]) -> Image.Image:
    """The pass's init image at working size: the previous pass, else (pass 1) the reference
    background or neutral grey with the product on it."""
    if work.image is not None:
        return work.image.resize(size, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
    job = work.job
    if job.init is None:
        scene = Image.new("RGBA", size, NEUTRAL)
    else:
        scene = job.init.convert("RGBA").resize(size, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
    # Composed at working size: PIL resizes RGBA premultiplied, so this is the canvas-size
    # composition shrunk, without a full-resolution paste-back the model would never see.
    product = job.layer.resize(size, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)
    return Image.alpha_composite(scene, product).convert("RGB")


def _groups(works: list[_Work]) -> list[list[_Work]]:
    groups: dict[tuple[tuple[int, int], bool], list[_Work]] = {}
    for work in works:
        groups.setdefault((work.job.layer.size, work.job.init is not None), []).append(work)
    return list(groups.values())


def _steps(steps: int, strength: float) -> int:
    """Steps to ask for so that at least one runs: diffusers runs int(steps * strength) and
    refuses zero (2 steps at strength 0.4 would)."""
    while int(steps * strength) < 1:
        steps += 1
    return steps


def _merge(work: _Work, generated: Image.Image, name: str) -> Image.Image:
    """The pass's result on the canvas: resized back, only its band replaced, product pasted."""
    layer = work.job.layer
    image = generated.convert("RGB").resize(layer.size, Image.Resampling.LANCZOS)
    if name in ("ground", "upper"):
        # The model also redraws what it was told to keep (VAE round trip): take only the band.
        top, bottom = pass_rows(np.asarray(layer.getchannel("A")), name)
        band = np.zeros((layer.height, 1), np.uint8)
        band[top:bottom] = 255
        # Whole rows: blur one column, then stretch it (a fraction of blurring the canvas).
        soft = Image.fromarray(band, "L").filter(ImageFilter.GaussianBlur(max(1.0, FEATHER * layer.height)))
        soft = soft.resize(layer.size, Image.Resampling.NEAREST)
        if work.image is None:  # passes 2-3 always follow pass 1, whose result this keeps outside the band
            raise RuntimeError(f"sd-inpaint: pass {name!r} ran before the background pass")
        image = Image.composite(image, work.image, soft)
    return paste_back(image, layer)


# --- geometry ---------------------------------------------------------------------------


def working_size(canvas: tuple[int, int], resolution: int) -> tuple[int, int]:
    """The canvas fitted to ``resolution`` on its longer side, both sides multiples of 8."""
    w, h = canvas
    scale = resolution / max(w, h)
    return max(8, int(w * scale / 8 + 0.5) * 8), max(8, int(h * scale / 8 + 0.5) * 8)


def pass_rows(alpha: np.ndarray, name: str) -> tuple[int, int]:
    """Canvas rows [top, bottom) a pass may repaint, from the layer's alpha."""
    height = alpha.shape[0]
    if name in ("outpaint", "background"):
        return 0, height
    bottom = int(np.flatnonzero((alpha == 255).any(axis=1)).max())  # the product's lowest opaque row
    top = max(0, bottom - round(GROUND_ABOVE * height))
    if name == "ground":
        return top, min(height, bottom + round(GROUND_BELOW * height) + 1)
    if name == "upper":
        return 0, top
    raise ValueError(f"name: unknown pass {name!r}")


def pass_mask(layer: Image.Image, name: str, size: tuple[int, int]) -> Image.Image:
    """The pipeline's mask at working size: white where the pass paints, black on the product."""
    alpha = layer.getchannel("A")
    top, bottom = pass_rows(np.asarray(alpha), name)
    scale = size[1] / layer.height
    mask = np.zeros((size[1], size[0]), np.uint8)
    mask[round(top * scale) : round(bottom * scale)] = 255
    small = np.asarray(alpha.resize(size, Image.Resampling.BILINEAR, reducing_gap=REDUCING_GAP))
    mask[small >= KEEP_ALPHA] = 0
    return Image.fromarray(mask, "L")


# --- input checks -----------------------------------------------------------------------


def _check_jobs(jobs: Sequence[Job]) -> None:
    if isinstance(jobs, str | bytes) or not isinstance(jobs, Sequence) or not jobs:
        raise ValueError(f"jobs: expected a non-empty sequence of Job, got {type(jobs).__name__}")
    for i, job in enumerate(jobs):
        if not isinstance(job, Job):
            raise ValueError(f"jobs[{i}]: expected a Job, got {type(job).__name__}")
        _check_job(job, f"jobs[{i}]")


def _check_job(job: Job, name: str) -> None:
    if not isinstance(job.layer, Image.Image) or job.layer.mode != "RGBA":
        raise ValueError(f"{name}.layer: expected an RGBA PIL image (the placed product layer)")
    if job.layer.getchannel("A").getextrema()[1] != 255:
        raise ValueError(f"{name}.layer: has no fully opaque pixel, there is no product in it")
    if min(job.layer.size) < MIN_CANVAS:
        raise ValueError(f"{name}.layer: canvas {job.layer.size} is smaller than {MIN_CANVAS} px")
    if job.init is not None and (not isinstance(job.init, Image.Image) or job.init.size != job.layer.size):
        raise ValueError(f"{name}.init: expected None or a PIL image of the layer's size {job.layer.size}")
    if isinstance(job.seed, bool) or not isinstance(job.seed, int) or not 0 <= job.seed < 2**63:
        raise ValueError(f"{name}.seed: expected an int in [0, 2**63), got {job.seed!r}")


def _check_prompts(prompt: str, negative_prompt: str, background_prompt: str | None) -> None:
    if not isinstance(prompt, str):
        raise ValueError(f"prompt: expected a str, got {type(prompt).__name__}")
    if not isinstance(negative_prompt, str):
        raise ValueError(f"negative_prompt: expected a str, got {type(negative_prompt).__name__}")
    if background_prompt is not None and not isinstance(background_prompt, str):
        raise ValueError(f"background_prompt: expected a str or None, got {type(background_prompt).__name__}")
