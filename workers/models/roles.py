"""What each model role promises the stages: one Protocol per role, modelled on the adapters' real methods.

A stage asks :mod:`workers.models.registry` for its role (``registry.segmenter(spec)``, ...) and gets
one of these types, whichever adapter the configuration names: the embedded CPU defaults (modules in
workers.imaging / workers.checks, which load no weights) and the weight-loading adapters here alike.
Modules satisfy a Protocol through their functions, instances through their methods.

=====================  =======================================  =========================================
role                   adapters                                 used by
=====================  =======================================  =========================================
Segmenter              matting (module), sam, segment-anything  segment stage
Generator              sd-inpaint                               generate stage (sd-inpaint path)
Compositor             compositor (module)                      generate stage (the CPU default path)
ImageEmbedder          dinov2                                   qc: product fidelity, near-duplicates
Scorer                 classical (checks.aesthetic), laion      rank: aesthetic score
TextEmbedder           text_embedder (module)                   retrieval, library
ImageTextEmbedder      clip_embedder (module)                   retrieval, library
LocalLanguageModel     llm_local (module)                       language stages, rules-free local path
ChatModel              llm_openai, llm_bedrock                  language stages and guideline, hosted
=====================  =======================================  =========================================

Type-only imports of the adapters' data classes: importing this module loads no adapter.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from workers.models.llm_api import ChatBackend

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image

    from shared.config import Settings
    from workers.imaging.matting import SegmentResult
    from workers.models.llm_local import FieldSpec, FieldsResult, FillResult
    from workers.models.sd_inpaint import Job, Output


class Segmenter(Protocol):
    """The product's mask in a photo; raises matting.SegmentationError when there is no plausible one."""

    def segment(self, image: Image.Image) -> SegmentResult: ...


class Generator(Protocol):
    """Paints candidates around placed product layers (the product's opaque pixels stay the layer's)."""

    @property
    def device(self) -> torch.device: ...

    def generate(
        self, jobs: Sequence[Job], prompt: str, negative_prompt: str = "", background_prompt: str | None = None
    ) -> list[Output]: ...


class Compositor(Protocol):
    """The embedded generator: composes one placed layer over a scene, no prompt, no weights."""

    def compose(
        self, layer: Image.Image, background: Image.Image, *, drop_shadow: bool = True, harmonise: bool = True
    ) -> Image.Image: ...


class ImageEmbedder(Protocol):
    """Unit image embeddings for QC (fidelity crops, near-duplicate clusters)."""

    def embed(self, images: list[Image.Image]) -> np.ndarray: ...

    def similarity(self, a: list[Image.Image], b: list[Image.Image]) -> list[float]: ...


class Scorer(Protocol):
    """Aesthetic score of a candidate: {"score": 0-10, "parts": {...}, ...}; ``layer`` is the product (RGBA)."""

    def score(self, candidate: Image.Image, layer: Image.Image) -> dict[str, Any]: ...


class TextEmbedder(Protocol):
    """Unit text vectors (retrieval, library search); ``model`` overrides the configured checkpoint."""

    def embed(
        self, texts: list[str], settings: Settings | None = None, model: str | None = None
    ) -> list[list[float]]: ...

    def model_id(self, settings: Settings | None = None, model: str | None = None) -> str: ...


class ImageTextEmbedder(Protocol):
    """Images and texts in one vector space (CLIP); optional: ``enabled`` says whether one is configured."""

    def enabled(self, settings: Settings | None = None) -> bool: ...

    def model_id(self, settings: Settings | None = None) -> str: ...

    def dim(self, settings: Settings | None = None) -> int: ...

    def embed_images(self, images: list[Image.Image], settings: Settings | None = None) -> list[list[float]]: ...

    def embed_texts(self, texts: list[str], settings: Settings | None = None) -> list[list[float]]: ...


class LocalLanguageModel(Protocol):
    """The in-process LLM: structured output by constrained filling of a code-written JSON skeleton."""

    def model_id(self, settings: Settings | None = None) -> str: ...

    def fill(
        self,
        system: str,
        user: str,
        prefix: str,
        max_new_tokens: int,
        *,
        examples: Sequence[tuple[str, str]] = (),
        banned: Sequence[str] = (),
        settings: Settings | None = None,
    ) -> FillResult: ...

    def peek(
        self,
        system: str,
        user: str,
        prefix: str,
        max_new_tokens: int = 2,
        *,
        examples: Sequence[tuple[str, str]] = (),
        settings: Settings | None = None,
    ) -> FillResult: ...

    def generate_fields(
        self,
        system: str,
        user: str,
        fields: Sequence[FieldSpec],
        max_new_tokens: int | None = None,
        *,
        examples: Sequence[tuple[str, str]] = (),
        prefix: str = "{",
        settings: Settings | None = None,
    ) -> FieldsResult: ...


# Hosted chat backends: the Protocol lives beside complete_json, which takes it (llm_api imports nothing
# of ours, so this alias adds no cycle).
ChatModel: TypeAlias = ChatBackend

# Whatever registry.load gives for some spec (warm-up, `onbrand models check`); stages use the role functions.
Model: TypeAlias = Segmenter | Generator | Compositor | ImageEmbedder | Scorer
