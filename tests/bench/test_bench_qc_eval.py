"""The QC checks' measured rates on both splits of the labelled QC set (workers.evaluation.qc_set).

Prints, per split, every registered check (workers.evaluation.qc_rates.CHECKS) with its defect, TPR on
that defect, FPR on clean candidates, the sample counts and how many verdicts were "unchecked"; then
the held-out figures as ``workers.checks.rates.MEASURED`` source. The README's "Measured QC rates"
table is the held-out one printed here.
"""

from __future__ import annotations

import time

import pytest

from workers.evaluation import qc_rates

pytestmark = pytest.mark.bench


def test_bench_qc_eval_rates() -> None:
    for split in ("tune", "heldout"):
        started = time.perf_counter()
        tallies = qc_rates.tally(split)
        seconds = time.perf_counter() - started
        print(f"\n### {split} ({seconds:.1f} s, {len(tallies)} checks)\n")
        print(qc_rates.table(tallies))
        for name, t in tallies.items():
            if t.false_alarm_ids:
                print(f"  {name} false alarms: {', '.join(t.false_alarm_ids[:6])}")
        assert tallies and all(t.n_clean > 0 for t in tallies.values())
        if split == "heldout":
            print("\n" + qc_rates.literal(tallies))
