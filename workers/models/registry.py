"""The switch from a ModelSpec (shared.model_specs) to the adapter that serves it.

Stages ask here for their segmenter or generator; `onbrand models check` (which runs
``python -m workers.models.registry``) loads every configured model through the very same
function, offline, and names the stage and setting of anything that cannot be loaded.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from dataclasses import dataclass
from typing import Any

from shared.config import Settings, get_settings
from shared.model_specs import ModelSpec, model_specs

# adapter name -> module with ``load(spec)``; embedded adapters are the module itself.
LOADERS = {
    "sam": "workers.models.sam",
    "segment-anything": "workers.models.sam_original",
    "sd-inpaint": "workers.models.sd_inpaint",
    "dinov2": "workers.models.dinov2",
    "laion": "workers.models.laion",
}
EMBEDDED = {
    "matting": "workers.imaging.matting",
    "compositor": "workers.imaging.compositor",
    "classical": "workers.checks.aesthetic",
}


def load(spec: ModelSpec) -> Any:
    """The loaded adapter (cached per process by the adapter module itself)."""
    if spec.adapter in EMBEDDED:
        return importlib.import_module(EMBEDDED[spec.adapter])
    if spec.adapter not in LOADERS:
        raise ValueError(f"spec.adapter: no adapter named {spec.adapter!r} (stage {spec.stage})")
    return importlib.import_module(LOADERS[spec.adapter]).load(spec)


def _load_language(spec: ModelSpec, settings: Settings) -> Any:
    if spec.adapter == "text-embedder":
        from workers.models import text_embedder

        return text_embedder.load(settings)
    if spec.adapter == "clip":
        from workers.models import clip_embedder

        return clip_embedder.load(settings)
    from workers.models import llm_local

    return llm_local.load(settings)


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
