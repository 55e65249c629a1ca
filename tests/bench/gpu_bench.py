"""GPU throughput of the model stages, with random weights in the real architectures (issue 22).

Run on a CUDA machine from the repository root (the README's GPU section has the device command):

    python3 -m tests.bench.gpu_bench --out OUT_DIR [--budget-s 480] [--only REGEX] [--peak-tflops N]
    python3 -m tests.bench.gpu_bench --smoke --out OUT_DIR   # CPU, tiny configs: what the tests run

What it measures, in this order (cases the time budget cannot fit are recorded as skipped):

* the inpainting UNets of SD 1.5 and SDXL, built from their published configs (9 input channels;
  859.5 M and 2,567.5 M parameters, as the checkpoints), SDPA attention (diffusers' AttnProcessor2_0,
  as the sd-inpaint adapter sets it) and channels_last: the denoising loop as diffusers' inpainting
  pipelines run it (30 steps of the Euler scheduler; classifier-free guidance at the adapter's default
  7.5, so every UNet call sees the batch doubled), per dtype (fp16, bf16), eager and ``torch.compile``d,
  at batch 1/4/8 and 512/1024 px (latent 64/128). Reported: seconds per image, images/s, and the
  achieved TFLOP/s from a FlopCounterMode count of one UNet call, as a share of the GPU's dense bf16
  peak. Text encoders and the VAE are not in the figure (one call per image, not per step);
* the SAM ViT-H image encoder (1024 px) and DINOv2-L (224 px, what QC runs, and 518 px, its
  checkpoints' size) in fp16 and bf16 at batch 1 and 8, eager;
* the project's OOM-halving batcher (``workers.models.runtime.in_batches``, the adapters' own) on a
  deliberately too-large batch of SDXL UNet calls at 1024 px, under a memory cap (default 24 GiB,
  a 24 GB serving card; cuda's allocator raises a real OutOfMemoryError at the cap): the batch it
  settles on.

Why ``mode="reduce-overhead"`` (CUDA graphs, no autotuning) and not ``max-autotune-no-cudagraphs``:
at batch 1 an SD 1.5 UNet call is ~700 small kernels whose launch cost is a large share of a ~15 ms
step, which CUDA graphs remove, while max-autotune benchmarks Triton templates against cuBLAS/cuDNN
for every GEMM and convolution shape, minutes per shape that a 15-minute device lease cannot pay for
(and at these sizes cuBLAS/cuDNN are already near their best). The batch dimension is marked dynamic,
so one compile per model, dtype and resolution serves batch 1, 4 and 8 (CUDA graphs are recorded per
size); ``--compile-mode`` picks another mode.

Results are written after every case to OUT_DIR/gpu_bench.json and OUT_DIR/gpu_bench.md, so a run cut
off by its time limit still leaves what it measured. ``--smoke`` runs every case kind on the CPU with
tiny configs, 2 steps and 64/128 px, compiling with dynamo's ``eager`` backend (no code generation):
the plumbing, not the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

GUIDANCE = 7.5  # shared/config.py sd_guidance default: > 1, so diffusers doubles the batch (CFG)
COMPILE_MODE = "reduce-overhead"
DEFAULT_BUDGET_S = 480.0
# Dense (no sparsity) bf16 tensor-core peaks, TFLOP/s, from NVIDIA's datasheets; fp16 is the same on
# these parts. First match wins: the specific names come before the generic ones.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("GH200", 989.0),
    ("H200", 989.0),
    ("H100", 989.0),  # SXM, e.g. "NVIDIA H100 80GB HBM3"
    ("A100", 312.0),
    ("L40S", 362.0),
    ("L4", 121.0),
    ("A10", 125.0),
)
# What a case is assumed to cost before anything was measured (s, TFLOP/s): only for the skip decision.
ASSUMED_TFLOPS = {"cuda": 250.0, "cpu": 0.02}
ASSUMED_COMPILE_S = {"cuda": {"sd15": 100.0, "sdxl": 160.0}, "cpu": {"sd15": 15.0, "sdxl": 15.0}}


# ---------------------------------------------------------------- the models, as configs


@dataclass(frozen=True)
class UnetSpec:
    name: str
    title: str
    config: dict[str, Any]  # diffusers UNet2DConditionModel keyword arguments
    context_dim: int  # text hidden states per token (cross-attention)
    text_len: int  # tokens per prompt
    pooled_dim: int | None  # SDXL: pooled text embedding of added_cond_kwargs; None: no added conditioning
    resolutions: tuple[int, ...]  # px, in priority order (the published anchor first)


@dataclass(frozen=True)
class EncoderSpec:
    name: str
    title: str
    kind: str  # "sam" | "dinov2"
    config: dict[str, Any]
    sizes: tuple[int, ...]  # input px, in priority order


# stable-diffusion-v1-5/stable-diffusion-inpainting unet/config.json (the defaults it relies on omitted)
SD15 = UnetSpec(
    name="sd15",
    title="SD 1.5 inpainting",
    config=dict(
        sample_size=64,
        in_channels=9,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=768,
        attention_head_dim=8,
    ),
    context_dim=768,
    text_len=77,
    pooled_dim=None,
    resolutions=(512, 1024),
)
# diffusers/stable-diffusion-xl-1.0-inpainting-0.1 unet/config.json
SDXL = UnetSpec(
    name="sdxl",
    title="SDXL inpainting",
    config=dict(
        sample_size=128,
        in_channels=9,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10),
        attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,  # pooled text 1280 + 6 time ids x 256
    ),
    context_dim=2048,
    text_len=77,
    pooled_dim=1280,
    resolutions=(1024, 512),
)
# facebook/sam-vit-huge vision_config
SAM_H = EncoderSpec(
    name="sam-vit-h",
    title="SAM ViT-H image encoder",
    kind="sam",
    config=dict(
        hidden_size=1280,
        num_hidden_layers=32,
        num_attention_heads=16,
        mlp_dim=5120,
        global_attn_indexes=[7, 15, 23, 31],
        image_size=1024,
        patch_size=16,
        window_size=14,
        output_channels=256,
    ),
    sizes=(1024,),
)
# facebook/dinov2-large
DINOV2_L = EncoderSpec(
    name="dinov2-l",
    title="DINOv2-L",
    kind="dinov2",
    config=dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, patch_size=14, image_size=518),
    sizes=(224, 518),  # 224: what QC runs (shared/model_specs.py); 518: the checkpoints' own size
)

# --smoke: the same kinds of model, small enough for a CPU test.
SD15_TINY = UnetSpec(
    name="sd15",
    title="SD 1.5-shaped (tiny)",
    config=dict(
        sample_size=8,
        in_channels=9,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    ),
    context_dim=32,
    text_len=8,
    pooled_dim=None,
    resolutions=(32,),
)
SDXL_TINY = UnetSpec(
    name="sdxl",
    title="SDXL-shaped (tiny)",
    config=dict(
        sample_size=8,
        in_channels=9,
        out_channels=4,
        layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        cross_attention_dim=32,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=80,  # 32 + 6 x 8
    ),
    context_dim=32,
    text_len=8,
    pooled_dim=32,
    resolutions=(32,),
)
SAM_TINY = EncoderSpec(
    name="sam-vit-h",
    title="SAM-shaped (tiny)",
    kind="sam",
    config=dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        mlp_dim=64,
        global_attn_indexes=[1],
        image_size=64,
        patch_size=16,
        window_size=2,
        output_channels=32,
        num_pos_feats=16,
    ),
    sizes=(64,),
)
DINOV2_TINY = EncoderSpec(
    name="dinov2-l",
    title="DINOv2-shaped (tiny)",
    kind="dinov2",
    config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, patch_size=14, image_size=56),
    sizes=(28,),
)


@dataclass(frozen=True)
class Profile:
    unets: tuple[UnetSpec, ...]
    encoders: tuple[EncoderSpec, ...]
    steps: int
    batches: tuple[int, ...]
    encoder_batches: tuple[int, ...]
    oom_model: UnetSpec
    oom_resolution: int
    compiled: tuple[tuple[str, str], ...]  # (model, dtype) pairs compiled; --smoke: one dynamo capture
    min_time_s: float  # a loop shorter than this is repeated (up to 3 times), the median reported


EVERY = tuple((m, d) for m in ("sd15", "sdxl") for d in ("bf16", "fp16"))
FULL = Profile((SD15, SDXL), (SAM_H, DINOV2_L), 30, (1, 4, 8), (1, 8), SDXL, 1024, EVERY, 1.0)
SMOKE = Profile(
    (SD15_TINY, SDXL_TINY), (SAM_TINY, DINOV2_TINY), 2, (1, 2), (1, 2), SDXL_TINY, 32, (("sdxl", "bf16"),), 0.0
)


# ---------------------------------------------------------------- the plan: cases in priority order


@dataclass(frozen=True)
class Case:
    id: str
    kind: str  # "unet" | "encoder" | "oom"
    model: str
    px: int = 0
    batch: int = 0
    dtype: str = ""
    compiled: bool = False


def plan(profile: Profile) -> list[Case]:
    """Every case, the most telling first: whatever the budget cuts is the tail.

    1. eager bf16 at each model's anchor resolution; 2. the encoders and the OOM batcher (cheap);
    3. compiled bf16 at the anchors (the published figures are compiled); 4. eager fp16 at the anchors;
    5. the other resolution, eager then compiled; 6. compiled fp16.
    """

    def unet(spec: UnetSpec, px: int, dtype: str, compiled: bool) -> list[Case]:
        mode = "compiled" if compiled else "eager"
        return [
            Case(f"unet/{spec.name}/{px}/b{b}/{dtype}/{mode}", "unet", spec.name, px, b, dtype, compiled)
            for b in profile.batches
        ]

    def at(rank: int, dtype: str, compiled: bool) -> list[Case]:
        specs = [s for s in profile.unets if rank < len(s.resolutions)]
        specs = [s for s in specs if not compiled or (s.name, dtype) in profile.compiled]
        return [c for s in specs for c in unet(s, s.resolutions[rank], dtype, compiled)]

    encoders = [
        Case(f"encoder/{e.name}/{px}/b{b}/{dt}", "encoder", e.name, px, b, dt)
        for e in profile.encoders
        for px in e.sizes
        for dt in ("fp16", "bf16")
        for b in profile.encoder_batches
    ]
    name, px = profile.oom_model.name, profile.oom_resolution
    oom = Case(f"oom/{name}/{px}/fp16", "oom", name, px, 0, "fp16")  # fp16: the adapters' CUDA default
    cases = at(0, "bf16", False) + encoders + [oom] + at(0, "bf16", True) + at(0, "fp16", False)
    cases += at(1, "bf16", False) + at(1, "fp16", False) + at(1, "bf16", True)
    return cases + at(0, "fp16", True) + at(1, "fp16", True)


# ---------------------------------------------------------------- timing helpers


class CaseTimeout(BaseException):
    """Raised by SIGALRM when a case runs past its share of the budget (a compile that never ends).
    A BaseException: the libraries' own ``except Exception`` (and in_batches') must not swallow it."""


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise CaseTimeout


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """CaseTimeout in the main thread after ``seconds``; a no-op where there is no SIGALRM."""
    if not hasattr(signal, "setitimer"):
        yield
        return
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, max(0.01, seconds))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def sync(dev: Any) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(dev: Any, run: Callable[[], Any]) -> tuple[float, Any]:
    """(wall seconds, result) of ``run``, the device's queue drained before and after (CUDA is asynchronous)."""
    sync(dev)
    start = time.perf_counter()
    result = run()
    sync(dev)
    return time.perf_counter() - start, result


def count_flops(run: Callable[[], Any]) -> float:
    """FLOPs of one call: matmuls, convolutions and attention as torch's FlopCounterMode counts them."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        run()
    return float(counter.get_total_flops())


def peak_tflops(dev: Any, override: float | None) -> tuple[float | None, str]:
    import torch

    if override:
        return override, "--peak-tflops"
    if dev.type != "cuda":
        return None, "no tensor-core peak for a CPU (pass --peak-tflops)"
    name = torch.cuda.get_device_name(dev)
    for key, value in PEAK_TFLOPS:
        if key in name:
            return value, f"dense bf16 peak of {key} (NVIDIA datasheet)"
    return None, f"unknown GPU {name!r} (pass --peak-tflops)"


# ---------------------------------------------------------------- the benchmark


@dataclass
class Bench:
    profile: Profile
    out: Path
    budget_s: float
    compile_mode: str
    compile_cap_s: float
    peak_override: float | None
    oom_cap_gib: float
    smoke: bool
    only: str | None
    started: float = field(default_factory=time.monotonic)
    results: list[dict[str, Any]] = field(default_factory=list)
    env: dict[str, Any] = field(default_factory=dict)
    _models: dict[str, Any] = field(default_factory=dict)  # "unet:sd15:bf16" -> module (one per dtype)
    _compiled: dict[tuple[str, str], Any] = field(default_factory=dict)
    _compiled_shapes: set[tuple[str, str, int]] = field(default_factory=set)
    _compile_s: dict[str, float] = field(default_factory=dict)  # measured first compile per model
    _flops: dict[tuple[str, int], float] = field(default_factory=dict)  # one image (CFG pair), one step
    _rates: dict[str, list[float]] = field(default_factory=dict)  # measured TFLOP/s per model
    _failed_compiles: dict[tuple[str, str], str] = field(default_factory=dict)  # (model, dtype) -> case id

    def __post_init__(self) -> None:
        import torch
        import torch._dynamo

        self.dev = torch.device("cpu" if self.smoke or not torch.cuda.is_available() else "cuda")
        self.peak, self.peak_source = peak_tflops(self.dev, self.peak_override)
        if self.dev.type == "cuda":
            torch.backends.cudnn.benchmark = True  # what a long-running worker would want: fastest conv algos
        # Dynamo's default of 8 compiled variants per function is few for 2 models x 2 dtypes x 2 sizes;
        # past it, calls would silently run eager and be reported as compiled.
        torch._dynamo.config.cache_size_limit = 64
        self.env = self._environment()

    # -- driving ---------------------------------------------------------------------------

    def run(self) -> list[dict[str, Any]]:
        for case in plan(self.profile):
            if self.only and not re.search(self.only, case.id):
                continue
            self.results.append(self._run_case(case))
            self.write()
            self._log(self.results[-1])
        self.write()
        return self.results

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def _run_case(self, case: Case) -> dict[str, Any]:
        base = {"id": case.id, "kind": case.kind, "model": case.model, "px": case.px, "batch": case.batch}
        base |= {"dtype": case.dtype, "compiled": case.compiled}
        failed = self._failed_compiles.get((case.model, case.dtype)) if case.compiled else None
        if failed:  # another compile of it would fail (or overrun) the same way, at the same cost
            return base | {"status": "skipped", "reason": f"its compile failed in {failed}"}
        estimate = self._estimate(case)
        if estimate > self.left():
            return base | {"status": "skipped", "reason": f"budget: {self.left():.0f} s left, needs ~{estimate:.0f} s"}
        cap = self.compile_cap_s + 60 if case.compiled else max(60.0, 4 * estimate)
        began = time.monotonic()
        try:
            with deadline(min(cap, self.left())):
                metrics = self._measure(case)
            return base | {"status": "ok", **metrics, "case_s": round(time.monotonic() - began, 2)}
        except CaseTimeout:
            self._after_failure(case)
            return base | {"status": "timeout", "reason": f"stopped after {time.monotonic() - began:.0f} s"}
        except Exception as exc:  # noqa: BLE001 - one broken case must not lose the others
            self._after_failure(case)
            tail = traceback.format_exc().strip().splitlines()[-3:]
            return base | {"status": "error", "reason": f"{type(exc).__name__}: {exc}"[:500], "trace": tail}

    def _measure(self, case: Case) -> dict[str, Any]:
        if case.kind == "unet":
            return self.unet_case(self._unet_spec(case.model), case.px, case.batch, case.dtype, case.compiled)
        if case.kind == "encoder":
            spec = next(e for e in self.profile.encoders if e.name == case.model)
            return self.encoder_case(spec, case.px, case.batch, case.dtype)
        return self.oom_case(self._unet_spec(case.model), case.px, case.dtype)

    def _after_failure(self, case: Case) -> None:
        import torch

        if case.compiled:  # an interrupted or failed compile may leave dynamo half-way: start clean
            self._failed_compiles[(case.model, case.dtype)] = case.id
            torch._dynamo.reset()
            self._compiled.clear()
            self._compiled_shapes.clear()
        if self.dev.type == "cuda":
            torch.cuda.empty_cache()

    def _estimate(self, case: Case) -> float:
        """Seconds the case should take: FLOPs over the model's measured (else an assumed) rate, plus
        a compile when its model, dtype and resolution have none yet."""
        if case.kind == "encoder":
            return 5.0
        if case.kind == "oom":
            return 30.0 if self.dev.type == "cuda" else 5.0
        spec = self._unet_spec(case.model)
        flops = self._flops.get((spec.name, case.px)) or assumed_flops(spec, case.px, self.smoke)
        measured = self._rates.get(spec.name)
        rate = statistics.median(measured) if measured else ASSUMED_TFLOPS[self.dev.type]
        loop = flops * case.batch * self.profile.steps / (rate * 1e12)
        # the warm-up's 2-3 steps, then the loop: repeated up to 3 times while they take under a second
        seconds = loop * 3 / self.profile.steps + max(loop, min(1.0, 3 * loop)) + 3.0
        if case.compiled and (spec.name, case.dtype, case.px) not in self._compiled_shapes:
            seconds += self._compile_s.get(spec.name, ASSUMED_COMPILE_S[self.dev.type][spec.name])
        return seconds

    def _unet_spec(self, name: str) -> UnetSpec:
        return next(u for u in self.profile.unets if u.name == name)

    # -- UNets -----------------------------------------------------------------------------

    def unet(self, spec: UnetSpec, dtype_name: str) -> Any:
        """The spec's UNet with random weights, SDPA, channels_last, in the dtype; one instance per dtype,
        never cast in place (compiled code and CUDA graphs hold on to its parameters)."""
        import torch

        key = f"unet:{spec.name}:{dtype_name}"
        if key not in self._models:
            torch.manual_seed(0)
            module = build_unet(spec, self.dev)
            self._models[key] = module.to(dtype=_dtype(dtype_name), memory_format=torch.channels_last)
        return self._models[key]

    def drop_models(self) -> None:
        import torch
        import torch._dynamo

        self._models.clear()
        self._compiled.clear()
        self._compiled_shapes.clear()
        torch._dynamo.reset()
        if self.dev.type == "cuda":
            torch.cuda.empty_cache()

    def _denoiser(self, spec: UnetSpec, dtype_name: str, compiled: bool) -> Any:
        import torch

        module = self.unet(spec, dtype_name)
        if not compiled:
            return module
        key = (spec.name, dtype_name)
        if key not in self._compiled:
            if self.dev.type == "cuda":
                self._compiled[key] = torch.compile(module, mode=self.compile_mode)
            else:  # smoke: dynamo's graph capture only; inductor's CPU codegen takes minutes on 2 cores
                self._compiled[key] = torch.compile(module, backend="eager")
        return self._compiled[key]

    def flops_per_image_step(self, spec: UnetSpec, px: int) -> float:
        """FLOPs of one UNet call for one image: the CFG pair (batch 2)."""
        if (spec.name, px) not in self._flops:
            self._flops[(spec.name, px)] = unet_flops(spec, px)
        return self._flops[(spec.name, px)]

    def unet_case(self, spec: UnetSpec, px: int, batch: int, dtype_name: str, compiled: bool) -> dict[str, Any]:
        import torch
        from torch._dynamo.utils import counters

        flops = self.flops_per_image_step(spec, px) * batch
        denoiser = self._denoiser(spec, dtype_name, compiled)
        inputs = unet_inputs(spec, px, batch, _dtype(dtype_name), self.dev)
        graphs = compiled and self.dev.type == "cuda" and "reduce-overhead" in self.compile_mode
        graphs_before = counters["stats"]["unique_graphs"]
        skips_before = counters["inductor"]["cudagraph_skips"]
        self._reset_peak()
        with torch.no_grad():
            # Warm-up: the compile (once per model, dtype, resolution), CUDA graph recording, cuDNN's
            # algorithm search; 3 calls so that a CUDA graph is recorded and replayed once.
            warm_s, _ = timed(self.dev, lambda: denoise(denoiser, inputs, 3 if compiled else 2, compiled, graphs))
            loops: list[float] = []
            while not loops or (
                sum(loops) < self.profile.min_time_s and len(loops) < 3 and self.left() > 2 * loops[-1] + 5
            ):
                took, latents = timed(self.dev, lambda: denoise(denoiser, inputs, self.profile.steps, compiled, graphs))
                loops.append(took)
        if compiled:
            key = (spec.name, dtype_name, px)
            if key not in self._compiled_shapes and spec.name not in self._compile_s:
                self._compile_s[spec.name] = warm_s
            self._compiled_shapes.add(key)
        loop_s = statistics.median(loops)
        achieved = flops * self.profile.steps / loop_s / 1e12
        if not compiled:
            self._rates.setdefault(spec.name, []).append(achieved)
        return {
            "steps": self.profile.steps,
            "unet_batch": 2 * batch,
            "loop_s": sig(loop_s),
            "loops": [round(x, 4) for x in loops],
            "s_per_image": sig(loop_s / batch),
            "images_per_s": sig(batch / loop_s),
            "gflop_per_unet_call": sig(flops / 1e9),
            "tflops": sig(achieved),
            "peak_share": sig(achieved / self.peak) if self.peak else None,
            "warmup_s": round(warm_s, 2),
            "peak_mem_gib": self._peak_gib(),
            "finite": bool(torch.isfinite(latents).all()),
            "dynamo_graphs_compiled": counters["stats"]["unique_graphs"] - graphs_before,  # 0: no compile ran
            "cudagraph_skips": counters["inductor"]["cudagraph_skips"] - skips_before,  # > 0: ran without graphs
        }

    # -- encoders --------------------------------------------------------------------------

    def encoder(self, spec: EncoderSpec, dtype_name: str) -> Any:
        """SAM's vision encoder or DINOv2 with random weights, SDPA attention, in the dtype."""
        import torch

        key = f"encoder:{spec.name}:{dtype_name}"
        if key not in self._models:
            if any(k.startswith("unet:") for k in self._models):
                self.drop_models()  # the UNets' cases come later, built again in seconds
            torch.manual_seed(0)
            self._models[key] = build_encoder(spec, self.dev).to(_dtype(dtype_name))
        return self._models[key]

    def encoder_case(self, spec: EncoderSpec, px: int, batch: int, dtype_name: str) -> dict[str, Any]:
        import torch

        dtype = _dtype(dtype_name)
        model = self.encoder(spec, dtype_name)
        pixels = torch.randn(batch, 3, px, px, device=self.dev, dtype=dtype)
        self._reset_peak()
        with torch.no_grad():
            flops = encoder_flops(spec, px) * batch
            for _ in range(2):
                model(pixel_values=pixels)
            calls: list[float] = []
            while not calls or (sum(calls) < self.profile.min_time_s and len(calls) < 20):
                calls.append(timed(self.dev, lambda: model(pixel_values=pixels))[0])
        seconds = statistics.median(calls)
        achieved = flops / seconds / 1e12
        return {
            "calls": len(calls),
            "s_per_batch": sig(seconds),
            "images_per_s": sig(batch / seconds),
            "gflop_per_image": sig(flops / batch / 1e9),
            "tflops": sig(achieved),
            "peak_share": sig(achieved / self.peak) if self.peak else None,
            "attention": str(model.config._attn_implementation),
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
            "peak_mem_gib": self._peak_gib(),
        }

    # -- the OOM-halving batcher -------------------------------------------------------------

    def oom_case(self, spec: UnetSpec, px: int, dtype_name: str) -> dict[str, Any]:
        """The adapters' in_batches over one-step UNet calls, asked for a batch that cannot fit under
        the cap; on CUDA the cap is the caching allocator's (a real OutOfMemoryError), on the CPU there
        is none, so --smoke raises one above 3 images (marked simulated)."""
        import torch

        from workers.models import runtime  # the project's batcher: imports shared/ (pydantic and friends)

        self.drop_models()
        dtype = _dtype(dtype_name)
        module = self.unet(spec, dtype_name)
        tried: list[tuple[int, str, float]] = []
        cuda = self.dev.type == "cuda"
        limit = None if cuda else 3

        def call(n: int) -> None:
            inputs = unet_inputs(spec, px, n, dtype, self.dev)
            if limit is not None and n > limit:
                raise torch.OutOfMemoryError(f"simulated: {n} images over the smoke cap of {limit}")
            with torch.no_grad():
                module(*inputs.call_args(), **inputs.call_kwargs())

        def run(chunk: list[int]) -> list[float]:
            began = time.perf_counter()
            try:
                call(len(chunk))
                sync(self.dev)
            except Exception as exc:
                tried.append((len(chunk), "oom" if runtime.is_oom(exc) else type(exc).__name__, 0.0))
                raise
            tried.append((len(chunk), "ok", time.perf_counter() - began))
            return [tried[-1][2] / len(chunk)] * len(chunk)

        cudnn = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = False  # no algorithm search (and its workspaces) for each size tried
        try:
            per_image, base, cap = self._oom_probe(call) if cuda else (0.0, 0.0, 0.0)
            fits = (cap - base) / per_image if per_image > 0 else 1.5
            # 2.5x what should fit, as a power of two: at least one halving, a real OOM on the way (at
            # most 512 images: a probe that misread the memory must not cost minutes of UNet calls)
            requested = min(512, max(8, 2 ** math.ceil(math.log2(2.5 * max(fits, 1.0)))))
            if cuda:
                torch.cuda.empty_cache()  # the probes' cached blocks: the cap counts what is reserved
                total = torch.cuda.get_device_properties(self.dev).total_memory
                torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), self.dev)
            began = time.perf_counter()
            out = runtime.in_batches(
                list(range(requested)), requested, run, on_oom=torch.cuda.empty_cache if cuda else None
            )
            took = time.perf_counter() - began
        finally:
            torch.backends.cudnn.benchmark = cudnn
            if cuda:
                torch.cuda.set_per_process_memory_fraction(1.0, self.dev)
                torch.cuda.empty_cache()
        self.drop_models()
        settled = [n for n, outcome, _ in tried if outcome == "ok"]
        return {
            "requested_batch": requested,
            "settled_batch": settled[0] if settled else None,
            "ooms": sum(outcome == "oom" for _, outcome, _ in tried),
            "tried": [f"{n}:{outcome}" for n, outcome, _ in tried],
            "delivered": len(out),
            "seconds": round(took, 2),
            "cap": f"{cap / 2**30:.1f} GiB (allocator fraction)" if cuda else f"simulated: {limit} images",
            "predicted_fit": round(fits, 1) if cuda else None,
            "per_image_gib": round(per_image / 2**30, 3) if cuda else None,
            "simulated": not cuda,
        }

    def _oom_probe(self, call: Callable[[int], None]) -> tuple[float, float, float]:
        """(bytes per image of a UNet call's peak, bytes held before it, the cap in bytes)."""
        import torch

        base = float(torch.cuda.memory_allocated(self.dev))
        peaks = []
        for n in (1, 2):
            torch.cuda.reset_peak_memory_stats(self.dev)
            call(n)
            peaks.append(float(torch.cuda.max_memory_allocated(self.dev)))
        return max(1.0, peaks[1] - peaks[0]), base, self.oom_cap_gib * 2**30

    # -- bookkeeping -------------------------------------------------------------------------

    def _reset_peak(self) -> None:
        import torch

        if self.dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.dev)

    def _peak_gib(self) -> float | None:
        import torch

        if self.dev.type != "cuda":
            return None
        return round(torch.cuda.max_memory_allocated(self.dev) / 2**30, 2)

    def _environment(self) -> dict[str, Any]:
        import platform

        import torch

        env: dict[str, Any] = {
            "device": torch.cuda.get_device_name(self.dev) if self.dev.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if self.dev.type == "cuda" else None,
            "python": platform.python_version(),
            "cpu_threads": torch.get_num_threads(),
        }
        for package in ("diffusers", "transformers"):
            try:
                env[package] = __import__(package).__version__
            except Exception as exc:  # noqa: BLE001 - recorded; the cases that need it record their error
                env[package] = f"unavailable: {type(exc).__name__}"
        if self.dev.type == "cuda":
            props = torch.cuda.get_device_properties(self.dev)
            env |= {"sms": props.multi_processor_count, "memory_gib": round(props.total_memory / 2**30, 1)}
        return env

    def summary(self) -> dict[str, Any]:
        return {
            "smoke": self.smoke,
            "env": self.env,
            "settings": {
                "steps": self.profile.steps,
                "guidance": GUIDANCE,
                "budget_s": self.budget_s,
                "compile_mode": self.compile_mode if self.dev.type == "cuda" else "backend=eager (smoke)",
                "compile_cap_s": self.compile_cap_s,
                "peak_tflops": self.peak,
                "peak_source": self.peak_source,
                "oom_cap_gib": self.oom_cap_gib,
                "only": self.only,
            },
            "elapsed_s": round(time.monotonic() - self.started, 1),
            "cases": self.results,
        }

    def write(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        data = self.summary()
        for name, text in (("gpu_bench.json", json.dumps(data, indent=1)), ("gpu_bench.md", markdown(data))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text + "\n")
            tmp.replace(self.out / name)  # atomic: a run killed mid-write keeps the last whole file

    def _log(self, result: dict[str, Any]) -> None:
        keys = ("images_per_s", "s_per_image", "tflops", "peak_share", "warmup_s", "settled_batch", "reason")
        shown = " ".join(f"{k}={result[k]}" for k in keys if result.get(k) is not None)
        print(f"[{time.monotonic() - self.started:6.1f}s] {result['id']}: {result['status']} {shown}", flush=True)


# ---------------------------------------------------------------- the denoising loop


@dataclass
class UnetInputs:
    """A batch as diffusers' inpainting pipelines feed the UNet: latents, the (CFG-doubled) mask and
    masked-image latents, text states for the unconditional and conditional halves, SDXL's added
    conditioning, and the pipeline's Euler scheduler."""

    latents: Any
    mask: Any
    masked: Any
    context: Any
    added: dict[str, Any] | None
    scheduler: Any

    def call_args(self) -> tuple[Any, ...]:
        import torch

        x = torch.cat([torch.cat([self.latents] * 2), self.mask, self.masked], dim=1)
        return x, self.scheduler.timesteps[0]

    def call_kwargs(self) -> dict[str, Any]:
        return {"encoder_hidden_states": self.context, "added_cond_kwargs": self.added, "return_dict": False}


def unet_inputs(spec: UnetSpec, px: int, batch: int, dtype: Any, dev: Any) -> UnetInputs:
    import torch
    from diffusers import EulerDiscreteScheduler

    side = px // 8  # the VAE's downscale
    gen = None if dev.type == "meta" else torch.Generator(dev).manual_seed(batch)

    def noise(*shape: int) -> Any:
        return torch.randn(*shape, generator=gen, device=dev, dtype=dtype)

    pair = 2 * batch  # classifier-free guidance: unconditional and conditional halves
    added = None
    if spec.pooled_dim:
        size = torch.tensor([px, px, 0, 0, px, px], device=dev, dtype=dtype)  # original, crop, target size
        added = {"text_embeds": noise(pair, spec.pooled_dim), "time_ids": size.repeat(pair, 1)}
    # SD 1.5 and SDXL inpainting scheduler settings (scheduler_config.json)
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1, timestep_spacing="leading"
    )
    scheduler.set_timesteps(1, device="cpu" if dev.type == "meta" else dev)  # meta: for a FLOP count only
    mask = (torch.rand(pair, 1, side, side, generator=gen, device=dev) > 0.5).to(dtype)
    return UnetInputs(
        noise(batch, 4, side, side),
        mask,
        noise(pair, 4, side, side),
        noise(pair, spec.text_len, spec.context_dim),
        added,
        scheduler,
    )


def build_unet(spec: UnetSpec, dev: Any) -> Any:
    """UNet2DConditionModel from the spec's config, random weights, SDPA attention (what
    sd_inpaint._tune_cuda sets), initialised where it runs: seconds on a GPU, not minutes of CPU init."""
    import torch
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0

    with torch.device(dev):
        module = UNet2DConditionModel(**spec.config)
    module.set_attn_processor(AttnProcessor2_0())
    return module.eval()


def build_encoder(spec: EncoderSpec, dev: Any) -> Any:
    """SAM's vision encoder (SamVisionModel) or Dinov2Model from the spec's config, SDPA attention."""
    import torch
    from transformers import Dinov2Config, Dinov2Model, SamVisionConfig, SamVisionModel

    with torch.device(dev):
        if spec.kind == "sam":
            return SamVisionModel(SamVisionConfig(**spec.config, attn_implementation="sdpa")).eval()
        return Dinov2Model(Dinov2Config(**spec.config, attn_implementation="sdpa")).eval()


def unet_flops(spec: UnetSpec, px: int) -> float:
    """FLOPs of one UNet call for one image's CFG pair, counted on a meta-device twin: the same count
    whichever attention kernel the GPU picks, and no memory or time spent on it."""
    import torch

    meta = torch.device("meta")
    module, inputs = build_unet(spec, meta), unet_inputs(spec, px, 1, torch.float32, meta)
    return count_flops(lambda: module(*inputs.call_args(), **inputs.call_kwargs()))


def encoder_flops(spec: EncoderSpec, px: int) -> float:
    """FLOPs of one image through the encoder, counted on a meta-device twin."""
    import torch

    meta = torch.device("meta")
    model = build_encoder(spec, meta)
    return count_flops(lambda: model(pixel_values=torch.zeros(1, 3, px, px, device=meta)))


def denoise(unet: Any, inputs: UnetInputs, steps: int, compiled: bool, graphs: bool) -> Any:
    """``steps`` UNet calls as StableDiffusion(XL)InpaintPipeline's loop makes them (strength 1.0)."""
    import torch

    scheduler = inputs.scheduler
    scheduler.set_timesteps(steps, device=inputs.latents.device)
    latents = inputs.latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x = scheduler.scale_model_input(torch.cat([latents] * 2), t)
        x = torch.cat([x, inputs.mask, inputs.masked], dim=1)
        if compiled:
            for tensor in (x, inputs.context, *(inputs.added or {}).values()):
                torch._dynamo.maybe_mark_dynamic(tensor, 0)  # one compile for every batch size
        if graphs:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's outputs are consumed: reuse them
        noise = unet(x, t, encoder_hidden_states=inputs.context, added_cond_kwargs=inputs.added, return_dict=False)[0]
        uncond, cond = noise.chunk(2)
        noise = uncond + GUIDANCE * (cond - uncond)
        latents = scheduler.step(noise, t, latents, return_dict=False)[0]
    return latents


def sig(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant digits: a CPU smoke run's 0.0004 TFLOP/s must not read as 0."""
    return float(f"{x:.{digits}g}")


def _dtype(name: str) -> Any:
    import torch

    return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[name]


def assumed_flops(spec: UnetSpec, px: int, smoke: bool) -> float:
    """One image's CFG pair per step, before it is counted: the FlopCounterMode figures of the full
    configs (SD 1.5: 1.61 / 9.35 TFLOP at 512 / 1024 px; SDXL: 3.18 / 13.5)."""
    if smoke:
        return 1e8
    table = {("sd15", 512): 1.61e12, ("sd15", 1024): 9.35e12, ("sdxl", 512): 3.18e12, ("sdxl", 1024): 13.5e12}
    return table.get((spec.name, px), 13.5e12 * (px / 1024) ** 2)


# ---------------------------------------------------------------- report


def markdown(data: dict[str, Any]) -> str:
    env, settings, cases = data["env"], data["settings"], data["cases"]
    peak = settings["peak_tflops"]
    lines = [
        f"GPU bench on {env['device']} (torch {env['torch']}, CUDA {env['cuda']}, diffusers {env.get('diffusers')}, "
        f"transformers {env.get('transformers')}); {data['elapsed_s']} s of a {settings['budget_s']:.0f} s budget; "
        f"peak {peak} TFLOP/s ({settings['peak_source']}); compile: {settings['compile_mode']}"
        + (" — SMOKE: tiny configs on the CPU, not a measurement" if data["smoke"] else ""),
        "",
        f"Inpainting UNet, denoising loop of {settings['steps']} steps, CFG {settings['guidance']} (UNet batch = 2 x "
        "images), SDPA, channels_last; text encoders and VAE not included:",
        "",
        "| model | px | batch | dtype | compile | s / image | images / s | loop s | TFLOP/s | % of peak | warm-up s "
        "| GPU mem GiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in (c for c in cases if c["kind"] == "unet" and c["status"] == "ok"):
        share = f"{100 * c['peak_share']:.1f}" if c["peak_share"] is not None else "-"
        lines.append(
            f"| {c['model']} | {c['px']} | {c['batch']} | {c['dtype']} | {'yes' if c['compiled'] else 'no'} "
            f"| {c['s_per_image']:.3f} | {c['images_per_s']:.2f} | {c['loop_s']:.3f} | {c['tflops']:.0f} | {share} "
            f"| {c['warmup_s']:.1f} | {c['peak_mem_gib'] if c['peak_mem_gib'] is not None else '-'} |"
        )
    lines += [
        "",
        "| encoder | px | batch | dtype | images / s | ms / batch | TFLOP/s | % of peak |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in (c for c in cases if c["kind"] == "encoder" and c["status"] == "ok"):
        share = f"{100 * c['peak_share']:.1f}" if c["peak_share"] is not None else "-"
        lines.append(
            f"| {c['model']} | {c['px']} | {c['batch']} | {c['dtype']} | {c['images_per_s']:.1f} "
            f"| {1000 * c['s_per_batch']:.1f} | {c['tflops']:.0f} | {share} |"
        )
    for c in (c for c in cases if c["kind"] == "oom" and c["status"] == "ok"):
        lines += [
            "",
            f"OOM-halving batcher ({c['model']}, {c['px']} px, {c['dtype']}, one UNet call per chunk, cap "
            f"{c['cap']}): asked for {c['requested_batch']} images, "
            f"settled on {c['settled_batch']} after {c['ooms']} OOM(s) (tried {', '.join(c['tried'][:8])}); "
            f"{c['delivered']} results in {c['seconds']} s",
        ]
    other = [c for c in cases if c["status"] != "ok"]
    if other:
        lines += ["", "Not measured:", ""]
        lines += [f"- {c['id']}: {c['status']} ({c.get('reason', '')})" for c in other]
    return "\n".join(lines)


# ---------------------------------------------------------------- command line


def quiet() -> None:
    """Keep the log to the figures: a device run returns only the last 12,000 characters of output."""
    import warnings

    warnings.filterwarnings("ignore", message=".*functools.lru_cache.*")  # dynamo on diffusers' version checks
    try:
        from diffusers.utils import logging as diffusers_logging
    except ImportError:  # the UNet cases will say so; the encoders still run
        return
    diffusers_logging.set_verbosity_error()  # "modules that should be kept in float32: []" on every cast


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for gpu_bench.json and gpu_bench.md")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="total seconds; the rest is skipped")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny configs, 2 steps: the plumbing only")
    parser.add_argument("--only", help="run only the cases whose id matches this regex (e.g. 'compiled|oom')")
    parser.add_argument("--peak-tflops", type=float, help="the GPU's dense bf16 peak, if not in the table")
    parser.add_argument("--compile-mode", default=COMPILE_MODE, help="torch.compile mode on CUDA")
    parser.add_argument("--compile-cap-s", type=float, default=240.0, help="most seconds one compiled case may take")
    parser.add_argument("--oom-cap-gib", type=float, default=24.0, help="GPU memory cap of the OOM-batcher case")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: every model is built from a config
    quiet()
    bench = Bench(
        profile=SMOKE if args.smoke else FULL,
        out=args.out,
        budget_s=args.budget_s,
        compile_mode=args.compile_mode,
        compile_cap_s=args.compile_cap_s,
        peak_override=args.peak_tflops,
        oom_cap_gib=args.oom_cap_gib,
        smoke=args.smoke,
        only=args.only,
    )
    if bench.dev.type != "cuda" and not args.smoke:
        print("no CUDA device: run with --smoke for the CPU plumbing check", file=sys.stderr)
        return 2
    print(f"gpu_bench on {bench.env['device']}: budget {args.budget_s:.0f} s, results in {args.out}", flush=True)
    results = bench.run()
    print(markdown(bench.summary()))
    return 0 if all(r["status"] in ("ok", "skipped") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
