"""Rankings that learn from reviews: the learning curve against a simulated reviewer (prints a table).

workers.ranking.simulation: candidates are real plan layouts (one canvas, two product scales, 3x3 grid x
3 rotations: 54 per campaign) with the aesthetic parts and QC metrics rank would see; the reviewer's
hidden preference is the product large and on the left, plus a good aesthetic score, with logistic noise.
Each campaign shows its top 3 under the brand's ranker of the moment (aesthetic only below
learn.MIN_PAIRS pairs), the reviewer approves or rejects them one by one, the brand refits after each.
After N decisions: pairwise agreement of the ranking with the reviewer's (noise-free) preference over every
pair of candidates of 20 held-out campaigns, and the share of their top 3 the reviewer would approve.
Mean and spread over BRANDS simulated brands (seeds).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from workers.ranking import learn, pairwise, simulation

pytestmark = pytest.mark.bench
BRANDS = 20


def test_learning_curve_against_a_simulated_reviewer() -> None:
    started = time.perf_counter()
    curves = [simulation.curve(seed) for seed in range(BRANDS)]
    elapsed = time.perf_counter() - started
    print(
        f"\nranking that learns from reviews: {BRANDS} simulated brands, 20 held-out campaigns x 54 candidates each;"
        f" prior l2 {pairwise.L2:g}, learned ranker from {learn.MIN_PAIRS} pairs; {elapsed:.1f} s"
    )
    print(f"{'decisions':>9} {'pairs':>6} {'learned':>8} {'agreement':>16} {'top-3 approved':>15}")
    rows = []
    for i, budget in enumerate(simulation.BUDGETS):
        points = [c[i] for c in curves]
        assert all(p.decisions == budget for p in points)
        agree = np.asarray([p.agreement for p in points])
        row = (
            np.mean([p.pairs for p in points]),
            np.mean([p.learned for p in points]),
            agree.mean(),
            agree.std(),
            np.mean([p.approved_top for p in points]),
        )
        rows.append(row)
        print(f"{budget:>9} {row[0]:>6.1f} {row[1]:>8.0%} {row[2]:>9.3f} ± {row[3]:.3f} {row[4]:>15.0%}")
    baseline, last = rows[0], rows[-1]
    assert last[2] > baseline[2] + 0.05 and last[4] > baseline[4]  # learning helps, measured
