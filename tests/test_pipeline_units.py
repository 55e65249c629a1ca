"""Pure parts of the pipeline stages: QC verdicts and the diverse top-k choice."""
from __future__ import annotations

from shared.config import Settings
from shared.db.models import Candidate
from workers.stages.pipeline import choose, qc_checks


def cand(key: str, row: int, col: int, aesthetic: float | None, passed: bool = True) -> Candidate:
    placement = {"row": row, "col": col, "canvas": {"width": 1024, "height": 1024}}
    return Candidate(layout_key=key, placement=placement, aesthetic=aesthetic, passed=passed)


def test_choose_prefers_distinct_cells_then_fills_up() -> None:
    a, b, c = cand("a", 1, 1, 9.0), cand("b", 1, 1, 8.5), cand("c", 2, 2, 7.0)
    failed = cand("f", 3, 3, None, passed=False)
    assert choose([a, b, c, failed], 2) == [a, c]
    assert b.excluded_reason and b.excluded_reason.startswith("diversity")
    assert choose([a, b, c, failed], 3) == [a, c, b]  # not enough distinct cells: repeat one
    low = cand("d", 3, 1, 1.0)
    assert choose([a, c, low], 2) == [a, c] and "below the top 2" in (low.excluded_reason or "")


def test_qc_checks_pass_and_fail_with_reasons() -> None:
    settings = Settings()
    good = {"exact_fraction": 1.0, "msssim_edges": 0.99, "area_share": 0.2, "in_frame": 1.0}
    assert all(v["passed"] for v in qc_checks(good, settings))
    bad = {"exact_fraction": 0.4, "msssim_edges": 0.5, "area_share": 0.9, "in_frame": 0.0}
    verdicts = {v["check"]: v for v in qc_checks(bad, settings)}
    assert not any(v["passed"] for v in verdicts.values())
    assert "40.00%" in verdicts["product_exact"]["reason"]
    assert verdicts["product_in_frame"]["reason"] == "product touches the canvas edge"
