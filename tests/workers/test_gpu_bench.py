"""tests/bench/gpu_bench.py, the GPU throughput script: its configs are the real architectures, and its
``--smoke`` run (CPU, tiny configs) measures every planned case and writes numbers for each, so the one
short run a GPU lease allows does not fail on plumbing."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.bench import gpu_bench

ROOT = Path(__file__).resolve().parents[2]


def test_configs_build_the_checkpoints_architectures() -> None:
    """Parameter counts of the published checkpoints (SD 1.5 and SDXL UNets plus the 5 extra input channels
    of inpainting x 320 x 3 x 3; SAM ViT-H's image encoder; DINOv2-L), built on the meta device."""
    import torch

    meta = torch.device("meta")
    counts = {
        spec.name: sum(p.numel() for p in build(spec, meta).parameters())
        for spec, build in (
            (gpu_bench.SD15, gpu_bench.build_unet),
            (gpu_bench.SDXL, gpu_bench.build_unet),
            (gpu_bench.SAM_H, gpu_bench.build_encoder),
            (gpu_bench.DINOV2_L, gpu_bench.build_encoder),
        )
    }
    assert counts == {"sd15": 859_535_364, "sdxl": 2_567_478_084, "sam-vit-h": 637_026_048, "dinov2-l": 304_368_640}


def test_flop_counts_scale_with_the_latent_and_feed_the_estimates() -> None:
    sd15 = {px: gpu_bench.unet_flops(gpu_bench.SD15, px) for px in (512, 1024)}
    # 4x the tokens, and attention grows with their square: more than 4x, less than 16x
    assert 4 * sd15[512] < sd15[1024] < 16 * sd15[512]
    for px, flops in sd15.items():  # the budget's assumed figures are these counts
        assert math.isclose(flops, gpu_bench.assumed_flops(gpu_bench.SD15, px, smoke=False), rel_tol=0.01)


def test_plan_puts_the_anchors_first_and_covers_the_matrix() -> None:
    ids = [case.id for case in gpu_bench.plan(gpu_bench.FULL)]
    assert len(ids) == len(set(ids)) == 2 * 2 * 2 * 2 * 3 + 12 + 1  # UNets x px x dtype x compile x batch
    assert ids[:6] == [f"unet/{m}/{px}/b{b}/bf16/eager" for m, px in (("sd15", 512), ("sdxl", 1024)) for b in (1, 4, 8)]
    assert (
        ids.index("oom/sdxl/1024/fp16")
        < ids.index("unet/sd15/512/b1/bf16/compiled")
        < ids.index("unet/sd15/512/b1/fp16/eager")
    )


def test_deadline_stops_a_case_that_overruns() -> None:
    began = time.monotonic()
    with pytest.raises(gpu_bench.CaseTimeout), gpu_bench.deadline(0.05):
        time.sleep(5)
    assert time.monotonic() - began < 2


def test_no_budget_skips_every_case_and_says_why(tmp_path: Path) -> None:
    assert gpu_bench.main(["--smoke", "--out", str(tmp_path), "--budget-s", "0"]) == 0
    data = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert [c["id"] for c in data["cases"]] == [c.id for c in gpu_bench.plan(gpu_bench.SMOKE)]
    assert all(c["status"] == "skipped" and c["reason"].startswith("budget:") for c in data["cases"])
    assert "Not measured:" in (tmp_path / "gpu_bench.md").read_text()


def test_a_failing_case_is_recorded_and_the_others_still_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: gpu_bench.Bench, *args: Any) -> dict[str, Any]:
        raise RuntimeError("no kernel image is available")

    monkeypatch.setattr(gpu_bench.Bench, "encoder_case", broken)
    code = gpu_bench.main(["--smoke", "--out", str(tmp_path), "--only", "encoder/dinov2|oom"])
    cases = {c["id"]: c for c in json.loads((tmp_path / "gpu_bench.json").read_text())["cases"]}
    assert code == 1
    assert {c["status"] for i, c in cases.items() if i.startswith("encoder/")} == {"error"}
    assert "no kernel image" in cases["encoder/dinov2-l/28/b1/fp16"]["reason"]
    assert cases["oom/sdxl/32/fp16"]["status"] == "ok"


def test_a_failed_compile_is_not_retried_at_the_next_batch_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def failing(self: gpu_bench.Bench, spec: gpu_bench.UnetSpec, *args: Any) -> dict[str, Any]:
        raise RuntimeError("inductor: compile failed")

    monkeypatch.setattr(gpu_bench.Bench, "unet_case", failing)
    assert gpu_bench.main(["--smoke", "--out", str(tmp_path), "--only", "compiled"]) == 1
    cases = json.loads((tmp_path / "gpu_bench.json").read_text())["cases"]
    assert [(c["id"], c["status"]) for c in cases] == [
        ("unet/sdxl/32/b1/bf16/compiled", "error"),
        ("unet/sdxl/32/b2/bf16/compiled", "skipped"),
    ]
    assert cases[1]["reason"] == "its compile failed in unet/sdxl/32/b1/bf16/compiled"


def test_eager_unet_cases_measure_the_loop(tmp_path: Path) -> None:
    """In process, the cheapest slice of --smoke: the tiny SD 1.5-shaped UNet, eager, both batch sizes."""
    assert (
        gpu_bench.main(["--smoke", "--out", str(tmp_path), "--only", "sd15/32/b./bf16/eager", "--peak-tflops", "1"])
        == 0
    )
    cases = json.loads((tmp_path / "gpu_bench.json").read_text())["cases"]
    assert [c["id"] for c in cases] == ["unet/sd15/32/b1/bf16/eager", "unet/sd15/32/b2/bf16/eager"]
    for case in cases:
        assert case["status"] == "ok", case
        check_unet(case)
    # FLOPs are linear in the batch: the b2 call counts twice the b1 call
    assert math.isclose(cases[1]["gflop_per_unet_call"], 2 * cases[0]["gflop_per_unet_call"], rel_tol=1e-3)


@pytest.mark.slow  # 13-15 s on 2 cores (32-47 s while another suite ran on them)
def test_smoke_run_measures_every_case(tmp_path: Path) -> None:
    """The command a GPU run uses, with --smoke: a subprocess from the repository root, as on the device."""
    command = [sys.executable, "-m", "tests.bench.gpu_bench", "--smoke", "--out", str(tmp_path), "--peak-tflops", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((tmp_path / "gpu_bench.json").read_text())
    cases = {c["id"]: c for c in data["cases"]}
    assert list(cases) == [c.id for c in gpu_bench.plan(gpu_bench.SMOKE)]
    assert {c["status"] for c in cases.values()} == {"ok"}, [c.get("reason") for c in cases.values()]
    for case in cases.values():
        if case["kind"] == "unet":
            check_unet(case)
        elif case["kind"] == "encoder":
            assert case["images_per_s"] > 0 and case["tflops"] > 0 and case["peak_share"] > 0, case
            assert case["attention"] == "sdpa"
    # the compiled case at a new shape captured a graph; the next batch size reused it (batch is dynamic)
    assert cases["unet/sdxl/32/b1/bf16/compiled"]["dynamo_graphs_compiled"] >= 1
    assert cases["unet/sdxl/32/b1/bf16/eager"]["dynamo_graphs_compiled"] == 0
    oom = cases["oom/sdxl/32/fp16"]
    assert (oom["requested_batch"], oom["settled_batch"], oom["ooms"], oom["delivered"]) == (8, 2, 2, 8)
    assert oom["simulated"] is True
    table = (tmp_path / "gpu_bench.md").read_text()
    assert table.count("\n| sd15 | 32 |") + table.count("\n| sdxl | 32 |") == sum(
        c["kind"] == "unet" for c in cases.values()
    )
    assert "settled on 2 after 2 OOM(s)" in table and "SMOKE" in table


def check_unet(case: dict[str, Any]) -> None:
    """A measured UNet case: CFG-doubled batch, positive figures that agree with each other."""
    assert case["steps"] == 2 and case["unet_batch"] == 2 * case["batch"]  # classifier-free guidance
    assert case["loop_s"] > 0 and case["images_per_s"] > 0 and case["tflops"] > 0 and case["peak_share"] > 0
    assert math.isclose(case["s_per_image"] * case["batch"], case["loop_s"], rel_tol=0.01)
    assert math.isclose(case["images_per_s"] * case["s_per_image"], 1.0, rel_tol=0.01)
    assert case["finite"] is True
