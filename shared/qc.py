"""Quality-control thresholds and the campaign QC report: what gateway and workers both read.

Thresholds: every check's limit has a product default here; a deployment may move the two
fidelity limits (ONBRAND_QC_MIN_EXACT, ONBRAND_QC_MIN_MSSSIM) and a brand overrides any of
them (`qc_thresholds` on the brand). The effective set is recorded on every candidate.

Report: pass rates per check over a campaign's candidates, computed from the candidates'
stored QC records, so it is the same whether asked mid-campaign or after delivery.
"""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any, Literal, TypedDict, get_args

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db.models import Candidate, CandidateStatus, candidate_status

# What a rule that could not be checked ("unchecked") means for a brand's results. Never a pass:
# review (default): the result may be delivered, flagged needs_review with the unchecked rules;
# fail: the rule counts as failed (a hard failure: the brand asked for nothing unchecked);
# pass: the brand opted in to ship unchecked rules unflagged (still never counted as fully checked).
UncheckedPolicy = Literal["review", "fail", "pass"]
UNCHECKED_POLICIES: tuple[str, ...] = get_args(UncheckedPolicy)
DEFAULT_UNCHECKED: UncheckedPolicy = "review"
UNCHECKED_DOC = (
    "What a rule QC could not check means for this brand's results: review (default: delivered flagged "
    "needs_review with the unchecked rules), fail (counts as a failure) or pass (explicit opt-in; such "
    "results are still not counted as fully checked)."
)


class QcThresholds(BaseModel):
    """Limits of the QC checks. Fidelity limits guard "the product is exactly the product"."""

    model_config = ConfigDict(extra="forbid")

    min_exact: float = Field(
        default=0.999, ge=0, le=1, description="Least share of opaque product pixels left identical."
    )
    min_msssim: float = Field(default=0.9, ge=0, le=1, description="Least MS-SSIM of the product's edge maps.")
    min_dino: float = Field(
        default=0.9, ge=-1, le=1, description="Least DINOv2 cosine of product crops (when configured)."
    )
    max_delta_e: float = Field(
        default=2.0, ge=0, le=100, description="Most mean CIEDE2000 over the product (2.3 = JND)."
    )
    palette_radius: float = Field(
        default=5.0,
        gt=0,
        le=100,
        description="ΔE00 to the nearest tint or shade of a palette colour that counts as on-palette.",
    )
    # Unset = measured and shown, not enforced: photos from a brand's own library carry scene colours
    # (5-97 % on-palette in the demo library), while studio backdrops are 100 % and foreign hues 1-6 %.
    min_palette_share: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Least share of background on the palette (e.g. 0.6); unset = reported, not enforced.",
    )
    area_min: float = Field(default=0.02, ge=0, le=1, description="Least share of the canvas the product covers.")
    area_max: float = Field(default=0.6, ge=0, le=1, description="Most share of the canvas the product covers.")
    exposure_min: float = Field(default=0.12, ge=0, le=1, description="Least mean luminance (0-1).")
    exposure_max: float = Field(default=0.88, ge=0, le=1, description="Most mean luminance (0-1).")
    max_clipped: float = Field(default=0.25, ge=0, le=1, description="Most share of clipped (near black/white) pixels.")
    min_contrast: float = Field(default=0.04, ge=0, le=1, description="Least RMS contrast (std of luminance 0-1).")
    dup_max_hamming: int = Field(
        default=6, ge=0, le=64, description="Perceptual-hash distance that makes a near-duplicate."
    )
    dup_min_cosine: float = Field(default=0.98, ge=-1, le=1, description="DINOv2 cosine that makes a near-duplicate.")
    weighted_threshold: float = Field(
        default=0.75, ge=0, le=1, description="weighted policy: least passing share of weight."
    )

    @model_validator(mode="after")
    def _ranges(self) -> QcThresholds:
        for low, high in (("area_min", "area_max"), ("exposure_min", "exposure_max")):
            if getattr(self, low) >= getattr(self, high):
                raise ValueError(f"{low} must be below {high}")
        return self


THRESHOLD_KEYS = tuple(QcThresholds.model_fields)


def thresholds(settings: Settings, brand_overrides: Mapping[str, Any] | None) -> QcThresholds:
    """Product defaults, then the deployment's fidelity limits, then the brand's own."""
    base = {"min_exact": settings.qc_min_exact, "min_msssim": settings.qc_min_msssim}
    return QcThresholds(**{**base, **dict(brand_overrides or {})})


# --- the campaign report ------------------------------------------------------------------------


def _checks(qc: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    """(check id, status) of every verdict on one candidate: product, brand and guideline checks."""
    for v in qc.get("verdicts") or []:
        yield v["check"], v.get("status") or ("pass" if v.get("passed") else "fail")
    for v in (qc.get("guidelines") or {}).get("verdicts") or []:
        yield v["guideline"], v["status"]


class CandidateRow(TypedDict, total=False):
    """The columns of a candidate that :func:`report` reads; a missing key reads as None (0 for round)."""

    qc: dict[str, Any] | None
    passed: bool | None
    rank: int | None
    round: int
    excluded_reason: str | None
    layout_key: str | None


def candidate_rows(session: Session, tenant_id: uuid.UUID, campaign_id: uuid.UUID) -> list[CandidateRow]:
    """What :func:`report` reads of a campaign's candidates (the QC records, not the images)."""
    rows = session.execute(
        select(
            Candidate.qc,
            Candidate.passed,
            Candidate.rank,
            Candidate.round,
            Candidate.excluded_reason,
            Candidate.layout_key,
        ).where(Candidate.tenant_id == tenant_id, Candidate.campaign_id == campaign_id)
    )
    return [
        CandidateRow(qc=qc, passed=passed, rank=rank, round=round_, excluded_reason=reason, layout_key=key)
        for qc, passed, rank, round_, reason, key in rows
    ]


def report(candidates: Iterable[CandidateRow], policy: str, top_k: int) -> dict[str, Any]:
    """Pass rates per check, outcomes and exclusion reasons over a campaign's candidates.

    Each candidate is a mapping with qc, passed, rank, round and excluded_reason (a row's columns).
    """
    tally: dict[str, Counter[str]] = {}
    outcomes: Counter[str] = Counter()
    rounds: dict[int, Counter[str]] = {}
    for cand in candidates:
        qc = cand.get("qc") or {}
        for check, status in _checks(qc):
            tally.setdefault(check, Counter())[status] += 1
        outcome = _outcome(cand)
        outcomes[outcome] += 1
        rounds.setdefault(int(cand.get("round") or 0), Counter())[outcome] += 1
    return {
        "policy": policy,
        "top_k": top_k,
        "candidates": sum(outcomes.values()),
        "outcomes": dict(outcomes),
        "rounds": {str(r): dict(c) for r, c in sorted(rounds.items())},
        "checks": {check: _rates(c) for check, c in sorted(tally.items())},
        "blocking": blocking(tally),
    }


def _outcome(cand: CandidateRow) -> CandidateStatus:
    return candidate_status(cand.get("passed"), cand.get("rank"), cand.get("excluded_reason"))


def _rates(counts: Counter[str]) -> dict[str, Any]:
    checked = counts["pass"] + counts["fail"]
    return {
        "pass": counts["pass"],
        "fail": counts["fail"],
        "unchecked": counts["unchecked"],
        "pass_rate": round(counts["pass"] / checked, 4) if checked else None,
    }


def blocking(tally: Mapping[str, Counter[str]]) -> list[dict[str, Any]]:
    """Checks that failed at least once, most failures first: what kept candidates out."""
    failing = [(check, c["fail"]) for check, c in tally.items() if c["fail"]]
    return [{"check": check, "failed": n} for check, n in sorted(failing, key=lambda t: (-t[1], t[0]))]


# --- how many results were fully checked ----------------------------------------------------------


class ResultFlags(TypedDict):
    """What :func:`review_summary` reads of one result (the results row's columns)."""

    fully_checked: bool
    needs_review: bool
    review: dict[str, Any]


def review_summary(results: Iterable[ResultFlags]) -> dict[str, Any]:
    """How many results were fully checked (every rule checked and passed) and how many need review, why
    (``reasons``: "kind: check" -> results, kind unchecked | advisory | flexible), and a sentence saying so."""
    rows = list(results)
    reasons: Counter[str] = Counter()
    for row in rows:
        reasons.update({f"{r['kind']}: {r['check']}" for r in row["review"].get("reasons") or []})  # once a result
    summary = {
        "results": len(rows),
        "fully_checked": sum(bool(r["fully_checked"]) for r in rows),
        "needs_review": sum(bool(r["needs_review"]) for r in rows),
        "fallback": sum(bool(r["review"].get("fallback")) for r in rows),
        "reasons": dict(sorted(reasons.items(), key=lambda t: (-t[1], t[0]))),
    }
    return {**summary, "message": _review_message(summary)}


def _review_message(s: Mapping[str, Any]) -> str:
    text = f"{s['fully_checked']} of {s['results']} result(s) fully checked (every rule checked and passed)"
    if s["needs_review"]:
        why = ", ".join(f"{reason} ({n})" for reason, n in s["reasons"].items())
        text += f"; {s['needs_review']} need review: {why}"
    if s["fallback"]:
        text += f"; {s['fallback']} failed advisory or flexible checks and stand in because too few passed"
    return text


def gating_failures(rows: Iterable[CandidateRow], examples: int = 3) -> list[dict[str, Any]]:
    """The hard failures that kept every candidate out: per check, how many candidates it dropped and a few
    examples (layout key and the check's reason), most first. Unchecked rules a brand counts as failed
    (unchecked: fail) are named as such."""
    found: dict[str, dict[str, Any]] = {}
    for row in rows:
        qc = row.get("qc") or {}
        decision, reasons = qc.get("policy") or {}, dict(_reasons(qc))
        hard = [(c, c) for c in decision.get("hard_failed") or []]
        hard += [(c, f"{c} (unchecked, counted as failed)") for c in decision.get("unchecked_failed") or []]
        for check, label in hard:
            entry = found.setdefault(label, {"check": label, "failed": 0, "examples": []})
            entry["failed"] += 1
            if len(entry["examples"]) < examples:
                entry["examples"].append({"layout_key": row.get("layout_key"), "reason": reasons.get(check, "")})
    return sorted(found.values(), key=lambda e: (-e["failed"], e["check"]))


def _reasons(qc: Mapping[str, Any]) -> Iterable[tuple[str, str]]:
    for v in qc.get("verdicts") or []:
        yield v["check"], str(v.get("reason") or "")
    for v in (qc.get("guidelines") or {}).get("verdicts") or []:
        yield v["guideline"], str(v.get("reason") or "")
