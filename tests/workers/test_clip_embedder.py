"""CLIP embedder against a tiny random CLIP saved to disk and loaded back through the
adapter's public functions (the same path a configured worker takes). No downloads."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from shared.config import Settings, get_settings
from tests.factories import CLIP_PROJECTION_DIM
from workers.models import clip_embedder

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def configured(clip_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ONBRAND_IMAGE_EMBEDDING_MODEL", str(clip_dir))
    get_settings.cache_clear()
    yield clip_dir
    get_settings.cache_clear()


def _image(seed: int, size: tuple[int, int] = (48, 40), mode: str = "RGB") -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], len(mode)), dtype=np.uint8)
    return Image.fromarray(pixels, mode)


def _assert_unit(vectors: list[list[float]]) -> None:
    for v in vectors:
        assert len(v) == CLIP_PROJECTION_DIM
        assert math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-5)


def test_model_id_enabled_and_dim(configured: Path) -> None:
    assert clip_embedder.enabled()
    assert clip_embedder.model_id() == "tiny-clip"
    assert clip_embedder.dim() == CLIP_PROJECTION_DIM
    model, tokenizer, processor = clip_embedder.load()
    assert clip_embedder.load() == (model, tokenizer, processor)  # cached per path
    assert not model.training


def test_model_id_for_hub_ids() -> None:
    assert clip_embedder.model_id(Settings(image_embedding_model="openai/clip-vit-base-patch32")) == (
        "openai/clip-vit-base-patch32"
    )
    assert clip_embedder.model_id(Settings(image_embedding_model="")) == ""


def test_model_id_prefers_recorded_hub_origin(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"_name_or_path": "openai/clip-vit-base-patch32"}))
    assert clip_embedder.model_id(Settings(image_embedding_model=str(tmp_path))) == "openai/clip-vit-base-patch32"
    (tmp_path / "config.json").write_text(json.dumps({"_name_or_path": "/home/someone/clip"}))
    assert clip_embedder.model_id(Settings(image_embedding_model=str(tmp_path))) == tmp_path.name


def test_images_unit_deterministic_and_distinct(configured: Path) -> None:
    images = [_image(1), _image(2, size=(20, 64))]
    first = clip_embedder.embed_images(images)
    _assert_unit(first)
    assert clip_embedder.embed_images(images) == first
    assert not np.allclose(first[0], first[1])


def test_rgba_is_composited_on_white(configured: Path) -> None:
    rgba = _image(3, mode="RGBA")
    [vector] = clip_embedder.embed_images([rgba])
    _assert_unit([vector])
    transparent = Image.new("RGBA", (32, 32), (0, 0, 0, 0))  # black, but fully see-through
    assert np.allclose(
        clip_embedder.embed_images([transparent])[0],
        clip_embedder.embed_images([Image.new("RGB", (32, 32), "white")])[0],
        atol=1e-6,
    )


def test_texts_share_the_image_space(configured: Path) -> None:
    texts = ["the cat", "the dog", "an orange mug on a wooden table " * 40]  # last one is cut to 77 tokens
    vectors = clip_embedder.embed_texts(texts)
    _assert_unit(vectors)
    assert len(vectors[0]) == len(clip_embedder.embed_images([_image(4)])[0])
    assert not np.allclose(vectors[0], vectors[1])
    assert clip_embedder.embed_texts(texts) == vectors
    assert np.allclose(clip_embedder.embed_texts(texts[:1])[0], vectors[0], atol=1e-5)  # padding does not leak


def test_batches_keep_order(configured: Path) -> None:
    images = [_image(seed, size=(24 + seed, 40)) for seed in range(40)]
    together = clip_embedder.embed_images(images)
    assert len(together) == 40
    alone = [clip_embedder.embed_images([image])[0] for image in images]
    assert np.allclose(together, alone, atol=1e-5)


def test_empty_lists(configured: Path) -> None:
    assert clip_embedder.embed_images([]) == []
    assert clip_embedder.embed_texts([]) == []


def test_bad_inputs_name_the_argument(configured: Path) -> None:
    with pytest.raises(TypeError, match="images"):
        clip_embedder.embed_images(_image(5))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"images\[1\]"):
        clip_embedder.embed_images([_image(5), np.zeros((4, 4, 3))])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="texts"):
        clip_embedder.embed_texts("the cat")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"texts\[0\]"):
        clip_embedder.embed_texts([3])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        clip_embedder.embed_texts(["the cat", "  "])


def test_not_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ONBRAND_IMAGE_EMBEDDING_MODEL", "")
    get_settings.cache_clear()
    try:
        assert not clip_embedder.enabled()
        for call in (clip_embedder.load, clip_embedder.dim):
            with pytest.raises(RuntimeError, match="image_embedding_model is not configured"):
                call()
        with pytest.raises(RuntimeError, match="image_embedding_model is not configured"):
            clip_embedder.embed_images([_image(6)])
        with pytest.raises(RuntimeError, match="image_embedding_model is not configured"):
            clip_embedder.embed_texts(["the cat"])
    finally:
        get_settings.cache_clear()


def test_missing_directory_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="image_embedding_model"):
        clip_embedder.load(Settings(image_embedding_model=str(tmp_path / "nope")))


def test_import_does_not_load_torch() -> None:
    code = "import sys, workers.models.clip_embedder; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
