"""Revise stage: the validate-and-revise loop's rewrite. Given the caption and the reasons its
candidates failed review, a revised caption and more negative-prompt terms.

openai / bedrock rewrite the caption (revise.v1); the local model adds one clause that
addresses the failures (revise_local.v1). Either answer must keep the product (every content
word of the subject) and passes the same deterministic guards as every caption; an answer that
fails twice, and the rules backend, use the fixed per-failure clauses below, and the result says so.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from workers.language import guards
from workers.language.budget import TokenBudget, budget_for
from workers.language.caption import negative_terms
from workers.language.hosted import HOSTED_BACKENDS, hosted_answer, with_one_reask
from workers.language.prompts import PromptTemplate, load_prompt
from workers.language.rules import RULES_MODEL_ID
from workers.language.text import MAX_CAPTION_CHARS, collapse, content_stems, has_negation, is_instruction_like, words

if TYPE_CHECKING:
    from shared.config import Settings

# Failure -> (clause added to the caption, negative-prompt terms). Composition failures
# (product_area, product_in_frame) are the plan's to fix, not the caption's.
RULE_FIXES: dict[str, tuple[str, tuple[str, ...]]] = {
    "duplicated_product": ("a single product in the frame", ("duplicate product", "second product")),
    "floating_product": ("resting firmly on the surface with a soft contact shadow", ("floating product",)),
    "extra_objects": ("clean uncluttered composition", ("extra objects", "extra limbs", "hands", "clutter")),
    "text_artefacts": ("", ("text", "letters", "watermark")),
    "distorted_product": ("", ("distorted product", "warped shape")),
}
MAX_FAILURES_SHOWN = 8


class RevisionAnswer(BaseModel):
    caption: str = Field(min_length=3, max_length=2000)
    negative_terms: list[str] = Field(default_factory=list, max_length=20)
    change: str = Field("", max_length=500)


def failure_summary(failed: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Failed verdicts of a round, most frequent first: [{"guideline", "count", "reason"}]."""
    counts = Counter(v["guideline"] for v in failed)
    first: dict[str, str] = {}
    for v in failed:
        first.setdefault(v["guideline"], collapse(str(v.get("reason") or "")))
    return [{"guideline": g, "count": n, "reason": first[g]} for g, n in counts.most_common(MAX_FAILURES_SHOWN)]


def revise(
    current: dict[str, Any],
    failures: list[dict[str, Any]],
    settings: Settings,
    forbidden_terms: list[str] | tuple[str, ...] = (),
) -> dict[str, Any]:
    """current: the caption stage's result (caption, negative_prompt, parts). -> a caption result with
    "previous_caption", "change" and "failures" added. Hosted LLMError propagates (the stage fails)."""
    _check_args(current, failures)
    backend = settings.llm_backend
    if backend in HOSTED_BACKENDS:
        result = _hosted(current, failures, settings, forbidden_terms)
    elif backend == "local":
        result = _local(current, failures, settings, forbidden_terms)
    else:
        result = _rules(current, failures, forbidden_terms, None, [], None)
    return within_budget(result, budget_for(settings))


def within_budget(result: dict[str, Any], budget: TokenBudget) -> dict[str, Any]:
    """The revised caption and negative prompt fitted to the encoder's tokens. The caption keeps its
    first clause (subject and setting), then its last (where a revision adds its fix), then the rest."""
    clauses = guards.split_clauses(result["caption"])
    importance = [0, *([len(clauses) - 1] if len(clauses) > 1 else []), *range(1, len(clauses) - 1)]
    guarded = guards.guard_clauses(clauses, (), budget, importance, MAX_CAPTION_CHARS)
    negative = guards.fit_tokens(guards.split_clauses(result["negative_prompt"]), budget)
    report = {
        **result["guards"],
        **guarded.token_report(),
        "cut": bool(result["guards"].get("cut")) or guarded.cut,
        "negative_tokens": negative.tokens,
        "negative_dropped": negative.dropped,
    }
    return {**result, "caption": guarded.text, "negative_prompt": negative.text, "guards": report}


def _check_args(current: dict[str, Any], failures: list[dict[str, Any]]) -> None:
    if not isinstance(current, dict) or not str(current.get("caption") or "").strip():
        raise ValueError("current: expected the caption stage's result with a non-empty caption")
    if not isinstance(failures, list) or not all(isinstance(f, dict) and "guideline" in f for f in failures):
        raise ValueError("failures: expected a list of {'guideline', 'reason'} dicts")


def _subject(current: dict[str, Any]) -> str:
    return str((current.get("parts") or {}).get("subject") or "")


def revision_errors(text: str, current: dict[str, Any]) -> dict[str, str]:
    """A revision keeps the product, reads as a caption and changes something."""
    lost = content_stems(_subject(current)) - content_stems(text)
    errors = {}
    if lost:
        errors["caption"] = f"the revised caption dropped the product words {', '.join(sorted(lost))}"
    elif is_instruction_like(text):
        errors["caption"] = "the revised caption is an instruction, not a description"
    elif collapse(text).lower() == collapse(current["caption"]).lower():
        errors["caption"] = "the revised caption is unchanged"
    return errors


def _listing(failures: list[dict[str, Any]]) -> str:
    return "\n".join(f"- {f['guideline']}: {f.get('reason') or 'failed'}" for f in failures) or "- none recorded"


def _hosted(
    current: dict[str, Any], failures: list[dict[str, Any]], settings: Settings, forbidden: list[str] | tuple[str, ...]
) -> dict[str, Any]:
    from workers.models import llm_hosted

    backend, template = llm_hosted.backend_for(settings), load_prompt("revise", "v1")
    calls: list[dict[str, Any]] = []

    def ask(errors: dict[str, str]) -> RevisionAnswer:
        return hosted_answer(
            backend,
            template,
            RevisionAnswer,
            calls,
            errors,
            caption=current["caption"],
            subject=_subject(current) or "the product",
            failures=_listing(failures),
        )

    # checked after the guards: an answer that is usable once they ran ("Generate a ..." stripped) is kept
    answer, failed = with_one_reask(ask, lambda a: revision_errors(guards.guard_prompt(a.caption).text, current))
    if failed:
        reason = f"{backend.name} revision invalid twice ({'; '.join(failed.values())}); used the rule clauses"
        return _rules(current, failures, forbidden, reason, calls, template.id)
    return _result(
        current,
        failures,
        answer.caption,
        answer.negative_terms,
        answer.change,
        forbidden,
        {
            "backend": backend.name,
            "model": backend.model,
            "fallback_reason": None,
            "calls": calls,
            "prompt_version": template.id,
        },
    )


def _local(
    current: dict[str, Any], failures: list[dict[str, Any]], settings: Settings, forbidden: list[str] | tuple[str, ...]
) -> dict[str, Any]:
    from workers.models import llm_local

    template = load_prompt("revise_local", "v1")
    calls: list[dict[str, Any]] = []
    problems = "; ".join(f.get("reason") or f["guideline"] for f in failures) or "none recorded"
    try:
        text, failed = with_one_reask(
            lambda errors: _local_fix(current, problems, settings, template, calls, errors),
            lambda text: fix_errors(text, current),
        )
    except (OSError, RuntimeError, ImportError, ValueError) as exc:
        reason = f"local LLM unavailable ({type(exc).__name__}: {exc}); used the rule clauses"
        return _rules(current, failures, forbidden, reason, calls, template.id)
    if failed:
        reason = f"local clause invalid twice ({'; '.join(failed.values())}); used the rule clauses"
        return _rules(current, failures, forbidden, reason, calls, template.id)
    meta = {
        "backend": "local",
        "model": llm_local.model_id(settings),
        "fallback_reason": None,
        "calls": calls,
        "prompt_version": template.id,
    }
    negatives = [t for f in failures for t in RULE_FIXES.get(f["guideline"], ("", ()))[1]]
    return _result(current, failures, f"{current['caption']}, {text}", negatives, f"added '{text}'", forbidden, meta)


def _local_fix(
    current: dict[str, Any],
    problems: str,
    settings: Settings,
    template: PromptTemplate,
    calls: list[dict[str, Any]],
    errors: dict[str, str],
) -> str:
    import json

    from workers.models import llm_local

    skeleton = "{" + f'"caption": {json.dumps(current["caption"])}, "problems": {json.dumps(problems)}'
    user = template.render_user("; ".join(errors.values()) or None, caption=current["caption"], failures=problems)
    got = llm_local.generate_fields(
        template.system,
        user,
        [llm_local.FieldSpec("fix", kind="str")],
        int(settings.llm_max_new_tokens),
        examples=template.examples,
        prefix=skeleton,
        settings=settings,
    )
    calls += [dict(c, attempt="repair" if errors else "first") for c in got.calls]
    return collapse(str(got.values.get("fix") or ""))


def fix_errors(text: str, current: dict[str, Any]) -> dict[str, str]:
    n = len(words(text))
    if not 1 <= n <= 12:
        return {"fix": f'fix "{text}" has {n} words (1-12 allowed)'}
    if is_instruction_like(text) or has_negation(text):
        return {"fix": f'fix "{text}" is an instruction or a negation, not a description'}
    if content_stems(text) <= content_stems(current["caption"]):
        return {"fix": f'fix "{text}" only repeats the caption'}
    return {}


def _rules(
    current: dict[str, Any],
    failures: list[dict[str, Any]],
    forbidden: list[str] | tuple[str, ...],
    reason: str | None,
    calls: list[dict[str, Any]],
    version: str | None,
) -> dict[str, Any]:
    fixes = [RULE_FIXES[f["guideline"]] for f in failures if f["guideline"] in RULE_FIXES]
    clauses = [c for c, _ in fixes if c and c not in current["caption"]]
    text = ", ".join([current["caption"], *clauses])
    change = f"added {', '.join(repr(c) for c in clauses)}" if clauses else "no caption clause fixes these failures"
    meta = {
        "backend": "rules",
        "model": RULES_MODEL_ID,
        "fallback_reason": reason,
        "calls": calls,
        "prompt_version": version,
    }
    return _result(current, failures, text, [t for _, terms in fixes for t in terms], change, forbidden, meta)


def _result(
    current: dict[str, Any],
    failures: list[dict[str, Any]],
    text: str,
    negatives: list[str],
    change: str,
    forbidden: list[str] | tuple[str, ...],
    meta: dict[str, Any],
) -> dict[str, Any]:
    guarded = guards.guard_prompt(text, forbidden, MAX_CAPTION_CHARS)
    old_negatives = [t for t in str(current.get("negative_prompt") or "").split(", ") if t]
    terms = guards.guard_negative([*old_negatives, *negatives, *guarded.negatives], forbidden)
    return {
        **current,
        **meta,
        "caption": guarded.text,
        "negative_prompt": ", ".join(negative_terms(terms)),
        "previous_caption": current["caption"],
        "change": collapse(change),
        "failures": failures,
        "guards": {**(current.get("guards") or {}), **guarded.report()},  # keeps the caption's translation flag
    }
