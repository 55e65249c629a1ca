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

Product checks are never relaxed nor weighed away under any policy: a candidate whose product is not
exactly the product is never shown, however good the rest. "unchecked" rules count neither way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

POLICIES = ("strict", "flexible", "weighted")
HARD_GROUP = "product"


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
        }
        for v in (qc.get("guidelines") or {}).get("verdicts") or []
    ]
    return out


def decide(found: list[dict[str, Any]], policy: str, threshold: float, relaxed: Iterable[str] = ()) -> dict[str, Any]:
    """The policy's verdict on one candidate's checks; ``relaxed``: flexible guideline ids relaxed (flexible)."""
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {policy!r}")
    failed = [c for c in found if c["status"] == "fail"]
    waived = [c["id"] for c in failed if policy == "flexible" and c["flexible"] and c["id"] in set(relaxed)]
    share = weighted_share(found)
    if policy == "weighted":
        passed = not any(c["group"] == HARD_GROUP for c in failed) and share >= threshold
    else:
        passed = len(failed) == len(waived)
    return {
        "name": policy,
        "passed": passed,
        "failed": [c["id"] for c in failed],
        "relaxed": waived,
        "weighted_share": round(share, 4),
        "threshold": threshold if policy == "weighted" else None,
        "unchecked": [c["id"] for c in found if c["status"] == "unchecked"],
    }


def weighted_share(found: list[dict[str, Any]]) -> float:
    """Share of the checked brand and guideline weight that passes (1.0 when nothing was checked)."""
    weighed = [c for c in found if c["group"] != HARD_GROUP and c["status"] != "unchecked"]
    total = sum(c["weight"] for c in weighed)
    return sum(c["weight"] for c in weighed if c["status"] == "pass") / total if total else 1.0


def relax(
    pool: list[list[dict[str, Any]]], enough: Callable[[list[bool]], bool], threshold: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """flexible: relax failed flexible guidelines, lightest first, until ``enough(passed flags)``.

    pool: the checks of every candidate. Returns (each candidate's decision, the relaxed rules in order
    with their weight). Relaxing stops at the first step that is enough: nothing more is waived.
    """
    relaxed: list[dict[str, Any]] = []
    decisions = [decide(found, "flexible", threshold) for found in pool]
    for rule in _relaxable(pool):
        if enough([d["passed"] for d in decisions]):
            break
        relaxed.append(rule)
        ids = [r["id"] for r in relaxed]
        decisions = [decide(found, "flexible", threshold, ids) for found in pool]
    return decisions, relaxed


def _relaxable(pool: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Flexible guidelines that failed somewhere, lightest weight first (then by id, for a stable order)."""
    seen: dict[str, float] = {}
    for found in pool:
        for c in found:
            if c["flexible"] and c["status"] == "fail":
                seen[c["id"]] = c["weight"]
    return [{"id": i, "weight": w} for i, w in sorted(seen.items(), key=lambda t: (t[1], t[0]))]
