"""Compositor throughput at 1024 x 1024: candidates per second per core.

One candidate is the generate stage's pixel work for it: ``place`` + ``compose`` +
``integrity`` (PNG encoding and storage are not counted). The 9 x 3 layouts of one
canvas are composited (a) by one process and (b) split over two processes running at
once. OpenCV is held to one thread per process, so the figures are per core.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from typing import Any

import cv2
import pytest
from PIL import Image

from tests.factories import cutout
from workers.imaging import composition, compositor

CANVAS = (1024, 1024)
TARGET = 10.0  # candidates/s per core
ROUNDS = 3  # each worker times its share this many times and keeps its best (least disturbed) round


def _candidates(cut: Image.Image, layouts: list[composition.Layout], bg: Image.Image) -> dict[str, float]:
    """Seconds spent per step over ``layouts``; every candidate must keep the product exact."""
    spent = {"place": 0.0, "compose": 0.0, "integrity": 0.0}
    for layout in layouts:
        t0 = time.perf_counter()
        layer = composition.place(cut, layout)
        t1 = time.perf_counter()
        image = compositor.compose(layer, bg)
        t2 = time.perf_counter()
        report = composition.integrity(image, layer)
        t3 = time.perf_counter()
        assert report["exact_fraction"] == 1.0 and report["product_sha256"] == report["layer_sha256"]
        spent["place"] += t1 - t0
        spent["compose"] += t2 - t1
        spent["integrity"] += t3 - t2
    return spent


def _worker(share: list[int], start: Any, results: Any) -> None:
    cv2.setNumThreads(1)  # one core per process: the figure is per core
    cut = cutout()
    layouts = composition.plan([CANVAS], cut.size, cutout=cut).layouts
    mine = [layouts[i] for i in share]
    bg = compositor.backdrop(CANVAS, ["#E4572E", "#17BEBB"])
    _candidates(cut, mine[:1], bg)  # warm-up: first calls allocate
    start.wait()  # both workers time the same stretch of the machine
    rounds = [_candidates(cut, mine, bg) for _ in range(ROUNDS)]
    results.put((len(mine), min(rounds, key=lambda r: sum(r.values()))))


def _run(processes: int) -> tuple[float, dict[str, float]]:
    """(candidates/s of all processes together, ms per candidate and step of the first)."""
    ctx = mp.get_context("spawn")  # no forked OpenCV thread pools
    start, results = ctx.Barrier(processes), ctx.Queue()
    shares = [list(range(27))[i::processes] for i in range(processes)]
    workers = [ctx.Process(target=_worker, args=(share, start, results)) for share in shares]
    for p in workers:
        p.start()
    done = [results.get(timeout=600) for _ in workers]
    for p in workers:
        p.join(timeout=60)
        assert p.exitcode == 0
    rate = sum(n for n, _ in done) / max(sum(spent.values()) for _, spent in done)
    n, spent = done[0]
    return rate, {step: 1000 * s / n for step, s in spent.items()}


@pytest.mark.bench
def test_compositor_candidates_per_second() -> None:
    one, steps = _run(1)
    two, _ = _run(2)
    print(
        f"\nBENCH compositor {CANVAS[0]}x{CANVAS[1]}: {one:.1f} candidates/s on 1 core, {two:.1f} on 2 processes "
        f"({two / 2:.1f}/s per core, target >= {TARGET:g})"
    )
    print("BENCH   per candidate on 1 core: " + ", ".join(f"{k} {v:.1f} ms" for k, v in steps.items()))
    assert one > 0.5 and two > 0.5  # sanity only: the target is reported, not asserted
