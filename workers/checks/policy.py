"""The campaign's QC policy: from every check on a candidate to pass or fail, and what was relaxed.

Checks come in three groups: ``product`` (exactness, edges, colour, DINOv2: the product is exactly
the product), ``brand`` (palette, area, safe zones, exposure, contrast, framing) and ``guideline``
(the baseline failure modes and the brand's written guidelines, each flexible or not, with a weight).

- strict:   every checked rule passes.
- flexible: as strict, until fewer than top_k distinct candidates pass; then the flexible guidelines
            that failed are relaxed one at a time, lightest weight first, until enough pass or none
            is left (see :func:`relax`). What was relaxed is recorded on the campaign and on each
            candidate that passed only because of it.
- weighted: the weighted share of the passing checked brand and guideline rules reaches the brand's
            ``weighted_threshold``.

Product checks are never relaxed nor weighed away under any policy.

Two more things decide what a failure or a gap means (see :func:`decide`):

- gating vs advisory: only a check whose rates were measured on the labelled QC set and met the
  false-positive target (``workers.checks.rates.gating``) may drop a candidate on its own (a *hard*
  failure). A failed advisory check is recorded and shown; a candidate that failed only advisory or
  flexible checks does not pass, but stays *eligible*: when the loop ends with fewer than top_k passing
  candidates, rank delivers the best eligible ones, flagged needs_review with the reasons.
- unchecked rules (the brand and guideline rules QC could not judge) follow the brand's ``unchecked``
  policy (shared.qc.UNCHECKED_POLICIES): review (the candidate may pass, flagged needs_review with
  the list), fail (a hard failure) or pass (an explicit opt-in). Under none of them is an unchecked
  rule a pass: a candidate is ``fully_checked`` only when every rule was checked and passed.
  Product-group verdicts that are unchecked are optional extra metrics the deployment did not
  configure (DINOv2); they are listed as unchecked but the exact-pixel checks always run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from shared.qc import DEFAULT_UNCHECKED, UNCHECKED_POLICIES
from workers.checks import rates

POLICIES = ("strict", "flexible", "weighted")
HARD_GROUP = "product"
RULE_GROUPS = ("brand", "guideline")  # the rules the brand's unchecked policy applies to
MAX_REASON_CHARS = 200  # review reasons travel in webhooks: keep each one short


def checks(qc: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every check of a candidate's QC record in one shape: id, group, status, flexible, weight, reason."""
    out = [
        {
            "id": v["check"],
            "group": v.get("group", HARD_GROUP),
            "status": v["status"],
            "flexible": False,
            "weight": 1.0,
            "reason": v["reason"],
            "enforced": enforced(v),
        }
        for v in qc.get("verdicts") or []
    ]
    out += [
        {
            "id": v["guideline"],
            "group": "guideline",
            "status": v["status"],
            "flexible": bool(v["flexible"]),
            "weight": float(v["weight"]),
            "reason": v["reason"],
            "enforced": True,
        }
        for v in (qc.get("guidelines") or {}).get("verdicts") or []
    ]
    return out


def enforced(verdict: Mapping[str, Any]) -> bool:
    """False for a brand rule that was measured and shown but that the brand sets no limit for (e.g.
    palette_adherence without min_palette_share): not a rule of this brand, so neither a gap nor a pass."""
    return not (
        verdict.get("group") == "brand" and verdict["status"] == "unchecked" and verdict.get("threshold") is None
    )


def decide(
    found: list[dict[str, Any]],
    policy: str,
    threshold: float,
    relaxed: Iterable[str] = (),
    unchecked: str = DEFAULT_UNCHECKED,
) -> dict[str, Any]:
    """The policy's verdict on one candidate's checks; ``relaxed``: flexible guideline ids relaxed (flexible);
    ``unchecked``: the brand's unchecked policy. Besides ``passed``: the hard (gating) and advisory failures,
    the unchecked rules, whether it is fully checked, needs review (and why) or may stand in as a fallback."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    if unchecked not in UNCHECKED_POLICIES:
        raise ValueError(f"unchecked must be one of {', '.join(UNCHECKED_POLICIES)}, got {unchecked!r}")
    failed = [c for c in found if c["status"] == "fail"]
    waived = [c["id"] for c in failed if policy == "flexible" and c["flexible"] and c["id"] in set(relaxed)]
    open_rules = [
        c for c in found if c["status"] == "unchecked" and c["group"] in RULE_GROUPS and c.get("enforced", True)
    ]
    share = weighted_share(found)
    if policy == "weighted":
        passed = not any(c["group"] == HARD_GROUP for c in failed) and share >= threshold
    else:
        passed = len(failed) == len(waived)
    passed = passed and not (unchecked == "fail" and open_rules)
    hard = [c for c in failed if c["id"] not in waived and is_hard(c)]
    advisory = [c for c in failed if c["id"] not in waived and not is_hard(c)]
    review = _review(open_rules) if passed and unchecked == "review" else []
    return {
        "name": policy,
        "passed": passed,
        "failed": [c["id"] for c in failed],
        "relaxed": waived,
        "weighted_share": round(share, 4),
        "threshold": threshold if policy == "weighted" else None,
        "unchecked": [c["id"] for c in found if c["status"] == "unchecked"],
        "unchecked_policy": unchecked,
        "unchecked_rules": [c["id"] for c in open_rules],
        "unchecked_failed": [c["id"] for c in open_rules] if unchecked == "fail" else [],
        "hard_failed": [c["id"] for c in hard],
        "advisory_failed": [c["id"] for c in advisory],
        "fully_checked": passed and not failed and not open_rules,
        "needs_review": bool(review),
        "review": review,
        # may stand in for a missing result once the loop is over: failed, but nothing hard
        "eligible": not passed and not hard and not (unchecked == "fail" and open_rules),
        "fallback": False,
    }


def is_hard(check: Mapping[str, Any]) -> bool:
    """May this failure alone drop a candidate? Only a measured, gating check that is not a flexible rule."""
    return not check["flexible"] and rates.gating(str(check["id"]))


def _review(open_rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [review_item(c, "unchecked") for c in open_rules]


def review_item(check: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """One reason a result needs a human look: the check, what happened to it, and its own reason."""
    return {"check": check["id"], "kind": kind, "reason": str(check.get("reason") or "")[:MAX_REASON_CHARS]}


def as_fallback(found: list[dict[str, Any]], decision: dict[str, Any]) -> dict[str, Any]:
    """An eligible candidate delivered because too few passed: flagged, with every failed (advisory or
    flexible) check and every unchecked rule as a reason."""
    if not decision["eligible"]:
        raise ValueError("only a candidate with no hard failure may stand in as a fallback")
    failed = set(decision["advisory_failed"])
    reasons = [review_item(c, "flexible" if c["flexible"] else "advisory") for c in found if c["id"] in failed]
    reasons += [review_item(c, "unchecked") for c in found if c["id"] in set(decision["unchecked_rules"])]
    return {**decision, "fallback": True, "needs_review": True, "review": reasons}


def weighted_share(found: list[dict[str, Any]]) -> float:
    """Share of the checked brand and guideline weight that passes (1.0 when nothing was checked)."""
    weighed = [c for c in found if c["group"] != HARD_GROUP and c["status"] != "unchecked"]
    total = sum(c["weight"] for c in weighed)
    return sum(c["weight"] for c in weighed if c["status"] == "pass") / total if total else 1.0


def relax(
    pool: list[list[dict[str, Any]]],
    enough: Callable[[list[bool]], bool],
    threshold: float,
    unchecked: str = DEFAULT_UNCHECKED,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """flexible: relax failed flexible guidelines, lightest first, until ``enough(passed flags)``.

    pool: the checks of every candidate. Returns (each candidate's decision, the relaxed rules in order
    with their weight). Relaxing stops at the first step that is enough: nothing more is waived.
    """
    relaxed: list[dict[str, Any]] = []
    decisions = [decide(found, "flexible", threshold, (), unchecked) for found in pool]
    for rule in _relaxable(pool):
        if enough([d["passed"] for d in decisions]):
            break
        relaxed.append(rule)
        ids = [r["id"] for r in relaxed]
        decisions = [decide(found, "flexible", threshold, ids, unchecked) for found in pool]
    return decisions, relaxed


def _relaxable(pool: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Flexible guidelines that failed somewhere, lightest weight first (then by id, for a stable order)."""
    seen: dict[str, float] = {}
    for found in pool:
        for c in found:
            if c["flexible"] and c["status"] == "fail":
                seen[c["id"]] = c["weight"]
    return [{"id": i, "weight": w} for i, w in sorted(seen.items(), key=lambda t: (t[1], t[0]))]
