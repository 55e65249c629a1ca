"""The three QC policies on a fixed table of verdicts, the flexible policy's relaxation order, the brand's
unchecked policy, gating vs advisory checks, fallbacks, and the fully-checked summary."""

from __future__ import annotations

from typing import Any

import pytest

from shared.qc import CandidateRow, QcThresholds, ResultFlags, gating_failures, report, review_summary
from workers.checks import policy, rates


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


# --- unchecked is not passed; advisory vs gating; fallbacks ---------------------------------------------


def measured(monkeypatch: pytest.MonkeyPatch, **fprs: float) -> None:
    """Inject a measured-rates table: each check with this false-positive rate (gating when <= 2 %)."""
    table = {c: rates.CheckRate(c, tpr=0.95, fpr=f, defects=40, clean=100) for c, f in fprs.items()}
    monkeypatch.setattr(rates, "MEASURED", table)


WITH_GAPS = [  # product_dino is an optional metric (not a rule); the two guidelines could not be judged
    *PRODUCT_OK,
    chk("palette_adherence", "pass", "brand"),
    chk("extra_objects", "unchecked"),
    chk("brand_1", "unchecked", flexible=True),
]


def test_unchecked_rules_follow_the_brand_policy_and_are_never_a_pass() -> None:
    review = policy.decide(WITH_GAPS, "strict", 0.75)  # review is the default
    assert review["passed"] and review["needs_review"] and not review["fully_checked"]
    assert review["unchecked_policy"] == "review" and review["unchecked_rules"] == ["extra_objects", "brand_1"]
    assert [(r["check"], r["kind"]) for r in review["review"]] == [
        ("extra_objects", "unchecked"),
        ("brand_1", "unchecked"),
    ]
    fail = policy.decide(WITH_GAPS, "strict", 0.75, unchecked="fail")
    assert not fail["passed"] and fail["unchecked_failed"] == ["extra_objects", "brand_1"]
    assert not fail["eligible"], "a brand that counts unchecked as failed gets no unchecked fallback"
    opted = policy.decide(WITH_GAPS, "strict", 0.75, unchecked="pass")
    assert opted["passed"] and not opted["needs_review"] and not opted["fully_checked"]
    for name in ("weighted", "flexible"):  # the same under every QC policy
        assert not policy.decide(WITH_GAPS, name, 0.75, unchecked="fail")["passed"]
        assert not policy.decide(WITH_GAPS, name, 0.75, unchecked="pass")["fully_checked"]
    with pytest.raises(ValueError, match="unchecked must be one of"):
        policy.decide(WITH_GAPS, "strict", 0.75, unchecked="ignore")


def test_fully_checked_means_every_rule_checked_and_passed() -> None:
    clean = policy.decide(TABLE["clean"], "strict", 0.75)
    assert clean["fully_checked"] and not clean["needs_review"] and clean["review"] == []
    # product_dino unchecked (DINOv2 not configured) is listed, but is no rule of the brand's
    assert clean["unchecked"] == ["product_dino"] and clean["unchecked_rules"] == []
    relaxed = policy.relax([TABLE["flex_fail"]], lambda flags: all(flags), 0.75)[0][0]
    assert relaxed["passed"] and not relaxed["fully_checked"]  # passed by relaxing a rule: not fully checked
    weighed = policy.decide(TABLE["light_fail"], "weighted", 0.75)
    assert weighed["passed"] and not weighed["fully_checked"]


def test_only_measured_gating_checks_fail_hard(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rates, "MEASURED", {})
    unmeasured = policy.decide(TABLE["product_fail"], "strict", 0.75)
    assert not unmeasured["passed"] and unmeasured["hard_failed"] == [] and unmeasured["eligible"]
    measured(monkeypatch, product_exact=0.0, floating_product=0.08, brand_1=0.0)
    product = policy.decide(TABLE["product_fail"], "strict", 0.75)
    assert product["hard_failed"] == ["product_exact"] and not product["eligible"]
    floating = policy.decide(TABLE["hard_fail"], "strict", 0.75)  # measured, but 8 % false positives: advisory
    assert floating["advisory_failed"] == ["floating_product"] and floating["hard_failed"] == []
    assert not floating["passed"] and floating["eligible"]
    flexible = policy.decide(TABLE["flex_fail"], "strict", 0.75)  # a flexible rule never fails hard
    assert flexible["advisory_failed"] == ["brand_1"] and flexible["eligible"]
    assert not policy.decide(TABLE["product_fail"], "weighted", 0.0)["eligible"]


def test_a_fallback_is_flagged_with_every_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    measured(monkeypatch, product_exact=0.0)
    found = [*TABLE["hard_fail"], chk("text_artefacts", "unchecked")]
    stand_in = policy.as_fallback(found, policy.decide(found, "strict", 0.75))
    assert stand_in["fallback"] and stand_in["needs_review"] and not stand_in["passed"]
    assert [(r["check"], r["kind"]) for r in stand_in["review"]] == [
        ("floating_product", "advisory"),
        ("text_artefacts", "unchecked"),
    ]
    with pytest.raises(ValueError, match="no hard failure"):
        policy.as_fallback(TABLE["product_fail"], policy.decide(TABLE["product_fail"], "strict", 0.75))


def test_review_summary_counts_fully_checked_and_says_why() -> None:
    def flags(full: bool, review: bool, reasons: list[tuple[str, str]], fallback: bool = False) -> ResultFlags:
        listed = [{"check": c, "kind": k, "reason": "r"} for c, k in reasons]
        return ResultFlags(fully_checked=full, needs_review=review, review={"fallback": fallback, "reasons": listed})

    got = review_summary(
        [
            flags(True, False, []),
            flags(False, True, [("extra_objects", "unchecked"), ("brand_1", "unchecked")]),
            flags(False, True, [("extra_objects", "unchecked"), ("floating_product", "advisory")], fallback=True),
        ]
    )
    assert (got["results"], got["fully_checked"], got["needs_review"], got["fallback"]) == (3, 1, 2, 1)
    assert got["reasons"] == {"unchecked: extra_objects": 2, "advisory: floating_product": 1, "unchecked: brand_1": 1}
    assert got["message"].startswith("1 of 3 result(s) fully checked") and "2 need review" in got["message"]
    assert "1 failed advisory or flexible checks" in got["message"]
    assert review_summary([])["message"].startswith("0 of 0")


def test_gating_failures_name_the_checks_with_examples() -> None:
    def row(key: str, hard: list[str], unchecked_failed: list[str] = ()) -> CandidateRow:  # type: ignore[assignment]
        verdicts = [{"check": c, "status": "fail", "reason": f"{c} on {key}"} for c in hard]
        policy_record = {"hard_failed": hard, "unchecked_failed": list(unchecked_failed)}
        guidelines = {
            "verdicts": [{"guideline": g, "status": "unchecked", "reason": "no model"} for g in unchecked_failed]
        }
        return CandidateRow(
            qc={"verdicts": verdicts, "guidelines": guidelines, "policy": policy_record}, layout_key=key
        )

    got = gating_failures(
        [row("a", ["product_exact"]), row("b", ["product_exact", "product_area"]), row("c", [], ["extra_objects"])],
        examples=1,
    )
    assert [g["check"] for g in got] == [
        "product_exact",
        "extra_objects (unchecked, counted as failed)",
        "product_area",
    ]
    assert got[0]["failed"] == 2 and got[0]["examples"] == [{"layout_key": "a", "reason": "product_exact on a"}]
    assert got[1]["examples"] == [{"layout_key": "c", "reason": "no model"}]


def test_a_brand_rule_the_brand_sets_no_limit_for_is_no_gap() -> None:
    def palette(threshold: float | None, value: float | None) -> dict[str, Any]:
        verdict = {"check": "palette_adherence", "group": "brand", "status": "unchecked", "reason": "r"}
        return {"verdicts": [{**verdict, "threshold": threshold, "value": value}]}

    measured_only = policy.decide(policy.checks(palette(None, 0.4)), "strict", 0.75)
    assert measured_only["unchecked"] == ["palette_adherence"] and measured_only["unchecked_rules"] == []
    assert measured_only["fully_checked"] and not measured_only["needs_review"]
    required = policy.decide(policy.checks(palette(0.6, None)), "strict", 0.75)  # required, but no palette to check
    assert required["unchecked_rules"] == ["palette_adherence"] and required["needs_review"]
