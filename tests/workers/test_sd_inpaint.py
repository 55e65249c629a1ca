"""sd-inpaint against a tiny random inpainting pipeline saved to disk and loaded back through
``sd_inpaint.load(generate_spec(Settings(...)))``: the path a configured worker takes, offline.

The tiny model paints noise, which is enough to prove what matters: the product's pixels
survive bit for bit on every canvas shape and rotation, in both modes, and the scene around
it really comes out of the model.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from shared.config import Settings
from shared.model_specs import ModelSpec, generate_spec
from tests.tiny_sd import build_tiny_sd_inpaint
from workers.imaging import composition
from workers.models import sd_inpaint
from workers.models.runtime import ModelUnavailable
from workers.models.sd_inpaint import Job, Output, SdInpainter

# 1:1, 4:5, 9:16, 16:9, 1.91:1 at small sizes
CANVASES = [(160, 160), (128, 160), (90, 160), (160, 90), (191, 100)]
ROTATIONS = (-15, 0, 15)
RESOLUTION = 64
PROMPT = "the shoe on a street"
BACKGROUND = "a street at dusk"
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd_inpaint(tmp_path_factory.mktemp("models") / "tiny-sd-inpaint")


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny convolutions gain nothing from threads, and on a busy CI box OpenMP barriers waiting
    for a descheduled thread made calls 20x slower, at random."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    yield


def make_spec(path: Path, **settings: Any) -> ModelSpec:
    values: dict[str, Any] = dict(
        generator="sd-inpaint",
        sd_model=str(path),
        sd_steps=2,
        sd_resolution=RESOLUTION,
        sd_batch_size=4,
        model_device="cpu",
    )
    return generate_spec(Settings(**{**values, **settings}))


def cutout() -> Image.Image:
    """A textured product (every opaque pixel distinct-ish) with a soft, anti-aliased edge."""
    rng = np.random.default_rng(7)
    rgb = rng.integers(0, 256, (48, 30, 3), dtype=np.uint8)
    alpha = Image.new("L", (30, 48), 0)
    ImageDraw.Draw(alpha).ellipse((2, 2, 27, 45), fill=255)
    alpha = alpha.filter(ImageFilter.GaussianBlur(1.0))
    return Image.merge("RGBA", (*Image.fromarray(rgb, "RGB").split(), alpha))


def layers(canvases: list[tuple[int, int]] = CANVASES) -> list[Image.Image]:
    """Placed layers for every canvas x rotation, on two grid cells (upper left, lower right)."""
    product = cutout()
    layouts = composition.plan(canvases, product.size, rows=2, cols=2, rotations=ROTATIONS, cutout=product).layouts
    return [composition.place(product, layout) for layout in layouts if layout.row == layout.col]


def reference(size: tuple[int, int]) -> Image.Image:
    """A smooth reference background (cover-cropped already: canvas size)."""
    x = np.linspace(0, 255, size[0], dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, size[1], dtype=np.float32)[:, None, None]
    img = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2)
    return Image.fromarray(img.astype(np.uint8), "RGB")


def jobs_for(layer_list: list[Image.Image], with_init: bool, seed: int = 0) -> list[Job]:
    return [Job(layer, reference(layer.size) if with_init else None, seed + i) for i, layer in enumerate(layer_list)]


def assert_exact(output: Output, layer: Image.Image) -> None:
    report = composition.integrity(output.image, layer)
    assert report["exact_fraction"] == 1.0, report
    assert report["product_sha256"] == report["layer_sha256"]


def outside_difference(output: Output, job: Job) -> float:
    """Mean absolute difference, outside the product, between the output and what it started from."""
    start = np.asarray(job.init if job.init is not None else Image.new("RGB", job.layer.size, sd_inpaint.NEUTRAL))
    outside = np.asarray(job.layer.getchannel("A")) == 0
    out = np.asarray(output.image).astype(np.int16)
    return float(np.abs(out[outside] - start[outside].astype(np.int16)).mean())


class Counting:
    """The pipeline, counting calls (images per call); optionally 'out of memory' above a batch."""

    def __init__(self, pipe: Any, fail_above: int | None = None) -> None:
        self.pipe, self.fail_above, self.calls = pipe, fail_above, []

    def __call__(self, **kwargs: Any) -> Any:
        import torch

        n = len(kwargs["prompt"])
        self.calls.append(n)
        if self.fail_above is not None and n > self.fail_above:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.pipe(**kwargs)


# --- the promise -------------------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("with_init", [False, True], ids=["grey", "init"])
@pytest.mark.parametrize("mode", ["outpaint", "layered"])
def test_product_exact_on_every_canvas_and_rotation(model_dir: Path, device: str, mode: str, with_init: bool) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    inpainter = sd_inpaint.load(make_spec(model_dir, sd_mode=mode, model_device=device))
    jobs = jobs_for(layers(), with_init)
    outputs = inpainter.generate(jobs, PROMPT, "blurry", background_prompt=BACKGROUND)
    assert len(outputs) == len(jobs) == len(CANVASES) * len(ROTATIONS) * 2
    expected_passes = ["outpaint"] if mode == "outpaint" else ["background", "ground", "upper"]
    for job, out in zip(jobs, outputs, strict=True):
        assert out.image.mode == "RGB" and out.image.size == job.layer.size
        assert_exact(out, job.layer)
        assert out.seed == job.seed and out.passes == expected_passes and out.gpu_seconds > 0
        assert out.size == sd_inpaint.working_size(job.layer.size, RESOLUTION)
        assert max(out.size) == RESOLUTION and out.size[0] % 8 == 0 and out.size[1] % 8 == 0
        assert outside_difference(out, job) > 2.0  # the scene was painted, not left as it started


def test_layered_runs_three_passes_and_differs_from_outpaint(model_dir: Path) -> None:
    jobs = jobs_for(layers([(160, 90)]), with_init=False)[:2]
    outpainter = sd_inpaint.load(make_spec(model_dir))
    layered = sd_inpaint.load(make_spec(model_dir, sd_mode="layered"))
    counted = Counting(layered.pipe)
    layered_outputs = SdInpainter(counted, layered.spec, layered.device).generate(jobs, PROMPT)
    assert len(counted.calls) == 3  # one batch of 2, three passes
    for job, flat, deep in zip(jobs, outpainter.generate(jobs, PROMPT), layered_outputs, strict=True):
        assert deep.passes == ["background", "ground", "upper"]
        assert np.abs(np.asarray(flat.image, np.int16) - np.asarray(deep.image, np.int16)).mean() > 1.0
        assert_exact(deep, job.layer)


def test_layered_bands_follow_the_product_bottom() -> None:
    layer = layers([(160, 160)])[0]
    alpha = np.asarray(layer.getchannel("A"))
    bottom = int(np.flatnonzero((alpha == 255).any(axis=1)).max())
    top, low = sd_inpaint.pass_rows(alpha, "ground")
    assert top == bottom - round(0.15 * 160) and low == min(160, bottom + round(0.10 * 160) + 1)
    assert sd_inpaint.pass_rows(alpha, "upper") == (0, top)
    mask = np.asarray(sd_inpaint.pass_mask(layer, "ground", (160, 160)))
    assert not mask[alpha >= 128].any()  # the product is never painted
    assert mask[top:low][alpha[top:low] == 0].min() == 255 and not mask[:top].any() and not mask[low:].any()


# --- seeds, batching, memory -------------------------------------------------------------------


def test_same_seed_same_image_different_seed_different_image(model_dir: Path) -> None:
    inpainter = sd_inpaint.load(make_spec(model_dir))
    layer = layers([(128, 160)])[0]
    jobs = [Job(layer, None, 11), Job(layer, None, 12)]
    first, second = inpainter.generate(jobs, PROMPT), inpainter.generate(jobs, PROMPT)
    assert [o.seed for o in first] == [11, 12]
    assert np.array_equal(np.asarray(first[0].image), np.asarray(second[0].image))
    assert not np.array_equal(np.asarray(first[0].image), np.asarray(first[1].image))


@pytest.mark.parametrize(("batch_size", "calls"), [(4, [4]), (1, [1, 1, 1, 1])])
def test_batching_runs_batch_size_images_per_call(model_dir: Path, batch_size: int, calls: list[int]) -> None:
    loaded = sd_inpaint.load(make_spec(model_dir))
    counted = Counting(loaded.pipe)
    inpainter = SdInpainter(counted, make_spec(model_dir, sd_batch_size=batch_size), loaded.device)
    jobs = jobs_for(layers([(160, 160)])[:4], with_init=True)
    outputs = inpainter.generate(jobs, PROMPT)
    assert counted.calls == calls and len(outputs) == 4
    for job, out in zip(jobs, outputs, strict=True):
        assert_exact(out, job.layer)


def test_out_of_memory_halves_the_batch_and_still_delivers(model_dir: Path) -> None:
    loaded = sd_inpaint.load(make_spec(model_dir))
    counted = Counting(loaded.pipe, fail_above=1)
    jobs = jobs_for(layers([(160, 160)])[:4], with_init=False)
    outputs = SdInpainter(counted, loaded.spec, loaded.device).generate(jobs, PROMPT)
    assert counted.calls == [4, 2, 1, 1, 1, 1] and len(outputs) == 4
    assert [o.seed for o in outputs] == [j.seed for j in jobs]
    for job, out in zip(jobs, outputs, strict=True):
        assert_exact(out, job.layer)


# --- loading and input checks ------------------------------------------------------------------


def test_loaded_once_per_spec(model_dir: Path) -> None:
    spec = make_spec(model_dir)
    assert sd_inpaint.load(spec) is sd_inpaint.load(spec)


def test_missing_model_names_the_stage(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="generate"):
        sd_inpaint.load(make_spec(tmp_path / "no-such-model"))


def test_working_size_fits_the_longer_side_in_multiples_of_8() -> None:
    assert sd_inpaint.working_size((1080, 1350), 512) == (408, 512)
    assert sd_inpaint.working_size((1200, 628), 512) == (512, 264)
    assert sd_inpaint.working_size((1024, 1024), 1024) == (1024, 1024)


def test_bad_input_names_the_argument(model_dir: Path) -> None:
    inpainter = sd_inpaint.load(make_spec(model_dir))
    layer = layers([(160, 160)])[0]
    with pytest.raises(ValueError, match=r"jobs\[0\]\.layer"):
        inpainter.generate([Job(layer.convert("RGB"), None, 0)], PROMPT)
    with pytest.raises(ValueError, match=r"jobs\[1\]"):
        inpainter.generate([Job(layer, None, 0), "not a job"], PROMPT)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="jobs"):
        inpainter.generate([], PROMPT)
    with pytest.raises(ValueError, match=r"jobs\[0\]\.init"):
        inpainter.generate([Job(layer, Image.new("RGB", (10, 10)), 0)], PROMPT)
    with pytest.raises(ValueError, match=r"jobs\[0\]\.seed"):
        inpainter.generate([Job(layer, None, -1)], PROMPT)
    with pytest.raises(ValueError, match="prompt"):
        inpainter.generate([Job(layer, None, 0)], None)  # type: ignore[arg-type]
