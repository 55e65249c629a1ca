"""Segmenters: SAM through transformers (a tiny random checkpoint, loaded the way users load theirs),
the original segment-anything package (GPU image only), and the embedded matting on generated
product shots whose true masks are known.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from shared.config import Settings
from shared.model_specs import ModelSpec, segment_spec
from tests.tiny_sam import build_tiny_sam
from workers.evaluation import seg_set
from workers.imaging import matting
from workers.models import runtime, sam, sam_original

# The tiny model's weights are random; with this seed its best mask on the shots below is a
# plausible (non-empty, not full-frame) region, so the whole adapter path runs to the end.
TINY_SAM_SEED = 0
SIZE = 288  # generated shots are SIZE x SIZE
SUPERSAMPLE = 4  # shapes are drawn this much larger and averaged down: anti-aliased edges

# --- generated product shots -------------------------------------------------------------------


def _bottle(canvas: np.ndarray, p: Callable[..., tuple[int, ...]]) -> None:
    cv2.rectangle(canvas, p(104, 110), p(184, 262), 255, -1)
    cv2.ellipse(canvas, p(144, 112), p(40, 36), 0, 180, 360, 255, -1)  # shoulders
    cv2.rectangle(canvas, p(128, 40), p(160, 90), 255, -1)  # neck
    cv2.rectangle(canvas, p(124, 24), p(164, 46), 255, -1)  # cap


def _shoe(canvas: np.ndarray, p: Callable[..., tuple[int, ...]]) -> None:
    outline = [
        p(36, 200),
        p(60, 150),
        p(120, 130),
        p(150, 80),
        p(200, 72),
        p(236, 90),
        p(250, 170),
        p(256, 214),
        p(40, 222),
    ]
    cv2.fillPoly(canvas, [np.array(outline, np.int32)], 255)
    cv2.ellipse(canvas, p(196, 112), p(30, 16), -10, 0, 360, 0, -1)  # the opening: a real hole


def _mug(canvas: np.ndarray, p: Callable[..., tuple[int, ...]]) -> None:
    cv2.ellipse(canvas, p(192, 158), p(46, 44), 0, 0, 360, 255, -1)  # handle ...
    cv2.ellipse(canvas, p(192, 158), p(28, 26), 0, 0, 360, 0, -1)  # ... and its gap
    cv2.rectangle(canvas, p(70, 80), p(190, 236), 255, -1)
    cv2.ellipse(canvas, p(130, 236), p(60, 10), 0, 0, 180, 255, -1)  # rounded base


SHAPES = {"bottle": _bottle, "shoe": _shoe, "mug": _mug}
COLOURS = {"bottle": (40, 110, 60), "shoe": (150, 75, 40), "mug": (200, 40, 50)}
BACKDROPS = {
    "white": (246, 246, 244),
    "sky": (170, 195, 230),
    "sage": (175, 195, 165),
    "coral": (235, 160, 135),
    "charcoal": (55, 58, 62),
    "mustard": (240, 215, 90),
}


@functools.cache
def coverage(kind: str) -> np.ndarray:
    """Float SIZE x SIZE in 0..1: how much of each pixel the product covers."""
    scale = SIZE * SUPERSAMPLE / 288
    canvas = np.zeros((SIZE * SUPERSAMPLE,) * 2, np.uint8)
    SHAPES[kind](canvas, lambda *v: tuple(round(x * scale) for x in v))
    return cv2.resize(canvas.astype(np.float32) / 255, (SIZE, SIZE), interpolation=cv2.INTER_AREA)


def product_rgb(kind: str, rng: np.random.Generator) -> np.ndarray:
    """The product's colour with cylinder-like light, a detail (label, sole, glint) and sensor noise."""
    light = 0.75 + 0.35 * np.cos(np.linspace(-1.3, 1.3, SIZE))[None, :] - 0.1 * np.linspace(0, 1, SIZE)[:, None]
    rgb = np.asarray(COLOURS[kind], np.float32) * light[:, :, None]
    if kind == "bottle":
        rgb[150:220, 106:182] = (232, 222, 196)  # a cream label
    elif kind == "shoe":
        rgb[206:224] = (70, 52, 40)  # a dark rubber sole
    else:
        rgb[:, 96:104] = rgb[:, 96:104] * 0.3 + 255 * 0.7  # a specular stripe
    return rgb + rng.normal(0.0, 4.0, rgb.shape)


def shot(kind: str, backdrop: str | None = None, seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    """(image, true mask): an RGBA cut-out when ``backdrop`` is None, else a studio shot on it
    with a soft top-to-bottom light falloff and noise."""
    rng = np.random.default_rng(seed)
    cover, rgb = coverage(kind), product_rgb(kind, rng)
    truth = cover >= 0.5
    if backdrop is None:
        rgba = np.dstack([np.clip(rgb, 0, 255), cover * 255]).round().astype(np.uint8)
        return Image.fromarray(rgba, "RGBA"), truth
    falloff = np.linspace(-8.0, 8.0, SIZE)[:, None, None]
    back = np.asarray(BACKDROPS[backdrop], np.float32) + falloff + rng.normal(0.0, 2.5, rgb.shape)
    out = cover[:, :, None] * rgb + (1 - cover[:, :, None]) * back
    return Image.fromarray(np.clip(out, 0, 255).round().astype(np.uint8), "RGB"), truth


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


# --- matting on generated shots ----------------------------------------------------------------

OPENINGS = {"shoe": (196, 112), "mug": (192, 158)}  # (x, y) inside each product's real hole
MATTING_CASES = [(kind, backdrop) for kind in SHAPES for backdrop in (None, *BACKDROPS)]


@pytest.mark.parametrize(("kind", "backdrop"), MATTING_CASES, ids=[f"{k}-{b or 'alpha'}" for k, b in MATTING_CASES])
def test_matting_finds_the_product(kind: str, backdrop: str | None) -> None:
    image, truth = shot(kind, backdrop)
    result = matting.segment(image)
    assert result.method == ("alpha" if backdrop is None else "grabcut")
    assert iou(result.mask > 0, truth) >= 0.95
    if kind in OPENINGS:  # the shoe's opening and the mug handle's gap are no product
        x, y = OPENINGS[kind]
        assert result.mask[y, x] == 0


# --- product_box -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(SHAPES))
def test_product_box_of_a_cutout_is_the_alpha_extent(kind: str) -> None:
    image, truth = shot(kind)
    assert sam.product_box(image) == bbox(np.asarray(image)[:, :, 3] >= 128) == bbox(truth)


@pytest.mark.parametrize("backdrop", ["white", "sky", "charcoal", "mustard"])
@pytest.mark.parametrize("kind", list(SHAPES))
def test_product_box_on_a_backdrop_hugs_the_product(kind: str, backdrop: str) -> None:
    image, truth = shot(kind, backdrop)
    found, true = np.array(sam.product_box(image)), np.array(bbox(truth))
    assert np.abs(found - true).max() <= 2, (found, true)


def test_product_box_falls_back_to_saliency_when_the_border_gives_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    image, truth = shot("mug", "sky")
    # stand-in for a shot whose border is no backdrop: everything matches it
    monkeypatch.setattr(matting, "border_background", lambda rgb: np.ones(rgb.shape[:2], bool))
    found, true = np.array(sam.product_box(image)), np.array(bbox(truth))
    assert np.abs(found - true).max() <= 8, (found, true)


def test_product_box_of_two_equal_halves_is_the_whole_frame(monkeypatch: pytest.MonkeyPatch) -> None:
    # nothing stands out from the mean colour: SAM gets the whole frame rather than a guess
    arr = np.full((120, 160, 3), 60, np.uint8)
    arr[:, 80:] = 200
    monkeypatch.setattr(matting, "border_background", lambda rgb: np.ones(rgb.shape[:2], bool))
    assert sam.product_box(Image.fromarray(arr)) == (0, 0, 160, 120)


def test_product_box_of_a_uniform_image_is_segmentation_error() -> None:
    with pytest.raises(matting.SegmentationError, match="uniform"):
        sam.product_box(Image.new("RGB", (200, 160), (230, 230, 230)))


def test_product_box_names_bad_argument() -> None:
    with pytest.raises(ValueError, match="image"):
        sam.product_box(np.zeros((64, 64, 3), np.uint8))  # type: ignore[arg-type]


# --- SAM (transformers) ------------------------------------------------------------------------

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sam(tmp_path_factory.mktemp("models") / "tiny-sam", seed=TINY_SAM_SEED)


def sam_spec(path: Path | str, device: str = "cpu") -> ModelSpec:
    return segment_spec(Settings(segmenter="sam", sam_model=str(path), model_device=device))


@pytest.fixture(params=DEVICES)
def segmenter(request: pytest.FixtureRequest, tiny_sam: Path, monkeypatch: pytest.MonkeyPatch) -> sam.SamSegmenter:
    import torch

    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device visible")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return sam.load(sam_spec(tiny_sam, request.param))


def test_sam_segments_inside_the_prompt_box(segmenter: sam.SamSegmenter) -> None:
    image, _ = shot("bottle", "white")
    result = segmenter.segment(image)
    box = sam.product_box(image)
    assert isinstance(result, matting.SegmentResult) and result.method == "sam"
    assert result.mask.shape == result.alpha.shape == (SIZE, SIZE) and result.mask.dtype == np.uint8
    assert set(np.unique(result.mask)) == {0, 255}
    assert 0.0 < result.quality["area_share"] <= matting.MAX_AREA_SHARE
    assert not result.mask[~sam._box_mask(result.mask.shape, box)].any()
    assert result.quality["box"] == list(box)
    assert {"edge_smoothness", "predicted_iou", "components_removed"} <= result.quality.keys()
    assert np.array_equal(result.alpha, result.mask)


def test_sam_soft_alpha_of_a_cutout_stays_within_its_alpha(segmenter: sam.SamSegmenter) -> None:
    image, _ = shot("mug")
    result = segmenter.segment(image)
    original = np.asarray(image)[:, :, 3]
    assert result.method == "sam"
    assert (result.alpha <= original).all() and (result.alpha <= result.mask).all()
    assert result.alpha.any()


def test_sam_blank_image_is_segmentation_error_not_a_full_mask(segmenter: sam.SamSegmenter) -> None:
    with pytest.raises(matting.SegmentationError):
        segmenter.segment(Image.new("RGB", (256, 256), (240, 240, 240)))


def test_sam_is_loaded_once_per_spec(tiny_sam: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    first = sam.load(sam_spec(tiny_sam))
    assert sam.load(sam_spec(tiny_sam)) is first
    assert first.device.type == "cpu" and not first.model.training


@pytest.mark.parametrize("reference", ["missing-dir", "onbrand-tests/no-such-sam"])
def test_sam_missing_model_is_model_unavailable(
    reference: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    target = tmp_path / reference if reference == "missing-dir" else reference
    with pytest.raises(runtime.ModelUnavailable, match=r"^segment: sam model"):
        sam.load(sam_spec(target))


def test_sam_load_rejects_another_adapter() -> None:
    with pytest.raises(ValueError, match="spec"):
        sam.load(segment_spec(Settings(segmenter="matting")))


def test_finish_rejects_empty_and_full_frame_masks() -> None:
    box = (0, 0, 100, 80)
    with pytest.raises(matting.SegmentationError, match="empty"):
        sam.finish(np.zeros((80, 100), bool), None, box, 0.9, "sam", 0.0)
    with pytest.raises(matting.SegmentationError, match="covers"):
        sam.finish(np.ones((80, 100), bool), None, box, 0.9, "sam", 0.0)


# --- segment-anything (the original package) ---------------------------------------------------


def original_spec(checkpoint: Path | str, model_type: str = "vit_b") -> ModelSpec:
    return segment_spec(
        Settings(segmenter="segment-anything", sam_checkpoint=str(checkpoint), sam_model_type=model_type)
    )


def test_segment_anything_missing_package_is_model_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = tmp_path / "sam_vit_b.pth"
    checkpoint.write_bytes(b"not loaded: the import fails first")
    monkeypatch.setitem(sys.modules, "segment_anything", None)  # makes the import fail, installed or not
    with pytest.raises(runtime.ModelUnavailable, match=r"^segment: segment-anything model") as info:
        sam_original.load(original_spec(checkpoint))
    assert "segment-anything is not installed (pip install 'onbrand[gpu]'" in str(info.value)
    assert "needs torchvision" in str(info.value)


def test_segment_anything_missing_checkpoint_is_model_unavailable(tmp_path: Path) -> None:
    with pytest.raises(runtime.ModelUnavailable, match="checkpoint file not found"):
        sam_original.load(original_spec(tmp_path / "nope.pth"))


def test_segment_anything_segments_with_a_small_random_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torchvision", reason="segment-anything needs torchvision (GPU image only)")
    build = pytest.importorskip(
        "segment_anything.build_sam",
        reason="segment-anything is installed in the GPU image only (pip install 'onbrand[gpu]')",
    )
    import torch

    # vit_b's layout at a fraction of its width and depth: the registry builds what the test saved
    small = functools.partial(build._build_sam, 32, 2, 2, [1])
    monkeypatch.setitem(build.sam_model_registry, "vit_b", small)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.save(small().state_dict(), tmp_path / "small.pth")
    segmenter = sam_original.load(original_spec(tmp_path / "small.pth"))
    image, _ = shot("bottle", "white")
    try:
        result = segmenter.segment(image)
    except matting.SegmentationError as exc:  # random weights may find nothing: then it must say so
        assert "segment-anything" in str(exc)
        return
    assert result.method == "segment-anything"
    assert not result.mask[~sam._box_mask(result.mask.shape, sam.product_box(image))].any()
    assert 0.0 < result.quality["area_share"] <= matting.MAX_AREA_SHARE


# --- the default chooser on the labelled segmentation set (workers.evaluation.seg_set) -----------------

ISNET_WEIGHTS = Path(".onbrand/models/isnet/model.onnx")
# A few busy held-out photos through ISNet (~5 s each on 2 cores); the bench runs the whole split.
ISNET_CASES = ("heldout/brick/mug", "heldout/lawn/bottle", "heldout/cafe_table/sneaker", "heldout/gravel/box")


def _heldout() -> dict[str, seg_set.Sample]:
    return {s.name: s for s in seg_set.samples("heldout")}


def test_chooser_never_returns_an_empty_mask_and_says_what_to_upload() -> None:
    """Classical chain (no ISNet) on every busy held-out photo: a plausible mask or the upload advice."""
    for sample in [s for s in seg_set.samples("heldout") if s.busy]:
        try:
            result = matting.segment(sample.image)
        except matting.SegmentationError as exc:
            assert matting.UPLOAD_ADVICE in str(exc) and "empty after cleaning" not in str(exc), sample.name
            continue
        assert (result.mask > 0).mean() > 0.01, sample.name
        assert result.method in ("alpha", "grabcut", "grabcut-centre")


def test_chooser_on_cutouts_meets_the_targets() -> None:
    ious = [
        seg_set.iou(matting.segment(s.image).mask, s.mask)
        for s in seg_set.samples("heldout")
        if s.background == "alpha"
    ]
    assert float(np.median(ious)) >= 0.98 and min(ious) >= 0.95, ious


@pytest.mark.skipif(
    not ISNET_WEIGHTS.is_file(), reason=f"ISNet weights absent at {ISNET_WEIGHTS}: run `onbrand models pull`"
)
def test_chooser_with_isnet_meets_the_targets_on_busy_photos() -> None:
    from workers.models import isnet

    predict = isnet.load(ISNET_WEIGHTS).predict
    samples = _heldout()
    results = {name: matting.segment(samples[name].image, predictor=predict) for name in ISNET_CASES}
    ious = [seg_set.iou(r.mask, samples[n].mask) for n, r in results.items()]
    assert float(np.median(ious)) >= 0.98 and min(ious) >= 0.95, dict(zip(ISNET_CASES, ious, strict=True))
    assert {r.method for r in results.values()} <= {"isnet", "isnet+grabcut"}
    assert all(r.quality["attempts"][-1]["ok"] for r in results.values())


def test_chooser_falls_back_when_the_model_mask_fails_the_checks() -> None:
    sample = _heldout()["heldout/gravel/box"]  # a textured backdrop: the leak check gates there

    def leaky(rgb: np.ndarray) -> np.ndarray:  # a "model" that returns the product and the ground under it
        leaked = seg_set.wrong_mask(sample, "leaked")
        assert leaked is not None
        return (leaked > 0).astype(np.float32)

    try:
        result = matting.segment(sample.image, predictor=leaky)
    except matting.SegmentationError as exc:
        assert "isnet: leaked_mask" in str(exc) and matting.UPLOAD_ADVICE in str(exc)
    else:
        assert result.method not in ("isnet",) and result.quality["attempts"][0]["method"] == "isnet"
        assert not result.quality["attempts"][0]["ok"]
