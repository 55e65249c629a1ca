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


# Held-out split of workers.evaluation.qc_set (154 candidates: 66 clean, 11 per defect), printed by
# tests/bench/test_bench_qc_eval.py; tests/workers/test_qc_eval.py recomputes it. A check with defects=0
# (a brand rule, or one the set has no defect for) has only its false-positive rate measured: advisory.
MEASURED: dict[str, CheckRate] = {
    "product_exact": CheckRate(
        "product_exact", tpr=1.0, fpr=0.0, defects=22, clean=66, unchecked_defects=0, unchecked_clean=0
    ),
    "product_edges_msssim": CheckRate(
        "product_edges_msssim", tpr=0.5455, fpr=0.0, defects=11, clean=66, unchecked_defects=0, unchecked_clean=0
    ),
    "product_colour_delta_e": CheckRate(
        "product_colour_delta_e", tpr=1.0, fpr=0.0, defects=11, clean=66, unchecked_defects=0, unchecked_clean=0
    ),
    "product_in_frame": CheckRate(
        "product_in_frame", tpr=0.0, fpr=0.0, defects=0, clean=66, unchecked_defects=0, unchecked_clean=0
    ),
    "product_area": CheckRate(
        "product_area", tpr=0.0, fpr=0.0, defects=0, clean=66, unchecked_defects=0, unchecked_clean=0
    ),
    "exposure": CheckRate("exposure", tpr=0.0, fpr=0.0, defects=0, clean=66, unchecked_defects=0, unchecked_clean=0),
    "contrast": CheckRate("contrast", tpr=0.0, fpr=0.0, defects=0, clean=66, unchecked_defects=0, unchecked_clean=0),
    "duplicated_product": CheckRate(
        "duplicated_product", tpr=0.6364, fpr=0.0, defects=11, clean=66, unchecked_defects=0, unchecked_clean=0
    ),
    "product_expansion": CheckRate(
        "product_expansion", tpr=0.0, fpr=0.0, defects=0, clean=66, unchecked_defects=0, unchecked_clean=4
    ),
    "product_duplicate_nearby": CheckRate(
        "product_duplicate_nearby", tpr=0.1818, fpr=0.0, defects=11, clean=66, unchecked_defects=3, unchecked_clean=4
    ),
    "floating_product": CheckRate(
        "floating_product", tpr=0.9091, fpr=0.0, defects=11, clean=66, unchecked_defects=0, unchecked_clean=0
    ),
    "distorted_product": CheckRate(
        "distorted_product", tpr=1.0, fpr=0.0, defects=22, clean=66, unchecked_defects=0, unchecked_clean=0
    ),
    "text_artefacts": CheckRate(
        "text_artefacts", tpr=1.0, fpr=0.0, defects=11, clean=66, unchecked_defects=0, unchecked_clean=0
    ),
    "leaked_mask": CheckRate(
        "leaked_mask", tpr=1.0, fpr=0.1818, defects=11, clean=66, unchecked_defects=0, unchecked_clean=0
    ),
    "clipped_mask": CheckRate(
        "clipped_mask", tpr=0.9091, fpr=0.0, defects=11, clean=66, unchecked_defects=0, unchecked_clean=0
    ),
    "mask_halo": CheckRate(
        "mask_halo", tpr=0.8182, fpr=0.0, defects=11, clean=66, unchecked_defects=0, unchecked_clean=0
    ),
}


def gating(check: str) -> bool:
    """May this check's failure alone drop a candidate? Only when measured and within the target."""
    rate = MEASURED.get(check)
    return rate is not None and rate.gating
