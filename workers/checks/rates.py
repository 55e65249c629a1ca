"""Measured rates of every QC check, and which of them may fail a candidate on their own.

A check gates (its "fail" alone drops a candidate) only once its false-positive rate on clean
candidates and its true-positive rate on its own defect were measured on the held-out split of
the labelled QC evaluation set (workers.evaluation) and the false-positive rate met the target.
Every other check is advisory: recorded and shown, never the only reason a candidate is dropped.
The table below is what ``tests/bench/test_bench_qc_eval.py`` printed; a test keeps each check
within these rates.
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_FALSE_POSITIVE_RATE = 0.02  # on clean held-out candidates, for a check that can fail one alone


@dataclass(frozen=True)
class CheckRate:
    """One check's measured rates on the held-out split: tpr on its defect, fpr on clean candidates."""

    check: str
    tpr: float
    fpr: float
    defects: int  # held-out candidates with the check's defect
    clean: int  # held-out clean candidates
    unchecked_defects: int = 0  # of those, judged "unchecked": counted as not caught, never as a pass
    unchecked_clean: int = 0

    @property
    def gating(self) -> bool:
        return self.clean > 0 and self.defects > 0 and self.fpr <= MAX_FALSE_POSITIVE_RATE


MEASURED: dict[str, CheckRate] = {}


def gating(check: str) -> bool:
    """May this check's failure alone drop a candidate? Only when measured and within the target."""
    rate = MEASURED.get(check)
    return rate is not None and rate.gating
