"""The one place that maps stage -> adapter -> model (path or hub id), dtype and device.

Pure configuration: no torch here (shared/ never imports the model stack). The workers'
adapters receive a :class:`ModelSpec` and resolve ``auto`` device and dtype themselves;
`onbrand models check` loads every spec (offline) and names the stage of what is missing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.config import Settings

EMBEDDED = ""  # model of an embedded adapter: nothing to download, nothing to configure


@dataclass(frozen=True)
class ModelSpec:
    stage: str  # pipeline stage (segment, generate, ...) the model serves
    adapter: str  # adapter name as configured (sam, sd-inpaint, matting, ...)
    model: str  # reference as configured: local path, name under models_dir, hub id, or EMBEDDED
    source: str  # what loading uses: the resolved local path when it exists, else the reference itself
    device: str = "auto"  # auto | cpu | cuda (resolved by the adapter, which knows torch)
    dtype: str = "auto"  # auto | float16 | bfloat16 (CUDA only; CPU always runs float32)
    options: tuple[tuple[str, Any], ...] = field(default=())  # adapter knobs, hashable for per-process caches

    @property
    def local(self) -> bool:
        """The source is on disk (hub ids resolve through the HF cache, offline in CI)."""
        return bool(self.source) and Path(self.source).exists()

    @property
    def embedded(self) -> bool:
        return self.model == EMBEDDED

    def option(self, name: str, default: Any = None) -> Any:
        return dict(self.options).get(name, default)


def resolve(reference: str, settings: Settings) -> str:
    """A local path as given, a name under models_dir when it exists there, else the hub id."""
    if not reference:
        return reference
    path = Path(reference).expanduser()
    if path.is_absolute() or path.exists():
        return str(path)
    under = settings.model_root / reference
    return str(under) if under.exists() else reference


def _spec(stage: str, adapter: str, reference: str, settings: Settings, **options: Any) -> ModelSpec:
    return ModelSpec(
        stage,
        adapter,
        reference,
        resolve(reference, settings),
        settings.model_device,
        settings.model_dtype,
        tuple(sorted(options.items())),
    )


def segment_spec(settings: Settings) -> ModelSpec:
    if settings.segmenter == "sam":
        return _spec("segment", "sam", settings.sam_model, settings)
    if settings.segmenter == "segment-anything":
        return _spec(
            "segment", "segment-anything", settings.sam_checkpoint, settings, model_type=settings.sam_model_type
        )
    # The embedded segmenter uses ISNet's weights for opaque shots when `onbrand models pull` fetched them:
    # the option carries the resolved path (empty = classical only), the model stays "embedded".
    isnet = resolve(settings.isnet_model, settings) if settings.isnet_model else ""
    return _spec("segment", "matting", EMBEDDED, settings, isnet=isnet)


def generate_spec(settings: Settings) -> ModelSpec:
    if settings.generator == "sd-inpaint":
        return _spec(
            "generate",
            "sd-inpaint",
            settings.sd_model,
            settings,
            mode=settings.sd_mode,
            steps=settings.sd_steps,
            guidance=settings.sd_guidance,
            strength=settings.sd_strength,
            resolution=settings.sd_resolution,
            batch_size=settings.sd_batch_size,
            torch_compile=settings.torch_compile,
            channels_last=settings.channels_last,
        )
    return _spec("generate", "compositor", EMBEDDED, settings)


def fidelity_spec(settings: Settings) -> ModelSpec | None:
    """DINOv2 for QC when configured; None = product fidelity from pixels and edges only."""
    if not settings.dinov2_model:
        return None
    # 224 px as DINOv2's own processor (the checkpoints' config says 518: ~5x the compute per crop)
    return _spec("qc", "dinov2", settings.dinov2_model, settings, image_size=224)


def aesthetic_spec(settings: Settings) -> ModelSpec:
    if settings.aesthetic == "laion":
        return _spec(
            "rank", "laion", settings.aesthetic_clip_model, settings, mlp=resolve(settings.aesthetic_mlp, settings)
        )
    return _spec("rank", "classical", EMBEDDED, settings)


def language_specs(settings: Settings) -> list[ModelSpec]:
    """The retrieval and local-LLM models (CPU adapters; hosted LLMs are not loaded)."""
    specs = [
        ModelSpec(
            "retrieve",
            "text-embedder",
            settings.text_embedding_model,
            resolve(settings.text_embedding_model, settings),
            "cpu",
        )
    ]
    if settings.image_embedding_model:
        specs.append(
            ModelSpec(
                "retrieve",
                "clip",
                settings.image_embedding_model,
                resolve(settings.image_embedding_model, settings),
                "cpu",
            )
        )
    if "local" in {settings.llm_backend, *settings.llm_stage_backends.values()}:
        gguf = str(settings.llm_gguf_path or "")
        specs.append(ModelSpec("llm", "local", gguf, gguf, "cpu"))
    return specs


def model_specs(settings: Settings) -> list[ModelSpec]:
    """Every model this configuration loads, in pipeline order."""
    fidelity = fidelity_spec(settings)
    return [
        *language_specs(settings),
        segment_spec(settings),
        generate_spec(settings),
        *([fidelity] if fidelity else []),
        aesthetic_spec(settings),
    ]
