"""QC model adapters: DINOv2 embeddings and the LAION aesthetic predictor, against tiny random checkpoints
saved to disk and loaded back offline through ``load(spec)``, the way a configured worker loads its models;
the OCR reader (text_artefacts) with the real PP-OCR weights that ship in the rapidocr wheel."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from shared.model_specs import ModelSpec
from tests.tiny_vision import (
    CLIP_PROJECTION,
    DINOV2_HIDDEN,
    IMAGE_SIZE,
    build_tiny_aesthetic_mlp,
    build_tiny_clip,
    build_tiny_dinov2,
)
from workers.models import dinov2, laion, ocr, runtime

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def dino_dir(models: Path) -> Path:
    return build_tiny_dinov2(models / "tiny-dinov2")


@pytest.fixture(scope="module")
def clip_dir(models: Path) -> Path:
    return build_tiny_clip(models / "tiny-clip")


@pytest.fixture(scope="module")
def mlp_pth(models: Path) -> Path:
    return build_tiny_aesthetic_mlp(models / "mlp", seed=3, suffix=".pth")


def dino_spec(path: Path | str, device: str = "cpu") -> ModelSpec:
    return ModelSpec("qc", "dinov2", str(path), str(path), device)


def laion_spec(clip: Path | str, mlp: Path | str | None, device: str = "cpu") -> ModelSpec:
    options = () if mlp is None else (("mlp", str(mlp)),)
    return ModelSpec("rank", "laion", str(clip), str(clip), device, options=options)


def on(device: str) -> str:
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            pytest.skip("no CUDA device visible")
    return device


@pytest.fixture
def embedder(dino_dir: Path) -> dinov2.Dinov2Embedder:
    return dinov2.load(dino_spec(dino_dir))


@pytest.fixture
def predictor(clip_dir: Path, mlp_pth: Path) -> laion.LaionAesthetic:
    return laion.load(laion_spec(clip_dir, mlp_pth))


# --- images ------------------------------------------------------------------------------------


def product(seed: int = 0, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A red box with a cream label on a light backdrop, with sensor noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    rgb = np.full((h, w, 3), (240, 238, 232), np.float32)
    rgb[h // 5 : h - h // 6, w // 3 : 2 * w // 3] = (190, 40, 50)
    rgb[h // 2 : 2 * h // 3, w // 3 + 3 : 2 * w // 3 - 3] = (232, 222, 196)
    rgb += rng.normal(0.0, 4.0, rgb.shape)
    return Image.fromarray(np.clip(rgb, 0, 255).round().astype(np.uint8))


def inverted(image: Image.Image) -> Image.Image:
    return Image.fromarray(255 - np.asarray(image.convert("RGB")))


def noise(seed: int = 1, size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def layer_for(image: Image.Image) -> Image.Image:
    """An RGBA product layer of ``image``'s size: the box region opaque."""
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    layer.paste((190, 40, 50, 255), (image.width // 3, image.height // 5, 2 * image.width // 3, image.height * 5 // 6))
    return layer


def normalised(image: Image.Image, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
    """1x3xHxW of an image already at the model's size: what the adapters' preprocessing must reduce to."""
    arr = (np.asarray(image, np.float32) / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return arr.transpose(2, 0, 1)[None]


# --- DINOv2 ------------------------------------------------------------------------------------


def test_dinov2_embeddings_are_unit_rows(embedder: dinov2.Dinov2Embedder) -> None:
    vectors = embedder.embed([product(), noise(), Image.new("RGB", (40, 90), (20, 120, 200))])
    assert vectors.shape == (3, DINOV2_HIDDEN) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert embedder.dim == DINOV2_HIDDEN and embedder.device.type == "cpu" and not embedder.model.training


def test_dinov2_identical_is_one_and_different_is_lower(embedder: dinov2.Dinov2Embedder) -> None:
    shot = product()
    same, flipped, other = embedder.similarity([shot, shot, noise()], [shot.copy(), inverted(shot), product(5)])
    assert same == pytest.approx(1.0, abs=1e-5)
    assert flipped < same - 1e-3
    assert other < same - 1e-3


def test_dinov2_is_deterministic_and_batch_equals_one_by_one(
    embedder: dinov2.Dinov2Embedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = [product(seed) for seed in range(3)] + [noise(), inverted(product())]
    monkeypatch.setattr(dinov2, "BATCH_SIZE", 2)  # chunks of 2, 2, 1 through runtime.in_batches
    batched = embedder.embed(images)
    assert np.array_equal(batched, embedder.embed(images))
    single = np.concatenate([embedder.embed([image]) for image in images])
    assert np.allclose(batched, single, atol=1e-5)


def test_dinov2_empty_list_is_an_empty_matrix(embedder: dinov2.Dinov2Embedder) -> None:
    empty = embedder.embed([])
    assert empty.shape == (0, DINOV2_HIDDEN) and empty.dtype == np.float32
    assert embedder.similarity([], []) == []


def test_dinov2_matches_the_model_run_by_hand(embedder: dinov2.Dinov2Embedder, dino_dir: Path) -> None:
    import torch
    from transformers import Dinov2Model

    shot = product(size=(IMAGE_SIZE, IMAGE_SIZE))  # at the model's size: resize and crop are no-ops
    model = Dinov2Model.from_pretrained(dino_dir).eval()
    with torch.inference_mode():
        cls = model(pixel_values=torch.from_numpy(normalised(shot, dinov2.IMAGENET_MEAN, dinov2.IMAGENET_STD)))
        cls = model.layernorm(cls.last_hidden_state)[:, 0]  # the layernormed CLS token
    expected = torch.nn.functional.normalize(cls, dim=-1).numpy()
    assert np.allclose(embedder.embed([shot]), expected, atol=1e-5)


def test_dinov2_resizes_the_shorter_side_and_crops_the_centre(embedder: dinov2.Dinov2Embedder) -> None:
    wide = product(size=(96, 64))
    by_hand = wide.resize((48, 32), Image.Resampling.BICUBIC).crop((8, 0, 40, 32))
    assert np.allclose(embedder.embed([wide]), embedder.embed([by_hand]), atol=1e-6)


def test_dinov2_composites_transparency_on_grey(embedder: dinov2.Dinov2Embedder) -> None:
    cutout = layer_for(product())
    on_grey = Image.alpha_composite(Image.new("RGBA", cutout.size, (128, 128, 128, 255)), cutout).convert("RGB")
    assert np.allclose(embedder.embed([cutout]), embedder.embed([on_grey]), atol=1e-6)


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda e: e.embed("not a list"), "images"),
        (lambda e: e.embed([np.zeros((8, 8, 3), np.uint8)]), r"images\[0\]"),
        (lambda e: e.embed([Image.new("RGB", (0, 4))]), r"images\[0\]: the image is empty"),
        (lambda e: e.similarity(product(), [product()]), "a"),
        (lambda e: e.similarity([product()], [product(), product()]), "b"),
    ],
)
def test_dinov2_bad_arguments_are_named(embedder: dinov2.Dinov2Embedder, call: object, name: str) -> None:
    with pytest.raises(ValueError, match=f"^{name}"):
        call(embedder)  # type: ignore[operator]


def test_dinov2_is_loaded_once_per_spec(dino_dir: Path) -> None:
    first = dinov2.load(dino_spec(dino_dir))
    assert dinov2.load(dino_spec(dino_dir)) is first


@pytest.mark.parametrize("reference", ["missing-dir", "onbrand-tests/no-such-dinov2"])
def test_dinov2_missing_model_is_model_unavailable(reference: str, tmp_path: Path) -> None:
    target = str(tmp_path / reference) if reference == "missing-dir" else reference
    with pytest.raises(runtime.ModelUnavailable, match=r"^qc: dinov2 model") as info:
        dinov2.load(dino_spec(target))
    assert target in str(info.value)


def test_dinov2_load_rejects_another_adapter(dino_dir: Path) -> None:
    with pytest.raises(ValueError, match="^spec"):
        dinov2.load(ModelSpec("qc", "sam", str(dino_dir), str(dino_dir), "cpu"))


@pytest.mark.parametrize("device", DEVICES)
def test_dinov2_on_device(dino_dir: Path, device: str, embedder: dinov2.Dinov2Embedder) -> None:
    images = [product(), inverted(product())]
    there = dinov2.load(dino_spec(dino_dir, on(device)))
    assert there.device.type == device
    vectors = there.embed(images)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)
    assert np.allclose(vectors, embedder.embed(images), atol=1e-2)  # half precision on CUDA


# --- LAION aesthetic ---------------------------------------------------------------------------


def test_laion_score_has_the_classical_shape(predictor: laion.LaionAesthetic, clip_dir: Path) -> None:
    shot = product()
    result = predictor.score(shot, layer_for(shot))
    assert set(result) == {"score", "parts", "method", "model"}
    assert result["method"] == "laion" and result["model"] == str(clip_dir)
    assert 0.0 <= result["score"] <= 10.0
    assert result["parts"] == {"laion": round(predictor.score_many([shot])[0], 4)}
    assert predictor.score(shot, layer_for(shot)) == result  # deterministic
    assert predictor.device.type == "cpu" and not predictor.vision.training and not predictor.mlp.training


@pytest.mark.parametrize(("raw", "expected"), [(12.34567, 10.0), (-0.5, 0.0), (6.123456, 6.1235)])
def test_laion_score_clips_to_0_10_and_keeps_the_raw_part(
    predictor: laion.LaionAesthetic, raw: float, expected: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(laion.LaionAesthetic, "score_many", lambda self, images: [raw])
    shot = product()
    result = predictor.score(shot, layer_for(shot))
    assert result["score"] == expected and result["parts"] == {"laion": round(raw, 4)}


def test_laion_score_validates_candidate_and_layer(predictor: laion.LaionAesthetic) -> None:
    shot = product()
    with pytest.raises(ValueError, match="^layer"):
        predictor.score(shot, shot)  # RGB: no product mask
    with pytest.raises(ValueError, match="^candidate"):
        predictor.score(shot.resize((32, 32)), layer_for(shot))
    with pytest.raises(ValueError, match="^images"):
        predictor.score_many(shot)  # type: ignore[arg-type]


def test_laion_matches_the_predictor_run_by_hand(
    predictor: laion.LaionAesthetic, clip_dir: Path, mlp_pth: Path
) -> None:
    import torch
    from torch.nn.functional import linear, normalize
    from transformers import CLIPModel

    shot = product(size=(IMAGE_SIZE, IMAGE_SIZE))  # at the model's size: resize and crop are no-ops
    clip = CLIPModel.from_pretrained(clip_dir).eval()  # the full model, as the checkpoint was saved
    state = torch.load(mlp_pth, weights_only=True)
    with torch.inference_mode():
        features = clip.get_image_features(
            pixel_values=torch.from_numpy(normalised(shot, laion.CLIP_MEAN, laion.CLIP_STD))
        )
        x = normalize(features if isinstance(features, torch.Tensor) else features.pooler_output, dim=-1)
        for i in (0, 2, 4, 6, 7):  # dropouts are identities at inference
            x = linear(x, state[f"layers.{i}.weight"], state[f"layers.{i}.bias"])
    assert predictor.score_many([shot]) == pytest.approx([float(x[0, 0])], abs=1e-5)


def test_laion_batch_equals_one_by_one(predictor: laion.LaionAesthetic, monkeypatch: pytest.MonkeyPatch) -> None:
    images = [product(seed) for seed in range(3)] + [noise(), inverted(product())]
    monkeypatch.setattr(laion, "BATCH_SIZE", 2)
    batched = predictor.score_many(images)
    assert batched == predictor.score_many(images)
    assert batched == pytest.approx([predictor.score_many([image])[0] for image in images], abs=1e-5)
    assert predictor.score_many([]) == []
    assert len(set(batched)) == len(images)  # the images do reach the model: different inputs, different scores


def test_laion_pth_and_safetensors_give_the_same_scores(clip_dir: Path, mlp_pth: Path, tmp_path: Path) -> None:
    safetensors = build_tiny_aesthetic_mlp(tmp_path / "mlp", seed=3, suffix=".safetensors")
    images = [product(), noise()]
    from_pth = laion.load(laion_spec(clip_dir, mlp_pth)).score_many(images)
    assert laion.load(laion_spec(clip_dir, safetensors)).score_many(images) == from_pth
    other = build_tiny_aesthetic_mlp(tmp_path / "other", seed=4, suffix=".safetensors")
    assert laion.load(laion_spec(clip_dir, other)).score_many(images) != from_pth


def test_laion_loads_a_vision_only_checkpoint_too(
    clip_dir: Path, mlp_pth: Path, tmp_path: Path, predictor: laion.LaionAesthetic
) -> None:
    vision_only = tmp_path / "clip-vision"
    predictor.vision.save_pretrained(vision_only)  # a CLIPVisionModelWithProjection checkpoint
    images = [product(), noise()]
    scores = laion.load(laion_spec(vision_only, mlp_pth)).score_many(images)
    assert scores == pytest.approx(predictor.score_many(images), abs=1e-6)


def test_laion_is_loaded_once_per_spec(clip_dir: Path, mlp_pth: Path) -> None:
    assert laion.load(laion_spec(clip_dir, mlp_pth)) is laion.load(laion_spec(clip_dir, mlp_pth))


def test_laion_mlp_of_another_clip_is_model_unavailable(clip_dir: Path, tmp_path: Path) -> None:
    wrong = build_tiny_aesthetic_mlp(tmp_path / "mlp", in_dim=24)
    with pytest.raises(runtime.ModelUnavailable, match=r"^rank: laion model") as info:
        laion.load(laion_spec(clip_dir, wrong))
    assert f"takes 24-dim embeddings but the CLIP model projects to {CLIP_PROJECTION}" in str(info.value)


@pytest.mark.parametrize("mlp", [None, "", "missing.pth"])
def test_laion_missing_mlp_is_model_unavailable(clip_dir: Path, tmp_path: Path, mlp: str | None) -> None:
    path = str(tmp_path / mlp) if mlp else mlp
    with pytest.raises(runtime.ModelUnavailable, match="ONBRAND_AESTHETIC_MLP") as info:
        laion.load(laion_spec(clip_dir, path))
    if mlp:
        assert path in str(info.value)


def test_laion_mlp_of_another_layout_is_model_unavailable(clip_dir: Path, tmp_path: Path) -> None:
    import torch

    state = torch.load(build_tiny_aesthetic_mlp(tmp_path / "mlp"), weights_only=True)
    del state["layers.7.weight"], state["layers.7.bias"]  # a Linear short of the published layout
    torch.save(state, tmp_path / "short.pth")
    with pytest.raises(runtime.ModelUnavailable, match=re.escape("no layers.7.weight")):
        laion.load(laion_spec(clip_dir, tmp_path / "short.pth"))


@pytest.mark.parametrize("reference", ["missing-dir", "onbrand-tests/no-such-clip"])
def test_laion_missing_clip_is_model_unavailable(reference: str, tmp_path: Path, mlp_pth: Path) -> None:
    target = str(tmp_path / reference) if reference == "missing-dir" else reference
    with pytest.raises(runtime.ModelUnavailable, match=r"^rank: laion model") as info:
        laion.load(laion_spec(target, mlp_pth))
    assert target in str(info.value)


def test_laion_rejects_a_checkpoint_that_is_no_clip(dino_dir: Path, mlp_pth: Path) -> None:
    with pytest.raises(runtime.ModelUnavailable, match="expected a CLIP checkpoint, got model_type 'dinov2'"):
        laion.load(laion_spec(dino_dir, mlp_pth))


@pytest.mark.parametrize("device", DEVICES)
def test_laion_on_device(clip_dir: Path, mlp_pth: Path, device: str, predictor: laion.LaionAesthetic) -> None:
    images = [product(), noise()]
    there = laion.load(laion_spec(clip_dir, mlp_pth, on(device)))
    assert there.device.type == device
    assert there.score_many(images) == pytest.approx(predictor.score_many(images), abs=1e-2)  # half on CUDA


# --- OCR (text_artefacts): the rapidocr adapter ------------------------------------------------------


def test_ocr_weights_ship_in_the_wheel_and_read_offline() -> None:
    # No network is needed: the three ONNX files are inside the installed rapidocr package.
    spec = importlib.util.find_spec("rapidocr")
    assert spec is not None and spec.origin is not None
    models = sorted(p.name for p in (Path(spec.origin).parent / "models").glob("*.onnx"))
    assert models == ["PP-OCRv6_det_small.onnx", "PP-OCRv6_rec_small.onnx", "ch_ppocr_mobile_v2.0_cls_mobile.onnx"]
    reader = ocr.load()
    assert reader is ocr.load() and re.fullmatch(r".*\(rapidocr [\d.]+ / onnxruntime [\d.]+\)", reader.name)
    sign = Image.new("RGB", (420, 120), (235, 230, 220))
    ImageDraw.Draw(sign).text((20, 30), "Summer 2026", fill=(20, 20, 20), font=ImageFont.load_default(size=48))
    words = reader.read(np.asarray(sign))
    assert [w.text for w in words] == ["Summer 2026"] and words[0].score > 0.9
    x0, y0, x1, y1 = words[0].box
    assert 0 <= x0 < 40 and 10 <= y0 < 50 and 250 < x1 <= 420 and 60 < y1 <= 120
