"""The `onbrand` command's process entry points that the fixtures do not already exercise."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from shared.cli.procs import Processes, base_env, onbrand_cmd


def test_tenants_create_prints_json_with_a_key(fresh_db: str) -> None:
    out = subprocess.run(
        onbrand_cmd("tenants", "create", "acme"), env={**os.environ}, capture_output=True, text=True, check=True
    ).stdout
    created = json.loads(out)
    assert created["name"] == "acme" and created["api_key"].startswith("onb_") and created["tenant_id"]


def test_worker_rejects_an_unknown_pool(tmp_path: Path) -> None:
    done = subprocess.run(
        onbrand_cmd("worker", "--pool", "tpu"), env=base_env(tmp_path), capture_output=True, text=True
    )
    assert done.returncode == 2 and "pool must be cpu, gpu or all" in done.stderr


def test_beat_runs_the_sweep_schedule(stack_urls: dict[str, str], tmp_path: Path) -> None:
    env = base_env(
        tmp_path / "home",
        ONBRAND_REDIS_URL=stack_urls["redis_url"].rsplit("/", 1)[0] + "/5",
        ONBRAND_DATABASE_URL=stack_urls["database_url"],
    )
    procs = Processes(env=env, logs=tmp_path / "logs")
    proc = procs.start("beat", "beat")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and "beat: Starting" not in (tmp_path / "logs" / "beat.log").read_text():
            time.sleep(0.2)
        assert proc.poll() is None and "beat: Starting" in (tmp_path / "logs" / "beat.log").read_text()
        assert list((tmp_path / "home").glob("celerybeat-schedule*"))
    finally:
        procs.stop_all()


def test_a_gpu_worker_runs_one_process(tmp_path: Path) -> None:
    done = subprocess.run(
        onbrand_cmd("worker", "--pool", "gpu", "--concurrency", "2"),
        env=base_env(tmp_path),
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and "one process per GPU" in done.stderr


def test_models_check_names_the_stage_of_each_missing_model(tmp_path: Path) -> None:
    env = base_env(
        tmp_path,
        ONBRAND_LLM_BACKEND="rules",
        ONBRAND_SEGMENTER="sam",
        ONBRAND_SAM_MODEL=str(tmp_path / "no-such-sam"),
        ONBRAND_GENERATOR="sd-inpaint",
        ONBRAND_SD_MODEL="acme/not-in-the-offline-cache",
        ONBRAND_DINOV2_MODEL=str(tmp_path / "no-dino"),
        ONBRAND_AESTHETIC="laion",
        ONBRAND_AESTHETIC_CLIP_MODEL=str(tmp_path / "no-clip"),
    )
    done = subprocess.run(onbrand_cmd("models", "check"), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("ok") and "retrieve" in line for line in lines)  # the packaged text model loads
    sam = next(line for line in lines if "segment" in line and "sam" in line)
    sd = next(line for line in lines if "generate" in line and "sd-inpaint" in line)
    assert sam.startswith("MISSING") and "no-such-sam" in sam and "local path" in sam
    assert sd.startswith("MISSING") and "acme/not-in-the-offline-cache" in sd and "HF cache" in sd
    dino = next(line for line in lines if "qc" in line and "dinov2" in line)
    assert dino.startswith("MISSING") and "no-dino" in dino
    assert lines[-1] == ("1 of 5 models load; missing: segment (sam), generate (sd-inpaint), qc (dinov2), rank (laion)")


def test_models_check_loads_the_tiny_production_models(tmp_path: Path) -> None:
    from tests.tiny_sam import build_tiny_sam
    from tests.tiny_sd import build_tiny_sd_inpaint
    from tests.tiny_vision import build_tiny_aesthetic_mlp, build_tiny_clip, build_tiny_dinov2

    env = base_env(
        tmp_path,
        ONBRAND_LLM_BACKEND="rules",
        ONBRAND_SEGMENTER="sam",
        ONBRAND_GENERATOR="sd-inpaint",
        ONBRAND_MODELS_DIR=str(tmp_path / "models"),
        ONBRAND_SAM_MODEL="tiny-sam",
        ONBRAND_SD_MODEL="tiny-sd",
        ONBRAND_DINOV2_MODEL="tiny-dinov2",
        ONBRAND_AESTHETIC="laion",
        ONBRAND_AESTHETIC_CLIP_MODEL="tiny-clip",
        ONBRAND_AESTHETIC_MLP="mlp.safetensors",
    )  # names under the models dir, as a mounted volume holds
    build_tiny_sam(tmp_path / "models" / "tiny-sam")
    build_tiny_sd_inpaint(tmp_path / "models" / "tiny-sd")
    build_tiny_dinov2(tmp_path / "models" / "tiny-dinov2")
    build_tiny_clip(tmp_path / "models" / "tiny-clip")
    build_tiny_aesthetic_mlp(tmp_path / "models" / "mlp", suffix=".safetensors")
    done = subprocess.run(onbrand_cmd("models", "check"), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.splitlines()[-1] == "5 of 5 models load"
    assert f"loaded from {tmp_path / 'models' / 'tiny-sd'}" in done.stdout


def test_tenants_limits_shows_sets_and_unsets_a_tenants_overrides(fresh_db: str) -> None:
    def limits(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            onbrand_cmd("tenants", "limits", *args), env={**os.environ}, capture_output=True, text=True
        )

    tenant = json.loads(
        subprocess.run(
            onbrand_cmd("tenants", "create", "acme"), env={**os.environ}, capture_output=True, text=True, check=True
        ).stdout
    )["tenant_id"]
    shown = json.loads(limits(tenant).stdout)
    assert shown["overrides"] == {} and shown["effective"]["max_concurrent_campaigns"] == 10
    changed = json.loads(limits(tenant, "--set", "max_concurrent_campaigns=50", "--set", "gpu_share=2.5").stdout)
    assert changed["overrides"] == {"max_concurrent_campaigns": 50, "gpu_share": 2.5}
    assert changed["effective"]["max_concurrent_campaigns"] == 50 and changed["effective"]["gpu_share"] == 2.5
    reset = json.loads(limits(tenant, "--unset", "gpu_share").stdout)
    assert reset["overrides"] == {"max_concurrent_campaigns": 50} and reset["effective"]["gpu_share"] == 1.0
    for bad in (["--set", "gpu_share=0"], ["--set", "no_such_limit=1"], ["--unset", "no_such_limit"]):
        refused = limits(tenant, *bad)
        assert refused.returncode == 2 and "Invalid value" in refused.stderr, (bad, refused.stderr)
    assert json.loads(limits(tenant).stdout)["overrides"] == {"max_concurrent_campaigns": 50}  # nothing half-applied
