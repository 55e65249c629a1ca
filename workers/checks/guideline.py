"""Guideline check: for one candidate image, its caption and the product image, a pass/fail
verdict with a one-line reason per guideline: the baseline failure modes of generated ads plus
the brand's own guidelines (each flexible or not, with a weight).

A hosted vision model judges every rule in one call. The local model is text-only, so with it
(or the rules backend, or a text-only hosted model) the baseline rules that pixels can answer
are checked classically (workers/checks/guideline_classical.py, text_artefacts by OCR), the brand's
written guidelines that map to a measurable rule (workers/checks/guideline_rules.py: product size,
margin, no text, brand colours, light/dark background, centred) are measured, and the others are
marked "unchecked" with the reason: never a made-up pass. The result's ``router`` says which
written guidelines were mapped, and to what rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, Field

from workers.language.hosted import hosted_answer, with_one_reask
from workers.language.prompts import load_prompt
from workers.language.text import cap_at_boundary, collapse

if TYPE_CHECKING:
    from shared.config import Settings
    from workers.checks.text_ocr import Background

BASELINE: dict[str, str] = {
    "duplicated_product": "The product appears exactly once; there is no second or partial copy of it.",
    "extra_objects": "There are no extra limbs, hands or objects that the caption does not mention.",
    "floating_product": "The product rests on a surface with a plausible contact shadow; it does not float.",
    "text_artefacts": "There is no garbled text, lettering or watermark anywhere in the image.",
    "distorted_product": "The product looks exactly like image 2: same shape, colours, logo and text, not warped.",
}
WEIGHTED_PASS = 0.75  # weighted policy: share of the checked weight that must pass
MAX_REASON_CHARS = 200


@dataclass(frozen=True)
class Scene:
    """What the classical path measures the brand's written guidelines against, besides the pixels."""

    background: Background | None = None  # the candidate's background source (text_artefacts)
    palette: list[str] = field(default_factory=list)
    palette_radius: float = 5.0  # dE00 (the default of shared.qc.QcThresholds.palette_radius)


class Verdict(BaseModel):
    id: str = Field(max_length=40)
    passed: bool
    reason: str = Field("", max_length=1000)


class GuidelineAnswer(BaseModel):
    verdicts: list[Verdict] = Field(max_length=200)


def rules(guidelines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Baseline rules (not flexible, weight 1) then the brand's, each with a stable id."""
    out = [
        {"guideline": k, "text": t, "kind": "baseline", "flexible": False, "weight": 1.0} for k, t in BASELINE.items()
    ]
    for i, g in enumerate(guidelines, start=1):
        out.append(
            {
                "guideline": f"brand_{i}",
                "text": collapse(str(g["text"])),
                "kind": "brand",
                "flexible": bool(g.get("flexible", False)),
                "weight": float(g.get("weight", 1.0)),
            }
        )
    return out


def check(
    candidate: Image.Image,
    layer: Image.Image,
    product: Image.Image,
    caption: str,
    guidelines: list[dict[str, Any]],
    policy: str,
    settings: Settings,
    scene: Scene | None = None,
) -> dict[str, Any]:
    """-> {"verdicts", "passed", "summary", "method", "backend", "model", "fallback_reason", "calls",
    "prompt_version", "router"}. A hosted backend that cannot answer raises LLMError (the stage fails)."""
    from workers.models import llm_hosted

    _check_args(candidate, layer, product, caption, policy)
    todo = rules(guidelines)
    reason = llm_hosted.no_vision_reason(settings, "classical checks only")
    if reason:
        result = _classical(candidate, layer, todo, reason, scene=scene or Scene())
    else:
        result = _vision(candidate, layer, product, caption, todo, settings, scene or Scene())
    return {**result, **decide(result["verdicts"], policy)}


def _check_args(candidate: Image.Image, layer: Image.Image, product: Image.Image, caption: str, policy: str) -> None:
    for name, image in (("candidate", candidate), ("layer", layer), ("product", product)):
        if not isinstance(image, Image.Image):
            raise ValueError(f"{name}: expected a PIL image")
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError("caption: expected a non-empty str")
    if policy not in ("strict", "flexible", "weighted"):
        raise ValueError(f"policy must be strict, flexible or weighted, got {policy!r}")


def _classical(
    candidate: Image.Image,
    layer: Image.Image,
    todo: list[dict[str, Any]],
    fallback_reason: str | None,
    calls: list[dict[str, Any]] | None = None,
    answered: dict[str, dict[str, Any]] | None = None,
    scene: Scene | None = None,
) -> dict[str, Any]:
    """Vision verdicts where there are some (answered), classical ones for the baseline, measured ones
    for the brand's guidelines the router maps, else unchecked."""
    from workers.checks import guideline_classical

    scene = scene or Scene()
    rgb = candidate.convert("RGB")
    pixels = {v["guideline"]: v for v in guideline_classical.check(rgb, layer, scene.background)}
    brand = _brand_verdicts(rgb, layer, [r for r in todo if r["kind"] == "brand"], scene, pixels)
    answered = answered or {}
    verdicts = [
        {
            **rule,
            **(
                answered.get(rule["guideline"])
                or brand.get(rule["guideline"])
                or _pixel_verdict(pixels.get(rule["guideline"]))
            ),
        }
        for rule in todo
    ]
    return {
        "router": router_record(todo),
        "verdicts": verdicts,
        "method": "vision+classical" if answered else "classical",
        "backend": "rules",
        "model": "guideline-classical-v1",
        "fallback_reason": fallback_reason,
        "calls": calls or [],
        "prompt_version": None,
    }


def router_record(todo: list[dict[str, Any]]) -> dict[str, Any]:
    """Which of the brand's written guidelines map to a measurable rule (and to which), which do not and why."""
    from workers.checks import guideline_rules

    mapped, unmapped = [], []
    for rule in todo:
        if rule["kind"] != "brand":
            continue
        routed = guideline_rules.route(rule["text"])
        entry = {"guideline": rule["guideline"], "text": rule["text"], "reason": routed.reason}
        if routed.rule is None:
            unmapped.append(entry)
        else:
            mapped.append({**entry, **routed.rule.record()})
    return {"mapped": mapped, "unmapped": unmapped}


def _brand_verdicts(
    rgb: Image.Image,
    layer: Image.Image,
    brand: list[dict[str, Any]],
    scene: Scene,
    baseline: dict[str, dict[str, Any]],
) -> dict[str, dict[str, Any]]:
    """Verdicts of the brand guidelines the router maps, measured on the pixels; unmapped ones unchecked."""
    from workers.checks import guideline_rules

    px = guideline_rules.Pixels(
        np.asarray(rgb), np.asarray(layer.getchannel("A")), scene.palette, scene.palette_radius, baseline
    )
    out: dict[str, dict[str, Any]] = {}
    for rule in brand:
        routed = guideline_rules.route(rule["text"])
        if routed.rule is None:
            out[rule["guideline"]] = {"status": "unchecked", "reason": routed.reason, "method": "none", "value": None}
            continue
        got = guideline_rules.measure(routed.rule, px)
        out[rule["guideline"]] = {
            **got,
            "reason": f"{routed.rule.describe()}: {got['reason']}",
            "method": f"rule:{routed.rule.kind}",
            "mapped": routed.rule.record(),
        }
    return out


def _pixel_verdict(verdict: dict[str, Any] | None) -> dict[str, Any]:
    if verdict is None:
        return {
            "status": "unchecked",
            "reason": "a written guideline needs a vision-language model (none configured)",
            "method": "none",
            "value": None,
        }
    return {
        "status": verdict["status"],
        "reason": verdict["reason"],
        "method": verdict.get("method", "classical"),  # "ocr" for text_artefacts
        "value": verdict.get("value"),
        **({"read": verdict["read"]} if "read" in verdict else {}),
    }


def _vision(
    candidate: Image.Image,
    layer: Image.Image,
    product: Image.Image,
    caption: str,
    todo: list[dict[str, Any]],
    settings: Settings,
    scene: Scene,
) -> dict[str, Any]:
    from workers.models import llm_hosted

    backend, template = llm_hosted.backend_for(settings), load_prompt("guideline", "v1")
    images = (llm_hosted.image_part(candidate.convert("RGB")), llm_hosted.image_part(product))
    listing = "\n".join(f"{r['guideline']}: {r['text']}" for r in todo)
    ids = [r["guideline"] for r in todo]
    calls: list[dict[str, Any]] = []

    def ask(errors: dict[str, str]) -> GuidelineAnswer:
        return hosted_answer(
            backend, template, GuidelineAnswer, calls, errors, images, caption=caption, guidelines=listing
        )

    answer, failed = with_one_reask(ask, lambda a: answer_errors(a, ids))
    got = {v.id: _one_line(v) for v in answer.verdicts if v.id in ids}
    if failed:  # incomplete twice: keep what it answered, check the rest classically or say unchecked
        reason = f"{backend.name} answered incompletely twice ({'; '.join(failed.values())})"
        return {**_classical(candidate, layer, todo, reason, calls, got, scene), "prompt_version": template.id}
    return {
        "verdicts": [{**r, **got[r["guideline"]]} for r in todo],
        "method": "vision",
        "backend": backend.name,
        "model": backend.model,
        "fallback_reason": None,
        "calls": calls,
        "prompt_version": template.id,
    }


def answer_errors(answer: GuidelineAnswer, ids: list[str]) -> dict[str, str]:
    """Exactly one verdict per rule id; unknown ids are reported too (the model misread the list)."""
    seen = [v.id for v in answer.verdicts]
    missing = [i for i in ids if i not in seen]
    extra = sorted({i for i in seen if i not in ids or seen.count(i) > 1})
    problems = ([f"no verdict for {', '.join(missing)}"] if missing else []) + (
        [f"unknown or repeated ids {', '.join(extra)}"] if extra else []
    )
    return {"verdicts": "; ".join(problems)} if problems else {}


def _one_line(verdict: Verdict) -> dict[str, Any]:
    reason = cap_at_boundary(collapse(verdict.reason) or "no reason given", MAX_REASON_CHARS)
    return {"status": "pass" if verdict.passed else "fail", "reason": reason, "method": "vision", "value": None}


def decide(verdicts: list[dict[str, Any]], policy: str) -> dict[str, Any]:
    """The guidelines alone under ``policy`` with every flexible rule relaxed: the most this check can say
    on its own. The campaign's decision (product and brand checks too, flexible rules relaxed only when
    fewer than top_k pass) is workers/checks/policy.py's."""
    from workers.checks import policy as policies

    found = policies.checks({"guidelines": {"verdicts": verdicts}})
    verdict = policies.decide(found, policy, WEIGHTED_PASS, [c["id"] for c in found if c["flexible"]])
    return {
        "passed": verdict["passed"],
        "weighted_share": round(verdict["weighted_share"], 3),
        "failed": verdict["failed"],
        "unchecked": verdict["unchecked"],
    }
