"""Language-stage quality on the labelled briefs (tests/bench/llm_eval.py): rules and the real local SmolLM2.

The local backend takes a few seconds per brief on CPU. It runs on all 42 briefs when a probe on the first
PROBE briefs projects the whole set under LOCAL_BUDGET_S; otherwise on the first LOCAL_SUBSET briefs, and
the printed line says so. Only sanity is asserted: the figures are printed, not judged.
"""

from __future__ import annotations

import pytest

from shared.config import Settings
from tests.bench import llm_eval

PROBE = 3
LOCAL_BUDGET_S = 300.0
LOCAL_SUBSET = 20

pytestmark = [pytest.mark.bench, pytest.mark.timeout(1800)]


def _print(report: llm_eval.Report) -> None:
    for line in report.lines():
        print(line, flush=True)


def test_rules_backend() -> None:
    briefs = llm_eval.load()
    report = llm_eval.evaluate("rules", Settings(), briefs)
    print()
    _print(report)
    assert len(report.rows) == len(briefs) == 42
    assert report.compliance["all"] == 1.0
    assert report.decompose_fallback_rate == 0.0


def test_local_backend() -> None:
    briefs = llm_eval.load()
    probe = llm_eval.evaluate("local", Settings(), briefs[:PROBE])
    per_brief = probe.mean_latency_s
    projected = per_brief * len(briefs)
    n = len(briefs) if projected <= LOCAL_BUDGET_S else LOCAL_SUBSET
    print()
    print(
        f"{llm_eval.PREFIX} local   probe {PROBE} briefs: {per_brief:.2f}s/brief, projected "
        f"{projected:.0f}s for {len(briefs)} -> {'all' if n == len(briefs) else f'subset: first {n}'} briefs",
        flush=True,
    )
    rest = llm_eval.evaluate("local", Settings(), briefs[PROBE:n], warmup=False)  # model already loaded
    report = llm_eval.Report("local", rows=probe.rows + rest.rows, warmup_s=probe.warmup_s)
    _print(report)
    assert len(report.rows) == n
    assert [r.id for r in report.rows] == [b["id"] for b in briefs[:n]]
