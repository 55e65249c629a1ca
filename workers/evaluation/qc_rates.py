"""Measured rates of the QC checks on the labelled QC set (:mod:`workers.evaluation.qc_set`).

``CHECKS`` maps a check id (the id its verdicts carry, which :func:`workers.checks.rates.gating`
is asked about) to the defect(s) it must catch and a function that judges one sample:
"pass", "fail" or "unchecked". :func:`measure` runs every check on a split:

* tpr = fails on samples with the check's defect / those samples,
* fpr = fails on clean samples / clean samples,

where "unchecked" counts as not-fail for both (it never caught anything, and it never dropped a
clean candidate) and is reported separately, so an unchecked verdict never reads as a pass.

A check with defect ``None`` is a rule rather than a detector (exposure, contrast, ...): only its
false-positive rate on clean candidates is measured, so it cannot earn gating from this set.

Other modules register their checks by adding to ``CHECKS`` (keep the functions cheap: the
held-out test runs them all on every sample).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from shared import integrity
from shared.qc import QcThresholds
from workers.checks import brand_rules, product
from workers.checks import guideline_classical as classical
from workers.checks.rates import CheckRate
from workers.evaluation.qc_set import DEFECTS, Sample, samples

Status = str  # "pass" | "fail" | "unchecked"
Judge = Callable[[Sample], Status]
Defects = str | tuple[str, ...] | None

STATUSES = ("pass", "fail", "unchecked")
LIMITS = QcThresholds()  # the product defaults: what a brand without overrides is checked against


CHECKS: dict[str, tuple[Defects, Judge]] = {}


def register(check_id: str, defects: Defects, judge: Judge) -> None:
    """Add a check to CHECKS; ``defects`` must be DEFECTS members (or None for a rule)."""
    for d in _as_tuple(defects):
        if d not in DEFECTS:
            raise ValueError(f"defects: {d!r} is not one of {DEFECTS}")
    CHECKS[check_id] = (defects, judge)


def _as_tuple(defects: Defects) -> tuple[str, ...]:
    if defects is None:
        return ()
    return (defects,) if isinstance(defects, str) else tuple(defects)


@dataclass(frozen=True)
class Tally:
    """Raw counts behind one check's rates on one split."""

    check: str
    defects: tuple[str, ...]
    caught: int  # fails on defect samples
    defect_unchecked: int
    n_defect: int
    false_alarms: int  # fails on clean samples
    clean_unchecked: int
    n_clean: int
    false_alarm_ids: tuple[str, ...]
    missed_ids: tuple[str, ...]

    def rate(self) -> CheckRate:
        return CheckRate(
            self.check,
            tpr=round(self.caught / self.n_defect, 4) if self.n_defect else 0.0,
            fpr=round(self.false_alarms / self.n_clean, 4) if self.n_clean else math.inf,
            defects=self.n_defect,
            clean=self.n_clean,
            unchecked_defects=self.defect_unchecked,
            unchecked_clean=self.clean_unchecked,
        )


def tally(split: str, checks: dict[str, tuple[Defects, Judge]] | None = None) -> dict[str, Tally]:
    """Every check's counts on ``split`` (all registered checks unless ``checks`` is given)."""
    todo = CHECKS if checks is None else checks
    data = samples(split)
    return {name: _tally(name, _as_tuple(defects), judge, data) for name, (defects, judge) in todo.items()}


def measure(split: str, checks: dict[str, tuple[Defects, Judge]] | None = None) -> dict[str, CheckRate]:
    """Every check's measured rates on ``split``: tpr on its defect(s), fpr on clean samples."""
    return {name: t.rate() for name, t in tally(split, checks).items()}


def _tally(name: str, defects: tuple[str, ...], judge: Judge, data: list[Sample]) -> Tally:
    counts = {"caught": 0, "d_unc": 0, "n_d": 0, "alarms": 0, "c_unc": 0, "n_c": 0}
    alarms: list[str] = []
    missed: list[str] = []
    for s in data:
        if s.defect is not None and s.defect not in defects:
            continue  # another check's defect: says nothing about this one
        status = judge(s)
        if status not in STATUSES:
            raise ValueError(f"{name}: judged {s.id} as {status!r}, expected one of {STATUSES}")
        clean = s.defect is None
        counts["n_c" if clean else "n_d"] += 1
        if status == "unchecked":
            counts["c_unc" if clean else "d_unc"] += 1
        if clean and status == "fail":
            counts["alarms"] += 1
            alarms.append(s.id)
        if not clean:
            counts["caught"] += status == "fail"
            if status != "fail":
                missed.append(s.id)
    return Tally(
        name,
        defects,
        counts["caught"],
        counts["d_unc"],
        counts["n_d"],
        counts["alarms"],
        counts["c_unc"],
        counts["n_c"],
        tuple(alarms),
        tuple(missed),
    )


# --- the registered checks -------------------------------------------------------------------------

_FIDELITY: dict[str, dict[str, Any]] = {}  # per sample id: the fidelity metrics, computed once per process


def fidelity_metrics(s: Sample) -> dict[str, Any]:
    """fidelity.fidelity of the sample (cached: three product checks read it)."""
    from workers.checks import fidelity  # imports torch's MS-SSIM lazily: only when product checks run

    if s.id not in _FIDELITY:
        # Against the source product, re-derived as QC does (shared.integrity), not the stored layer itself.
        _FIDELITY[s.id] = {**fidelity.fidelity(s.candidate, s.layer, source_layer(s)), "dino_cosine": None}
    return _FIDELITY[s.id]


def source_layer(s: Sample) -> Image.Image:
    """The sample's layer re-derived from its source photo, the mask it was cut with and its placement."""
    p = s.placement
    canvas = (p["canvas"]["width"], p["canvas"]["height"])
    t = integrity.transform_for(tuple(p["crop"]), p["scale"], p["rotation"], (p["x"], p["y"]), canvas)
    return integrity.derive_layer(s.source, s.mask, t)


def _expansion(check_id: str) -> Judge:
    from workers.checks import expansion

    def judge(s: Sample) -> Status:
        measured = expansion.measure(s.candidate, source_layer(s))
        return str(next(v["status"] for v in expansion.check(measured) if v["check"] == check_id))

    return judge


def _product_check(check_id: str) -> Judge:
    def judge(s: Sample) -> Status:
        verdicts = product.product_checks(fidelity_metrics(s), LIMITS)
        return str(next(v["status"] for v in verdicts if v["check"] == check_id))

    return judge


_RULES: dict[str, dict[str, dict[str, Any]]] = {}


def brand_verdicts(s: Sample) -> dict[str, dict[str, Any]]:
    """brand_rules.check with the product defaults and no palette / safe zones (cached per sample)."""
    if s.id not in _RULES:
        found = brand_rules.check(s.candidate, s.layer, [], [], LIMITS.model_dump())
        _RULES[s.id] = {v["check"]: v for v in found}
    return _RULES[s.id]


def _brand_rule(check_id: str) -> Judge:
    return lambda s: str(brand_verdicts(s)[check_id]["status"])


def _classical(fn: Callable[[np.ndarray, np.ndarray], dict[str, Any]]) -> Judge:
    return lambda s: str(fn(np.asarray(s.candidate), np.asarray(s.layer.getchannel("A")))["status"])


def _distorted(s: Sample) -> Status:
    return str(classical.check_distorted(s.candidate, s.layer)["status"])


def _frame(s: Sample) -> Status:
    return str(product.frame_check(s.layer)["status"])


register("product_exact", ("recoloured", "warped"), _product_check("product_exact"))
register("product_edges_msssim", "warped", _product_check("product_edges_msssim"))
register("product_colour_delta_e", "recoloured", _product_check("product_colour_delta_e"))
register("product_in_frame", None, _frame)
for _rule in ("product_area", "exposure", "contrast"):
    register(_rule, None, _brand_rule(_rule))
register("duplicated_product", "duplicate", _classical(classical.check_duplicated))
# The set has no grown-product defect: expansion's false-positive rate only (its catch rate is measured in
# tests/workers/test_qc_metrics.py); the duplicate beside the product against the set's second copies.
register("product_expansion", None, _expansion("product_expansion"))
register("product_duplicate_nearby", "duplicate", _expansion("product_duplicate_nearby"))
register("floating_product", "floating", _classical(classical.check_floating))
register("distorted_product", ("recoloured", "warped"), _distorted)


def _text(s: Sample) -> Status:
    from workers.checks import text_ocr  # the OCR model loads on the first call, once per process

    # As QC passes it for a compositor candidate: the background it was made from, copied outside the product.
    known = None if s.backdrop is None else text_ocr.Background(s.backdrop, verbatim=True, source=s.background)
    return str(text_ocr.check(s.candidate, s.layer, known)["status"])


register("text_artefacts", "stray_text", _text)


def _mask_quality(s: Sample) -> Any:
    from workers.checks import mask_quality  # the segment stage's checks of the mask against the source photo

    return mask_quality.check(np.asarray(s.source), np.where(s.mask >= 128, 255, 0).astype(np.uint8))


def _source_check(prefix: str) -> Judge:
    def judge(s: Sample) -> Status:
        return "fail" if any(f.startswith(prefix) for f in _mask_quality(s).reasons) else "pass"

    return judge


def _halo(s: Sample) -> Status:
    from workers.checks import mask_quality

    q = _mask_quality(s)
    found = mask_quality.halo_verdicts(
        {"backdrop_palette": q.palette, "backdrop_tolerance": q.tolerance}, s.candidate, s.layer
    )
    return str(found[0]["status"]) if found else "unchecked"


register("leaked_mask", "leaked_mask", _source_check("leaked_mask"))
register("clipped_mask", "clipped_mask", _source_check("clipped_mask"))
register("mask_halo", "leaked_mask", _halo)


# --- reporting ---------------------------------------------------------------------------------------


def table(tallies: dict[str, Tally]) -> str:
    """A markdown table of one split's tallies: check, defect, TPR, FPR, n, unchecked, gating."""
    from workers.checks.rates import MAX_FALSE_POSITIVE_RATE

    lines = [
        "| check | defect | TPR | FPR | n (defect / clean) | unchecked (defect / clean) | gating |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, t in tallies.items():
        r = t.rate()
        tpr = f"{r.tpr:.1%} ({t.caught}/{t.n_defect})" if t.n_defect else "n/a (no defect in the set)"
        gate = (
            "yes"
            if r.gating
            else (f"no: FPR > {MAX_FALSE_POSITIVE_RATE:.0%}" if t.n_defect else "no: TPR not measured")
        )
        lines.append(
            f"| `{name}` | {', '.join(t.defects) or '-'} | {tpr} | {r.fpr:.1%} ({t.false_alarms}/{t.n_clean}) "
            f"| {t.n_defect} / {t.n_clean} | {t.defect_unchecked} / {t.clean_unchecked} | {gate} |"
        )
    return "\n".join(lines)


def literal(tallies: dict[str, Tally]) -> str:
    """``rates.MEASURED`` as Python source, from one split's tallies (the held-out split's)."""
    rows = [
        f'    "{n}": CheckRate("{n}", tpr={r.tpr}, fpr={r.fpr}, defects={r.defects}, clean={r.clean}, '
        f"unchecked_defects={r.unchecked_defects}, unchecked_clean={r.unchecked_clean}),"
        for n, r in ((n, t.rate()) for n, t in tallies.items())
    ]
    return "MEASURED: dict[str, CheckRate] = {\n" + "\n".join(rows) + "\n}"
