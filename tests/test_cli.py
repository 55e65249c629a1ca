"""The `onbrand` command's process entry points that the fixtures do not already exercise."""
from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from shared.procs import Processes, base_env, onbrand_cmd


def test_tenants_create_prints_json_with_a_key(fresh_db: str) -> None:
    out = subprocess.run(onbrand_cmd("tenants", "create", "acme"), env={**os.environ}, capture_output=True,
                         text=True, check=True).stdout
    created = json.loads(out)
    assert created["name"] == "acme" and created["api_key"].startswith("onb_") and created["tenant_id"]


def test_worker_rejects_an_unknown_pool(tmp_path: Path) -> None:
    done = subprocess.run(onbrand_cmd("worker", "--pool", "tpu"), env=base_env(tmp_path), capture_output=True,
                          text=True)
    assert done.returncode == 2 and "pool must be cpu, gpu or all" in done.stderr


def test_beat_runs_the_sweep_schedule(stack_urls: dict[str, str], tmp_path: Path) -> None:
    env = base_env(tmp_path / "home", ONBRAND_REDIS_URL=stack_urls["redis_url"].rsplit("/", 1)[0] + "/5",
                   ONBRAND_DATABASE_URL=stack_urls["database_url"])
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
