"""CLIP embedder: images and texts as unit vectors in one shared space (projection_dim).

Optional: enabled only when settings.image_embedding_model names a CLIP checkpoint (a
local directory or a hub id; with HF_HUB_OFFLINE=1 a hub id must already be cached).
transformers' CLIPModel, the checkpoint's tokenizer and the PIL/numpy CLIP image
processor are loaded once per process, on CUDA when present, else CPU. torch and
transformers are imported lazily so that importing this module costs nothing in
processes that never embed.
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

if TYPE_CHECKING:
    from shared.config import Settings

BATCH_SIZE = 32  # images are 3x224x224 floats each; 32 keeps a CPU batch well under 1 GB
MAX_IMAGES = 1_000  # one call; larger jobs should page (memory, and one slow request)
MAX_TEXTS = 10_000
BACKDROP = (255, 255, 255)  # product cut-outs are shown on white, so embed them that way

# "owner/name": what a hub id looks like (a relative local path would too, hence the is_dir checks)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

_MODELS: dict[str, tuple[Any, Any, Any]] = {}
_LOCK = threading.Lock()  # Celery thread pools may load concurrently


def _settings(settings: Settings | None) -> Settings:
    if settings is not None:
        return settings
    from shared.config import get_settings

    return get_settings()


def _configured(settings: Settings | None) -> str:
    """The configured checkpoint, '~' expanded; '' when image embeddings are off."""
    value = str(_settings(settings).image_embedding_model or "").strip()
    return str(Path(value).expanduser()) if value.startswith("~") else value


def enabled(settings: Settings | None = None) -> bool:
    """True when settings.image_embedding_model is set."""
    return bool(_configured(settings))


def _require(settings: Settings | None) -> str:
    path = _configured(settings)
    if not path:
        raise RuntimeError(
            "image_embedding_model is not configured (set ONBRAND_IMAGE_EMBEDDING_MODEL to a CLIP "
            "directory or hub id); check clip_embedder.enabled() before embedding images"
        )
    return path


def model_id(settings: Settings | None = None) -> str:
    """Stable id for logs and for tagging stored vectors (re-embed when it changes); '' when off."""
    path = _configured(settings)
    if not path or not Path(path).is_dir():
        return path
    # A checkpoint saved from a hub download remembers where it came from: prefer that name.
    origin = _config_origin(Path(path))
    return origin if _HUB_ID.match(origin) and not Path(origin).exists() else Path(path).name


def _config_origin(directory: Path) -> str:
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return ""
    origin = config.get("_name_or_path") if isinstance(config, dict) else None
    return origin.strip() if isinstance(origin, str) else ""


def load(settings: Settings | None = None) -> tuple[Any, Any, Any]:
    """(model, tokenizer, image_processor) of this process, loaded on first use."""
    path = _require(settings)
    with _LOCK:
        if path not in _MODELS:
            _MODELS[path] = _load_uncached(path)
        return _MODELS[path]


def _load_uncached(path: str) -> tuple[Any, Any, Any]:
    if path.startswith(("/", ".")) and not Path(path).is_dir():
        # transformers would take it for a hub id and fail with a confusing message
        raise FileNotFoundError(f"image_embedding_model: no directory at {path}")
    import torch
    from transformers import AutoTokenizer, CLIPModel

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = CLIPModel.from_pretrained(path)
    # float32 always: transformers 5 keeps a checkpoint's fp16 by default, which CPUs run slowly,
    # and stored vectors must not depend on which worker computed them
    # (transformers wraps PreTrainedModel.to in functools.wraps, whose type does not bind self)
    model = model.to(device=device, dtype=torch.float32).eval()  # type: ignore[call-arg]
    return model, AutoTokenizer.from_pretrained(path), _image_processor(path)


def _image_processor(path: str) -> Any:
    """The PIL/numpy CLIP processor: the fast one needs torchvision, which we do not install."""
    try:
        from transformers import CLIPImageProcessorPil  # transformers >= 5 names the PIL backend
    except ImportError:
        from transformers import CLIPImageProcessor  # 4.x: this class is the slow PIL one

        return CLIPImageProcessor.from_pretrained(path)
    return CLIPImageProcessorPil.from_pretrained(path)


def dim(settings: Settings | None = None) -> int:
    """Length of every vector this model gives (text and image alike)."""
    return int(load(settings)[0].config.projection_dim)


def _check_images(images: list[Image.Image]) -> None:
    if not isinstance(images, (list, tuple)):
        raise TypeError(f"images must be a list of PIL images, got {type(images).__name__}")
    if len(images) > MAX_IMAGES:
        raise ValueError(f"images must hold at most {MAX_IMAGES} items, got {len(images)}")
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise TypeError(f"images[{i}] must be a PIL image, got {type(image).__name__}")
        if image.width < 1 or image.height < 1:
            raise ValueError(f"images[{i}] is empty ({image.width}x{image.height})")


def _check_texts(texts: list[str]) -> None:
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"texts must be a list of str, got {type(texts).__name__}")
    if len(texts) > MAX_TEXTS:
        raise ValueError(f"texts must hold at most {MAX_TEXTS} items, got {len(texts)}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] must be str, got {type(text).__name__}")
        if not text.strip():
            raise ValueError(f"texts[{i}] is empty; CLIP would embed it as a generic, meaningless vector")


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB on a white backdrop. Dropping alpha instead would expose whatever colour the
    transparent pixels happen to hold (often black), which changes the embedding."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        backdrop = Image.new("RGBA", rgba.size, (*BACKDROP, 255))
        return Image.alpha_composite(backdrop, rgba).convert("RGB")
    return image.convert("RGB")


def embed_images(images: list[Image.Image], settings: Settings | None = None) -> list[list[float]]:
    """Unit-length vectors, one per image, in order (batches of BATCH_SIZE)."""
    _check_images(images)
    _require(settings)
    if not images:
        return []
    model, _, processor = load(settings)
    vectors: list[list[float]] = []
    for start in range(0, len(images), BATCH_SIZE):
        batch = [_to_rgb(image) for image in images[start : start + BATCH_SIZE]]
        pixels = processor(images=batch, return_tensors="pt")["pixel_values"]
        vectors += _image_batch(model, pixels)
    return vectors


def embed_texts(texts: list[str], settings: Settings | None = None) -> list[list[float]]:
    """Unit-length vectors, one per text, in order; texts past the model's context are cut."""
    _check_texts(texts)
    _require(settings)
    if not texts:
        return []
    model, tokenizer, _ = load(settings)
    # model_max_length is a huge sentinel when a tokenizer config omits it; the position
    # table is the real limit.
    limit = min(int(tokenizer.model_max_length), int(model.config.text_config.max_position_embeddings))
    vectors: list[list[float]] = []
    for start in range(0, len(texts), BATCH_SIZE):
        tokens = tokenizer(
            list(texts[start : start + BATCH_SIZE]),
            padding=True,
            truncation=True,
            max_length=limit,
            return_tensors="pt",
        )
        vectors += _text_batch(model, tokens["input_ids"], tokens["attention_mask"])
    return vectors


def _image_batch(model: Any, pixels: Any) -> list[list[float]]:
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model.get_image_features(pixel_values=pixels.to(device=device, dtype=torch.float32))
    return _unit_rows(out)


def _text_batch(model: Any, input_ids: Any, attention_mask: Any) -> list[list[float]]:
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        out = model.get_text_features(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device))
    return _unit_rows(out)


def _unit_rows(out: Any) -> list[list[float]]:
    """L2-normalised projected features as Python floats. transformers 4.x returns the
    projected tensor itself, 5.x an output object whose pooler_output it is."""
    import torch

    features = out if isinstance(out, torch.Tensor) else out.pooler_output
    return torch.nn.functional.normalize(features.float(), dim=-1).cpu().tolist()
