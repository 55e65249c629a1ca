"""The switch from a ModelSpec (shared.model_specs) to the adapter that serves it.

Stages ask here for their role, typed by :mod:`workers.models.roles`: :func:`segmenter`,
:func:`generator` (or :func:`compositor`, the CPU default), :func:`image_embedder`, :func:`scorer`;
retrieval and the local LLM through :func:`text_embedder`, :func:`image_text_embedder` and
:func:`local_language_model`. `onbrand models check` (which runs ``python -m workers.models.registry``)
loads every configured model through the very same loaders, offline, and names the stage and setting
of anything that cannot be loaded.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from shared.config import Settings, get_settings
from shared.model_specs import ModelSpec, model_specs
from workers.models.roles import (
    Compositor,
    Generator,
    ImageEmbedder,
    ImageTextEmbedder,
    LocalLanguageModel,
    Model,
    Scorer,
    Segmenter,
    TextEmbedder,
)

R = TypeVar("R")

# Every loader imports its adapter lazily: importing the registry (the CLI's `models check`) loads nothing.
# Each adapter caches what it loads per process; the embedded ones are modules that load no weights.


def _matting(spec: ModelSpec) -> Segmenter:
    """The default chooser, with ISNet in its chain when the pulled weights are there (else it says why)."""
    from pathlib import Path

    from workers.imaging import matting

    path = str(spec.option("isnet", "") or "")
    if not path:
        return matting.Chooser(absent="ISNet disabled (ONBRAND_ISNET_MODEL is empty)")
    if not Path(path).is_file():
        return matting.Chooser(absent=f"ISNet weights absent at {path} (run `onbrand models pull`)")
    from workers.models import isnet

    return matting.Chooser(isnet.load(path).predict)


def _sam(spec: ModelSpec) -> Segmenter:
    from workers.models import sam

    return sam.load(spec)


def _sam_original(spec: ModelSpec) -> Segmenter:
    from workers.models import sam_original

    return sam_original.load(spec)


def _sd_inpaint(spec: ModelSpec) -> Generator:
    from workers.models import sd_inpaint

    return sd_inpaint.load(spec)


def _compositor(spec: ModelSpec) -> Compositor:
    from workers.imaging import compositor

    return compositor


def _dinov2(spec: ModelSpec) -> ImageEmbedder:
    from workers.models import dinov2

    return dinov2.load(spec)


def _classical(spec: ModelSpec) -> Scorer:
    from workers.checks import aesthetic

    return aesthetic


def _laion(spec: ModelSpec) -> Scorer:
    from workers.models import laion

    return laion.load(spec)


# adapter name -> loader, one table per role
SEGMENTERS: dict[str, Callable[[ModelSpec], Segmenter]] = {
    "matting": _matting,
    "sam": _sam,
    "segment-anything": _sam_original,
}
GENERATORS: dict[str, Callable[[ModelSpec], Generator]] = {"sd-inpaint": _sd_inpaint}
COMPOSITORS: dict[str, Callable[[ModelSpec], Compositor]] = {"compositor": _compositor}
IMAGE_EMBEDDERS: dict[str, Callable[[ModelSpec], ImageEmbedder]] = {"dinov2": _dinov2}
SCORERS: dict[str, Callable[[ModelSpec], Scorer]] = {"classical": _classical, "laion": _laion}
EMBEDDED = frozenset({"matting", "compositor", "classical"})  # pixel code in imaging/ and checks/: no weights


def _pick(table: dict[str, Callable[[ModelSpec], R]], spec: ModelSpec, role: str) -> R:
    if spec.adapter not in table:
        raise ValueError(f"spec.adapter: {spec.adapter!r} is no {role} (stage {spec.stage}; one of {sorted(table)})")
    return table[spec.adapter](spec)


def segmenter(spec: ModelSpec) -> Segmenter:
    """The segment stage's model: matting (the default chooser: alpha, ISNet, GrabCut), sam or segment-anything."""
    return _pick(SEGMENTERS, spec, "segmenter")


def generator(spec: ModelSpec) -> Generator:
    """The generate stage's inpainting model (sd-inpaint); the compositor default is :func:`compositor`."""
    return _pick(GENERATORS, spec, "generator")


def compositor(spec: ModelSpec) -> Compositor:
    """The generate stage's embedded default (workers.imaging.compositor)."""
    return _pick(COMPOSITORS, spec, "compositor")


def image_embedder(spec: ModelSpec) -> ImageEmbedder:
    """QC's image embedder (dinov2)."""
    return _pick(IMAGE_EMBEDDERS, spec, "image embedder")


def scorer(spec: ModelSpec) -> Scorer:
    """The rank stage's aesthetic scorer: classical or laion."""
    return _pick(SCORERS, spec, "scorer")


def load(spec: ModelSpec) -> Model:
    """The adapter of any segment/generate/qc/rank spec, by its adapter name (warm-up, models check).

    Stages call the role's own function instead (:func:`segmenter`, ...), which is typed for the role.
    """
    for table in (SEGMENTERS, GENERATORS, COMPOSITORS, IMAGE_EMBEDDERS, SCORERS):
        if spec.adapter in table:
            return table[spec.adapter](spec)
    raise ValueError(f"spec.adapter: no adapter named {spec.adapter!r} (stage {spec.stage})")


def text_embedder(settings: Settings | None = None) -> TextEmbedder:
    """The retrieval text embedder, its weights loaded (they are cached per process)."""
    from workers.models import text_embedder as adapter

    adapter.load(settings)
    return adapter


def image_text_embedder(settings: Settings | None = None) -> ImageTextEmbedder:
    """The CLIP embedder, its weights loaded; RuntimeError when none is configured."""
    from workers.models import clip_embedder as adapter

    adapter.load(settings)
    return adapter


def local_language_model(settings: Settings | None = None) -> LocalLanguageModel:
    """The in-process LLM, its weights loaded."""
    from workers.models import llm_local as adapter

    adapter.load(settings)
    return adapter


def _load_language(spec: ModelSpec, settings: Settings) -> None:
    if spec.adapter == "text-embedder":
        text_embedder(settings)
    elif spec.adapter == "clip":
        image_text_embedder(settings)
    else:
        local_language_model(settings)


@dataclass
class Check:
    spec: ModelSpec
    ok: bool
    seconds: float
    detail: str


def check_one(spec: ModelSpec, settings: Settings) -> Check:
    started = time.perf_counter()
    try:
        if spec.stage in ("retrieve", "llm"):
            _load_language(spec, settings)
        else:
            load(spec)
    except Exception as exc:  # noqa: BLE001 - the report names every failure; nothing is raised
        return Check(spec, False, time.perf_counter() - started, f"{type(exc).__name__}: {exc}")
    detail = "embedded" if spec.adapter in EMBEDDED else f"loaded from {spec.source or 'the packaged default'}"
    return Check(spec, True, time.perf_counter() - started, detail)


def check(settings: Settings | None = None) -> list[Check]:
    settings = settings or get_settings()
    return [check_one(spec, settings) for spec in model_specs(settings)]


def main() -> int:
    """Print one line per configured model; exit 1 when any is missing."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a check must never download: report what is here
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    results = check()
    for r in results:
        what = f"{r.spec.stage:<9} {r.spec.adapter:<17} {r.spec.model or '(embedded)'}"
        print(f"{'ok     ' if r.ok else 'MISSING'} {what}  [{r.seconds:.1f} s] {r.detail}")
    missing = [r for r in results if not r.ok]
    print(
        f"{len(results) - len(missing)} of {len(results)} models load"
        + (f"; missing: {', '.join(f'{r.spec.stage} ({r.spec.adapter})' for r in missing)}" if missing else "")
    )
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
