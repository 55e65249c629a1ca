"""Decompose stage: ad brief -> products / backgrounds / themes / mood (plain functions, no DB).

With the local backend a small LLM fills a code-written JSON skeleton; its answer is
validated (grounded in the brief, short, no scene mixed into the product...),
repaired once with the validation error in the prompt, and otherwise replaced by
the transparent rules decomposer, with `fallback_reason` saying what went wrong.
A hosted backend also translates the brief to English; its answer passes the same checks.

Nothing here invents content: every phrase comes from the brief (or its translation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from workers.language import guards
from workers.language.hosted import HOSTED_BACKENDS, check_settings, errors_by_field, hosted_answer, with_one_reask
from workers.language.prompts import PromptTemplate, load_prompt
from workers.language.rules import MAX_BRIEF_CHARS, RULES_MODEL_ID, check_brief, rules_decompose
from workers.language.text import (
    PREP_RE,
    collapse,
    content_stems,
    has_negation,
    is_grounded,
    stem,
    strip_determiners,
    words,
)

if TYPE_CHECKING:
    from shared.config import Settings

MAX_ITEM_WORDS = 8
LIST_FIELDS = ("products", "backgrounds", "themes")

# ----------------------------------------------------------------------------- validation


class DecompositionCheck(BaseModel):
    """What a usable decomposition looks like. The brief comes in the validation
    context; every check is a field validator so each error names its field
    (the repair re-asks only the failing fields)."""

    products: list[str] = Field(min_length=1, max_length=4)
    backgrounds: list[str] = Field(min_length=1, max_length=4)
    themes: list[str] = Field(default_factory=list, max_length=4)

    @field_validator("products", "backgrounds", "themes")
    @classmethod
    def _items_ok(cls, items: list[str], info: ValidationInfo) -> list[str]:
        brief = str((info.context or {}).get("brief", ""))
        name = str(info.field_name)
        for item in items:
            _check_item(name, item, brief)
        _check_against_earlier(name, items, info.data)
        return items


def _check_item(name: str, item: str, brief: str) -> None:
    n = len(words(item))
    if not 1 <= n <= MAX_ITEM_WORDS:
        raise ValueError(f'{name} item "{item}" has {n} words (1-{MAX_ITEM_WORDS} allowed)')
    if has_negation(item):
        raise ValueError(f'{name} item "{item}" is negated')
    # Products: a shared word suffices (the model may say "sneaker" for "Nike sneakers");
    # backgrounds and themes are pure extraction, every word must come from the brief.
    if not is_grounded(item, brief, strict=name != "products"):
        raise ValueError(f'{name} item "{item}" is not in the brief')
    brief_stems = content_stems(brief)
    if len(brief_stems) >= 3 and len(content_stems(item) & brief_stems) >= 0.8 * len(brief_stems):
        raise ValueError(f'{name} item "{item}" repeats the whole brief')
    if name == "products" and PREP_RE.search(item):
        raise ValueError(f'products item "{item}" contains a place or time; give only the product')


def _check_against_earlier(name: str, items: list[str], earlier: dict[str, Any]) -> None:
    """No phrase in two lists; a theme must not be a product/background renamed
    ("dining table" as a theme next to the background "dinner table")."""
    for other in LIST_FIELDS[: LIST_FIELDS.index(name)]:
        for item in items:
            if any(_overlaps(item, x, same_head=name == "themes") for x in earlier.get(other) or []):
                raise ValueError(f'{name} item "{item}" is already one of the {other}')


def _overlaps(item: str, other: str, same_head: bool) -> bool:
    """One phrase's content words contain the other's ("Nike Air Max" in
    "Nike Air Max sneakers"), or, for themes, both end in the same noun."""
    a, b = content_stems(item), content_stems(other)
    return bool(a and b and (a <= b or b <= a)) or (same_head and _head(item) == _head(other))


def _head(phrase: str) -> str:
    ws = words(phrase)
    return stem(ws[-1]) if ws else ""


def field_errors(parts: dict[str, Any], brief: str) -> dict[str, str]:
    """{field: reason} for every failing field; empty when the decomposition is usable."""
    data = {k: list(parts.get(k) or []) for k in LIST_FIELDS}
    return errors_by_field(DecompositionCheck, data, {"brief": brief}, "decomposition")


def validation_error(parts: dict[str, Any], brief: str) -> str | None:
    """None when the decomposition is usable, else a short readable reason."""
    errors = field_errors(parts, brief)
    return "; ".join(errors.values()) if errors else None


def clean_mood(mood: str | None, parts: dict[str, Any], brief: str) -> str | None:
    """The model's mood is kept only if the brief says it and no other field does
    (the model tends to echo a theme there); dropping is not inventing."""
    if not mood or not is_grounded(mood, brief, strict=True) or len(words(mood)) > 4 or has_negation(mood):
        return None
    used = set().union(*(content_stems(x) for k in LIST_FIELDS for x in parts.get(k) or []))
    return None if content_stems(mood) & used else mood


def english_errors(parts: dict[str, Any]) -> dict[str, str]:
    """A hosted answer must be in English (it was asked to translate)."""
    return {
        k: f'{k} item "{x}" is not English' for k in LIST_FIELDS for x in parts.get(k) or [] if not guards.is_english(x)
    }


# ----------------------------------------------------------------------------- decompose


def decompose(brief: str, settings: Settings | None = None) -> dict[str, Any]:
    """Brief -> {"products", "backgrounds", "themes", "mood", "negatives", "backend",
    "model", "fallback_reason", "validation_error", "prompt_version", "calls", "brief"}."""
    text = check_brief(brief)
    settings = check_settings(settings)
    if settings.llm_backend == "rules":
        return _rules_result(text, fallback_reason=None, calls=[], prompt_version=None)
    if settings.llm_backend in HOSTED_BACKENDS:
        return _hosted_decompose(text, settings, load_prompt("decompose", "v3"), [])
    template = load_prompt("decompose", "v1")
    calls: list[dict[str, Any]] = []
    try:
        return _local_decompose(text, settings, template, calls)
    except (OSError, RuntimeError, ImportError, ValueError) as exc:  # model missing or broken
        reason = f"local LLM unavailable ({type(exc).__name__}: {exc}); used the rules decomposer"
        return _rules_result(text, reason, calls, template.id)


def _rules_result(
    brief: str, fallback_reason: str | None, calls: list[dict[str, Any]], prompt_version: str | None
) -> dict[str, Any]:
    parts = rules_decompose(brief)
    return _result(brief, parts, parts["negatives"], "rules", RULES_MODEL_ID, fallback_reason, calls, prompt_version)


def _result(
    brief: str,
    parts: dict[str, Any],
    negatives: list[str],
    backend: str,
    model: str,
    fallback_reason: str | None,
    calls: list[dict[str, Any]],
    prompt_version: str | None,
) -> dict[str, Any]:
    return {
        "brief": brief,
        "products": parts["products"],
        "backgrounds": parts["backgrounds"],
        "themes": parts["themes"],
        "mood": parts.get("mood"),
        "season": parts.get("season"),
        "audience": parts.get("audience"),
        "negatives": negatives,
        "backend": backend,
        "model": model,
        "fallback_reason": fallback_reason,
        "validation_error": validation_error(parts, brief),
        "prompt_version": prompt_version,
        "calls": calls,
        "guards": {"english": not english_errors(parts)},
    }


# ----------------------------------------------------------------------------- local backend


def _local_decompose(
    brief: str, settings: Settings, template: PromptTemplate, calls: list[dict[str, Any]]
) -> dict[str, Any]:
    """Constrained try; one repair that keeps the valid fields, re-asks the failing
    ones with the error in the prompt and their rejected values banned; then rules."""
    parts = _llm_parts(brief, settings, template, calls, previous=None, errors={})
    errors = field_errors(parts, brief)
    if not errors:
        return _local_result(brief, parts, calls, template.id, settings)
    repaired = _llm_parts(brief, settings, template, calls, previous=parts, errors=errors)
    repair_errors = field_errors(repaired, brief)
    if not repair_errors:
        return _local_result(brief, repaired, calls, template.id, settings)
    reason = (
        f"model output invalid (first try: {'; '.join(errors.values())}; "
        f"repair: {'; '.join(repair_errors.values())}); used the rules decomposer"
    )
    return _rules_result(brief, reason, calls, template.id)


def _decompose_fields(previous: dict[str, Any] | None, errors: dict[str, str]) -> list[Any]:
    """Skeleton fields: all asked on the first try; on repair the valid ones are fixed."""
    from workers.models import llm_local

    specs = []
    for name in LIST_FIELDS:
        optional = name == "themes"  # the model may answer [] for a brief without time/light
        if previous is not None and name not in errors:
            specs.append(llm_local.FieldSpec(name, optional=optional, fixed=list(previous[name])))
        else:
            banned = tuple(previous[name]) if previous is not None else ()
            specs.append(llm_local.FieldSpec(name, optional=optional, banned=banned))
    mood = None if previous is None else str(previous.get("raw_mood") or "")
    specs.append(llm_local.FieldSpec("mood", kind="str", optional=True, fixed=mood))
    return specs


def _llm_parts(
    brief: str,
    settings: Settings,
    template: PromptTemplate,
    calls: list[dict[str, Any]],
    previous: dict[str, Any] | None,
    errors: dict[str, str],
) -> dict[str, Any]:
    from workers.models import llm_local

    # An item of <= 8 words never needs more than ~16 tokens; the cap stops runaway loops early.
    budget = min(int(settings.llm_max_new_tokens), 16)
    user = template.render_user("; ".join(errors.values()) or None, brief=brief)
    got = llm_local.generate_fields(
        template.system,
        user,
        _decompose_fields(previous, errors),
        budget,
        examples=template.examples,
        settings=settings,
    )
    calls += [dict(c, attempt="repair" if errors else "first") for c in got.calls]
    parts: dict[str, Any] = {k: list(got.values.get(k) or []) for k in LIST_FIELDS}
    parts["raw_mood"] = str(got.values.get("mood") or "")
    parts["mood"] = clean_mood(parts["raw_mood"], parts, brief)
    return parts


def _local_result(
    brief: str, parts: dict[str, Any], calls: list[dict[str, Any]], version: str, settings: Settings
) -> dict[str, Any]:
    from workers.models import llm_local

    rules = rules_decompose(brief)  # negations, season and audience are parsed by rule, not by the 135M model
    parts = {**parts, "season": rules["season"], "audience": rules["audience"]}
    return _result(brief, parts, rules["negatives"], "local", llm_local.model_id(settings), None, calls, version)


# ----------------------------------------------------------------------------- hosted backends


class DecomposeAnswer(BaseModel):
    """What a hosted model answers for decompose.v3; the same field checks as the local path follow."""

    english: str | None = Field(None, max_length=MAX_BRIEF_CHARS * 2)
    products: list[str] = Field(min_length=1, max_length=10)
    backgrounds: list[str] = Field(default_factory=list, max_length=10)
    themes: list[str] = Field(default_factory=list, max_length=10)
    mood: str | None = Field(None, max_length=60)
    season: str | None = Field(None, max_length=60)
    audience: str | None = Field(None, max_length=120)


def _hosted_parts(
    backend: Any, brief: str, template: PromptTemplate, calls: list[dict[str, Any]], errors: dict[str, str]
) -> tuple[dict[str, Any], str]:
    """(parts, the English brief the parts are checked against)."""
    answer = hosted_answer(backend, template, DecomposeAnswer, calls, errors, brief=brief)
    english = (answer.english or "").strip() or brief
    parts: dict[str, Any] = {
        k: [collapse(strip_determiners(x)) for x in getattr(answer, k) if x.strip()] for k in LIST_FIELDS
    }
    parts["raw_mood"] = answer.mood or ""
    parts["mood"] = clean_mood(parts["raw_mood"], parts, english)
    parts["season"], parts["audience"] = (_grounded_label(v, english) for v in (answer.season, answer.audience))
    return parts, english


def _grounded_label(value: str | None, english: str) -> str | None:
    """Season / audience kept only when every word is in the (English) brief; dropping is not inventing."""
    value = collapse(strip_determiners(value or ""))
    ok = value and len(words(value)) <= 6 and not has_negation(value) and is_grounded(value, english, strict=True)
    return value if ok else None


def _hosted_decompose(
    brief: str, settings: Settings, template: PromptTemplate, calls: list[dict[str, Any]]
) -> dict[str, Any]:
    """One answer, one re-ask with the failed checks, then the rules decomposer (said in the result).
    LLMError (unreachable, no credentials, throttled past the retries) propagates: the stage fails."""
    from workers.models import llm_hosted

    backend = llm_hosted.backend_for(settings)
    (parts, english), failed = with_one_reask(
        lambda e: _hosted_parts(backend, brief, template, calls, e),
        lambda answer: english_errors(answer[0]) | field_errors(*answer),
    )
    if failed:
        reason = f"{backend.name} output invalid twice ({'; '.join(failed.values())}); used the rules decomposer"
        return _rules_result(brief, reason, calls, template.id)
    result = _result(
        english, parts, rules_decompose(english)["negatives"], backend.name, backend.model, None, calls, template.id
    )
    return {**result, "brief": brief, "english": english if english != brief else None}
