"""The three QC policies on a fixed table of verdicts, and the flexible policy's relaxation order."""

from __future__ import annotations

from typing import Any

import pytest

from shared.qc import QcThresholds, report
from workers.checks import policy


def chk(
    ident: str, status: str, group: str = "guideline", flexible: bool = False, weight: float = 1.0
) -> dict[str, Any]:
    return {"id": ident, "group": group, "status": status, "flexible": flexible, "weight": weight, "reason": "r"}


PRODUCT_OK = [chk("product_exact", "pass", "product"), chk("product_dino", "unchecked", "product")]
# candidate -> its checks; brand rules weigh 1, guidelines as the brand set them
TABLE = {
    "clean": [
        *PRODUCT_OK,
        chk("palette_adherence", "pass", "brand"),
        chk("floating_product", "pass"),
        chk("brand_1", "pass", flexible=True, weight=2.0),
    ],
    "flex_fail": [
        *PRODUCT_OK,
        chk("palette_adherence", "pass", "brand"),
        chk("floating_product", "pass"),
        chk("brand_1", "fail", flexible=True, weight=2.0),
    ],
    "hard_fail": [
        *PRODUCT_OK,
        chk("palette_adherence", "pass", "brand"),
        chk("floating_product", "fail"),
        chk("brand_1", "pass", flexible=True, weight=2.0),
    ],
    "product_fail": [
        chk("product_exact", "fail", "product"),
        chk("palette_adherence", "pass", "brand"),
        chk("floating_product", "pass"),
        chk("brand_1", "pass", flexible=True, weight=2.0),
    ],
    "light_fail": [
        *PRODUCT_OK,
        chk("palette_adherence", "fail", "brand"),
        chk("floating_product", "pass"),
        chk("brand_1", "pass", flexible=True, weight=2.0),
        chk("brand_2", "unchecked", flexible=True),
    ],
}
EXPECTED = {  # policy -> candidates that pass (without relaxation)
    "strict": {"clean"},
    "flexible": {"clean"},
    # weighted at 0.75: flex_fail 2/4 of the weight passes, hard_fail 3/4, light_fail 3/4; product_fail never
    "weighted": {"clean", "hard_fail", "light_fail"},
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_each_policy_on_the_fixed_table(name: str) -> None:
    passed = {key for key, found in TABLE.items() if policy.decide(found, name, 0.75)["passed"]}
    assert passed == EXPECTED[name]


def test_weighted_share_ignores_unchecked_and_product_checks() -> None:
    verdict = policy.decide(TABLE["light_fail"], "weighted", 0.75)
    assert verdict["weighted_share"] == pytest.approx(3 / 4) and verdict["threshold"] == 0.75
    assert verdict["unchecked"] == ["product_dino", "brand_2"] and verdict["failed"] == ["palette_adherence"]
    assert not policy.decide(TABLE["light_fail"], "weighted", 0.8)["passed"]  # the brand's threshold decides


def test_a_product_failure_is_never_weighed_away() -> None:
    assert policy.weighted_share(TABLE["product_fail"]) == 1.0
    assert not policy.decide(TABLE["product_fail"], "weighted", 0.0)["passed"]
    assert not policy.decide(TABLE["product_fail"], "flexible", 0.75, ["product_exact"])["passed"]


def test_flexible_relaxes_only_when_too_few_pass_lightest_first() -> None:
    heavy = [*PRODUCT_OK, chk("brand_1", "fail", flexible=True, weight=5.0)]
    light = [*PRODUCT_OK, chk("brand_2", "fail", flexible=True, weight=0.5)]
    both = [
        *PRODUCT_OK,
        chk("brand_1", "fail", flexible=True, weight=5.0),
        chk("brand_2", "fail", flexible=True, weight=0.5),
    ]
    pool = [TABLE["clean"], heavy, light, both, TABLE["hard_fail"]]

    def at_least(n: int):  # noqa: ANN202 - a predicate factory
        return lambda flags: sum(flags) >= n

    decisions, relaxed = policy.relax(pool, at_least(1), 0.75)
    assert relaxed == [] and [d["passed"] for d in decisions] == [True, False, False, False, False]
    decisions, relaxed = policy.relax(pool, at_least(2), 0.75)
    assert relaxed == [{"id": "brand_2", "weight": 0.5}]  # the lightest rule goes first, and alone suffices
    assert [d["passed"] for d in decisions] == [True, False, True, False, False]
    assert decisions[2]["relaxed"] == ["brand_2"] and decisions[0]["relaxed"] == []
    decisions, relaxed = policy.relax(pool, at_least(4), 0.75)
    assert [r["id"] for r in relaxed] == ["brand_2", "brand_1"]
    assert [d["passed"] for d in decisions] == [True, True, True, True, False]  # a non-flexible failure stays out
    decisions, relaxed = policy.relax(pool, at_least(5), 0.75)  # not enough even with all relaxed: stop there
    assert len(relaxed) == 2 and sum(d["passed"] for d in decisions) == 4


def test_unknown_policy_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="policy must be one of"):
        policy.decide(TABLE["clean"], "lenient", 0.75)


def test_report_sums_pass_rates_per_check_and_what_blocked() -> None:
    def qc(verdicts: list[tuple[str, str]], guidelines: list[tuple[str, str]] = ()) -> dict[str, Any]:  # type: ignore[assignment]
        return {
            "verdicts": [{"check": c, "status": s} for c, s in verdicts],
            "guidelines": {"verdicts": [{"guideline": g, "status": s} for g, s in guidelines]},
        }

    rows = [
        {
            "qc": qc([("product_exact", "pass"), ("palette_adherence", "pass")], [("brand_1", "pass")]),
            "passed": True,
            "rank": 1,
            "round": 0,
        },
        {
            "qc": qc([("product_exact", "pass"), ("palette_adherence", "fail")], [("brand_1", "unchecked")]),
            "passed": False,
            "rank": None,
            "round": 0,
            "excluded_reason": "failed QC (strict policy): palette",
        },
        {"qc": qc([("product_exact", "fail"), ("palette_adherence", "fail")]), "passed": False, "round": 1},
        {
            "qc": qc([("product_exact", "pass"), ("palette_adherence", "pass")], [("brand_1", "pass")]),
            "passed": True,
            "rank": None,
            "round": 1,
            "excluded_reason": "near-duplicate of x",
        },
    ]
    got = report(rows, "strict", 3)
    assert got["candidates"] == 4 and got["outcomes"] == {"ranked": 1, "failed": 2, "duplicate": 1}
    assert got["checks"]["product_exact"] == {"pass": 3, "fail": 1, "unchecked": 0, "pass_rate": 0.75}
    assert got["checks"]["brand_1"] == {"pass": 2, "fail": 0, "unchecked": 1, "pass_rate": 1.0}
    assert got["blocking"] == [{"check": "palette_adherence", "failed": 2}, {"check": "product_exact", "failed": 1}]
    assert got["rounds"] == {"0": {"ranked": 1, "failed": 1}, "1": {"failed": 1, "duplicate": 1}}


def test_brand_thresholds_are_checked_for_ranges() -> None:
    with pytest.raises(ValueError, match="area_min must be below area_max"):
        QcThresholds(area_min=0.7)
