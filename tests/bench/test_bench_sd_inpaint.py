"""sd-inpaint adapter cost: per-call overhead over the bare diffusers pipeline, and batching gain.

Runs the tiny random inpainting pipeline (tests/tiny_sd.py) on whatever device the settings
resolve to (CUDA when present, else CPU). The model is tiny, so the working size and steps are
chosen to make one call take about a second on one CPU thread: the overhead figure then compares the
adapter's own work (masks, resizes, paste-back at canvas size) with a call of realistic length.

Run: .venv/bin/python -m pytest -q -s -m bench tests/bench/test_bench_sd_inpaint.py
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from shared.config import Settings
from shared.model_specs import ModelSpec, generate_spec
from tests.tiny_sd import build_tiny_sd_inpaint
from workers.models import sd_inpaint
from workers.models.sd_inpaint import Job, SdInpainter

CANVAS = (240, 300)  # 4:5, the working size is a third of it: the adapter resizes both ways
FULL_CANVAS = (1080, 1350)  # a real 4:5 ad: the canvas-size work (resize back, paste-back) at full cost
RESOLUTION = 96  # working size 80 x 96
STEPS = 3
BATCH = 4
REPEATS = 9
PROMPT = "the shoe on a street"


@pytest.fixture(scope="module", autouse=True)
def steady_cpu() -> Iterator[None]:
    """One CPU thread: on a shared box OpenMP barriers waiting for a descheduled thread made single
    calls up to 20x slower at random, which no median of a few repeats survives (CUDA: no effect)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return build_tiny_sd_inpaint(tmp_path_factory.mktemp("models") / "tiny-sd-inpaint")


def where(dev: Any) -> str:
    import torch

    return str(dev) if dev.type == "cuda" else f"cpu, {torch.get_num_threads()} thread(s)"


def make_spec(path: Path, batch_size: int) -> ModelSpec:
    return generate_spec(
        Settings(
            generator="sd-inpaint",
            sd_model=str(path),
            sd_steps=STEPS,
            sd_resolution=RESOLUTION,
            sd_batch_size=batch_size,
        )
    )


def make_jobs(n: int, canvas: tuple[int, int] = CANVAS) -> list[Job]:
    """n candidates of one canvas: a textured product standing in the lower half."""
    rng = np.random.default_rng(0)
    w, h = canvas[0] * 7 // 24, canvas[1] * 2 // 5
    jobs = []
    for i in range(n):
        layer = Image.new("RGBA", canvas, (0, 0, 0, 0))
        product = Image.fromarray(rng.integers(0, 256, (h, w, 4), dtype=np.uint8), "RGBA")
        alpha = Image.new("L", product.size, 0)
        ImageDraw.Draw(alpha).ellipse((0, 0, w - 1, h - 1), fill=255)
        product.putalpha(alpha)
        layer.paste(product, ((canvas[0] - w) * i // max(1, n - 1), canvas[1] // 2))
        jobs.append(Job(layer, None, i))
    return jobs


class Recording:
    """The pipeline, keeping the arguments of its last call (to replay them directly) and the
    seconds spent inside it (the rest of a generate() is the adapter's own work)."""

    def __init__(self, pipe: Any) -> None:
        self.pipe, self.kwargs, self.inside = pipe, {}, 0.0

    def __call__(self, **kwargs: Any) -> Any:
        self.kwargs = kwargs
        start = time.perf_counter()
        try:
            return self.pipe(**kwargs)
        finally:
            self.inside += time.perf_counter() - start


def seconds(run: Callable[[], Any]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def direct_call(inpainter: SdInpainter, kwargs: dict[str, Any]) -> Callable[[], Any]:
    """The same call straight into diffusers; the caller would seed its generators too."""
    import torch

    def run() -> Any:
        generators = [torch.Generator(inpainter.device).manual_seed(i) for i in range(len(kwargs["prompt"]))]
        return inpainter.pipe.pipe(**{**kwargs, "generator": generators})

    return run


@pytest.mark.bench
@pytest.mark.parametrize("canvas", [CANVAS, FULL_CANVAS], ids=["small", "full"])
def test_overhead_vs_direct_diffusers_call(model_dir: Path, canvas: tuple[int, int]) -> None:
    loaded = sd_inpaint.load(make_spec(model_dir, BATCH))
    inpainter = SdInpainter(Recording(loaded.pipe), loaded.spec, loaded.device)
    jobs = make_jobs(BATCH, canvas)
    inpainter.generate(jobs, PROMPT)  # warm-up, and records one call's arguments
    direct = direct_call(inpainter, inpainter.pipe.kwargs)
    direct()
    adapter_s, direct_s, own_s = [], [], []
    for _ in range(REPEATS):  # interleaved, so drift in machine load hits both alike
        inpainter.pipe.inside = 0.0
        adapter_s.append(seconds(lambda: inpainter.generate(jobs, PROMPT)))
        own_s.append(adapter_s[-1] - inpainter.pipe.inside)
        direct_s.append(seconds(direct))
    a, d = statistics.median(adapter_s), statistics.median(direct_s)
    # Median of the paired differences: a load spike on a shared box hits one pair, not the figure.
    extra = statistics.median(x - y for x, y in zip(adapter_s, direct_s, strict=True))
    print(
        f"\nBENCH sd-inpaint overhead vs diffusers: {100 * extra / d:.1f} % (adapter {a:.3f} s, direct "
        f"{d:.3f} s, {1000 * extra / BATCH:.1f} ms per candidate, median of {REPEATS} pairs; canvas "
        f"{canvas[0]}x{canvas[1]}, working {inpainter.pipe.kwargs['width']}x{inpainter.pipe.kwargs['height']}, "
        f"{STEPS} steps, batch {BATCH}, {where(loaded.device)})"
    )
    own = statistics.median(own_s)
    print(
        f"BENCH sd-inpaint adapter's own work (generate minus time inside the pipeline): {1000 * own:.1f} ms "
        f"per call = {100 * own / d:.1f} % of the direct call ({1000 * own / BATCH:.1f} ms per candidate, "
        f"canvas {canvas[0]}x{canvas[1]})"
    )
    assert a > 0 and d > 0 and own > 0


@pytest.mark.bench
def test_batching_gain(model_dir: Path) -> None:
    jobs = make_jobs(8)
    rates = {}
    for batch in (1, 4):
        inpainter = sd_inpaint.load(make_spec(model_dir, batch))
        inpainter.generate(jobs[:batch], PROMPT)  # warm-up at this batch shape
        took = statistics.median(seconds(lambda i=inpainter: i.generate(jobs, PROMPT)) for _ in range(3))
        rates[batch] = len(jobs) / took
    print(
        f"\nBENCH sd-inpaint batching: {rates[1]:.2f} candidates/s at batch 1, {rates[4]:.2f} at batch 4 "
        f"(x{rates[4] / rates[1]:.2f}; {len(jobs)} candidates, median of 3, working size for "
        f"{CANVAS[0]}x{CANVAS[1]} at {RESOLUTION}, {STEPS} steps, {where(inpainter.device)})"
    )
    assert rates[1] > 0 and rates[4] > 0
