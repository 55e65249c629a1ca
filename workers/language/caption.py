"""Caption stage: decomposition -> generation caption and negative prompt (plain functions, no DB).

`caption` builds a caption-style prompt with the seed's topology:
subject, point of reference (preposition), environment, optional lighting/style.
The subject and environment come from the decomposition, never from the model;
the model only fills the lighting/style clauses. Negations are moved to the
negative prompt because diffusion text encoders read "no people" as "people".

Nothing here invents content: every phrase comes from the brief, the product
title, the background caption, the model, or a fixed, documented template word.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from workers.language import guards
from workers.language.budget import TokenBudget, budget_for, estimate_budget
from workers.language.hosted import HOSTED_BACKENDS, check_settings, errors_by_field, hosted_answer, with_one_reask
from workers.language.prompts import PromptTemplate, load_prompt
from workers.language.rules import RULES_MODEL_ID
from workers.language.text import (
    MAX_CAPTION_CHARS,
    PREP_RE,
    SEASONS,
    collapse,
    content_stems,
    dedupe,
    has_negation,
    is_instruction_like,
    join_and,
    prep_alternatives,
    split_negations,
    stem,
    strip_instructions,
    with_article,
    words,
)

if TYPE_CHECKING:
    from shared.config import Settings

DEFAULT_NEGATIVES = ("blurry", "distorted product", "extra objects", "text", "watermark")
TEMPLATE_STYLE = "product photography"
CLAUSE_FIELDS = ("lighting", "style")  # what the local model fills (each field costs it seconds)
HOSTED_CLAUSE_FIELDS = ("pose", "lighting", "camera", "style")  # the seed's full optional topology

_POINT_IN_TIME = frozenset("sunset sunrise dawn dusk twilight night midnight noon midday".split())
_SURFACES = frozenset(
    "table desk counter countertop floor shelf sheet sand grass rock bench bed tray pedestal "
    "plinth surface court street road sidewalk beach board cloth podium stone".split()
)
_LIGHT_WORDS = frozenset(
    "light lights lighting lit glow glowing sun sunlight sunlit backlit backlight shadow shadows "
    "illuminated illumination bright golden hour daylight neon candlelight moonlight rim "
    "highlights luminous radiant ambient diffused".split()
)
_CAMERA_WORDS = frozenset(
    "shot angle view close-up closeup lens eye-level overhead top-down macro wide low high perspective framing "
    "camera aerial portrait landscape telephoto bokeh depth focus".split()
)

# ----------------------------------------------------------------------------- scene


@dataclass(frozen=True)
class Scene:
    """The parts of a caption that come from the decomposition, never from the model."""

    subject: str
    setting: str  # point of reference + environment (+ themes), e.g. "on an urban street at sunset"
    mood: str | None
    negatives: tuple[str, ...]
    forbidden: tuple[str, ...] = ()  # the brand's forbidden terms: never in the positive prompt
    budget: TokenBudget = field(default_factory=estimate_budget)  # the generator's text-encoder tokens
    untranslated: str | None = None  # why the caption is not English: the brief was not, and nothing translated it

    @property
    def base(self) -> str:
        return collapse(f"{self.subject} {self.setting}")


def build_scene(
    decomposition: dict[str, Any],
    product_title: str | None,
    background_caption: str | None,
    forbidden_terms: Sequence[str] = (),
    budget: TokenBudget | None = None,
) -> Scene:
    """Subject from the product title or products; setting from the background
    caption or backgrounds, with the brief's own prepositions; negations moved out."""
    _check_decomposition(decomposition)
    title, neg_title = _caption_ready("product_title", product_title)
    bg_caption, neg_bg = _caption_ready("background_caption", background_caption)
    subject = _subject(decomposition, title)
    setting = collapse(f"{_environment(decomposition, bg_caption)} {_theme_phrase(decomposition, bg_caption)}")
    mood, neg_mood = split_negations(str(decomposition.get("mood") or ""))
    negatives = list(decomposition.get("negatives") or []) + neg_title + neg_bg + neg_mood
    return Scene(
        subject,
        setting,
        mood or None,
        tuple(dedupe(negatives)),
        tuple(guards.check_terms("forbidden_terms", forbidden_terms)),
        budget or estimate_budget(),
        untranslated_reason(decomposition),
    )


def untranslated_reason(decomposition: dict[str, Any]) -> str | None:
    """Set when the brief is not English and no hosted model translated it (decompose's "english"):
    the caption then carries the brief's own words, which an English-only text encoder reads poorly."""
    brief = str(decomposition.get("brief") or "")
    if not brief or decomposition.get("english") or guards.is_english(brief):
        return None
    return (
        "the brief is not in English and no language model translated it (the rules and local backends do not "
        "translate): the caption keeps the brief's words; configure a hosted backend or write the brief in English"
    )


def _caption_ready(name: str, value: str | None) -> tuple[str, list[str]]:
    """Optional free text (title, retrieved background caption) cleaned of control
    characters and quotes, leading instructions and negations (returned apart)."""
    if value is None:
        return "", []
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str or None, got {type(value).__name__}")
    return split_negations(strip_instructions(collapse(re.sub(r"[\x00-\x1f\"`{}\[\]<>]", " ", value))))


def _check_decomposition(decomposition: dict[str, Any]) -> None:
    if not isinstance(decomposition, dict):
        raise TypeError(f"decomposition must be a dict, got {type(decomposition).__name__}")
    for key in ("products", "backgrounds", "themes"):
        value = decomposition.get(key, [])
        if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
            raise ValueError(f"decomposition[{key!r}] must be a list of str, got {value!r}")


def _subject(decomposition: dict[str, Any], title: str) -> str:
    """Product title (plus the generic product noun when the title lacks it), else the products."""
    products = [p for p in decomposition.get("products", []) if p]
    if title:
        if products and not content_stems(title) & content_stems(" ".join(products)):
            title = f"{title} {products[0]}"
        return with_article(title)
    if not products:
        return "the product"  # fixed template word: nothing was decomposed to name it
    return join_and([with_article(p) for p in products])


def _preposition(decomposition: dict[str, Any], phrase: str, default: str) -> tuple[str, str | None]:
    """The brief's own preposition (and article) before `phrase`, else a default."""
    brief = str(decomposition.get("brief") or "")
    m = re.search(rf"\b({prep_alternatives()})\s+(?:(a|an|the)\s+)?{re.escape(phrase)}\b", brief, re.I)
    return (m.group(1).lower(), m.group(2)) if m else (default, None)


def _environment(decomposition: dict[str, Any], bg_caption: str) -> str:
    backgrounds = [b for b in decomposition.get("backgrounds", []) if b]
    if bg_caption:
        first = backgrounds[0] if backgrounds else ""
        prep, _ = _preposition(decomposition, first, _default_prep(first)) if first else ("in", None)
        return bg_caption if PREP_RE.match(bg_caption) else f"{prep} {bg_caption}"
    return " ".join(_located(decomposition, b) for b in backgrounds)


def _located(decomposition: dict[str, Any], background: str) -> str:
    prep, article = _preposition(decomposition, background, _default_prep(background))
    noun = f"{article.lower()} {background}" if article else with_article(background)
    return f"{prep} {noun}"


def _default_prep(background: str) -> str:
    ws = words(background)
    return "on" if ws and stem(ws[-1]) in _SURFACES else "in"


def _theme_phrase(decomposition: dict[str, Any], bg_caption: str) -> str:
    """ "at sunset", "in soft morning light"; skipped when the background caption already says it."""
    out = []
    for theme in decomposition.get("themes", []):
        if not theme or (bg_caption and content_stems(theme) <= content_stems(bg_caption)):
            continue
        head = stem(words(theme)[-1])
        prep, article = _preposition(decomposition, theme, "at" if head in _POINT_IN_TIME else "in")
        out.append(f"{prep} {article.lower() + ' ' if article else ''}{theme}")
    season = str(decomposition.get("season") or "")
    if season and not (bg_caption and content_stems(season) <= content_stems(bg_caption)):
        out.append(f"in {season}" if re.fullmatch(SEASONS, season, re.I) else f"during the {season}")
    return " ".join(out)


# ----------------------------------------------------------------------------- clauses


class CaptionFields(BaseModel):
    """The model's clauses: short, caption-like, and the lighting is about light."""

    lighting: str = Field(min_length=3)
    style: str = Field(min_length=3)
    pose: str = ""  # optional clauses: empty is a valid "nothing to add"
    camera: str = ""

    @field_validator("lighting", "style", "pose", "camera")
    @classmethod
    def _caption_like(cls, value: str, info: ValidationInfo) -> str:
        if not value and info.field_name in ("pose", "camera"):
            return value
        n = len(words(value))
        if not 1 <= n <= 10:
            raise ValueError(f'{info.field_name} "{value}" has {n} words (1-10 allowed)')
        if is_instruction_like(value) or has_negation(value):
            raise ValueError(f'{info.field_name} "{value}" is an instruction or a negation, not a description')
        base = str((info.context or {}).get("base", ""))
        if content_stems(value) <= content_stems(base):
            raise ValueError(f'{info.field_name} "{value}" only repeats the subject or setting')
        return value

    @field_validator("lighting")
    @classmethod
    def _about_light(cls, value: str) -> str:
        if not {w.lower() for w in words(value)} & _LIGHT_WORDS:
            raise ValueError(f'lighting "{value}" does not describe light')
        return value

    @field_validator("camera")
    @classmethod
    def _about_camera(cls, value: str) -> str:
        if value and not {w.lower() for w in words(value)} & _CAMERA_WORDS:
            raise ValueError(f'camera "{value}" does not describe a camera position or shot')
        return value


class ClauseAnswer(BaseModel):
    """What a hosted model answers for caption.v2; CaptionFields checks it afterwards."""

    pose: str = Field("", max_length=200)
    lighting: str = Field("", max_length=200)
    camera: str = Field("", max_length=200)
    style: str = Field("", max_length=200)


def caption_field_errors(fields: dict[str, str], scene: Scene) -> dict[str, str]:
    """{field: reason} for every unusable clause; empty when all are usable."""
    return errors_by_field(CaptionFields, dict(fields), {"base": scene.base}, "caption")


def _clauses_without_negations(fields: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    negatives: list[str] = []
    clean: dict[str, str] = {}
    for key, value in fields.items():
        kept, negs = split_negations(strip_instructions(value))
        clean[key], negatives = kept, negatives + negs
    return clean, negatives


# ----------------------------------------------------------------------------- caption


def caption(
    decomposition: dict[str, Any],
    product_title: str | None = None,
    background_caption: str | None = None,
    settings: Settings | None = None,
    forbidden_terms: Sequence[str] = (),
) -> dict[str, Any]:
    """Decomposition -> {"caption", "negative_prompt", "backend", "model",
    "fallback_reason", "prompt_version", "calls", "parts", "guards"}."""
    settings = check_settings(settings)
    scene = build_scene(decomposition, product_title, background_caption, forbidden_terms, budget_for(settings))
    if settings.llm_backend == "rules":
        return _template_caption(scene, None, [], None)
    if settings.llm_backend in HOSTED_BACKENDS:
        return _hosted_caption(scene, settings, load_prompt("caption", "v2"), [])
    template = load_prompt("caption", "v1")
    calls: list[dict[str, Any]] = []
    try:
        return _local_caption(scene, settings, template, calls)
    except (OSError, RuntimeError, ImportError, ValueError) as exc:
        reason = f"local LLM unavailable ({type(exc).__name__}: {exc}); used the template caption"
        return _template_caption(scene, reason, calls, template.id)


def _template_caption(
    scene: Scene, fallback_reason: str | None, calls: list[dict[str, Any]], prompt_version: str | None
) -> dict[str, Any]:
    """No lighting is made up: the template adds only the fixed style words."""
    fields = {"lighting": "", "style": TEMPLATE_STYLE}
    return _caption_result(scene, fields, [], "rules", RULES_MODEL_ID, fallback_reason, calls, prompt_version)


def _caption_result(
    scene: Scene,
    fields: dict[str, str],
    negatives: list[str],
    backend: str,
    model: str,
    fallback_reason: str | None,
    calls: list[dict[str, Any]],
    prompt_version: str | None,
) -> dict[str, Any]:
    guarded = compose_caption(scene, fields)
    negative = negative_prompt(
        guards.guard_negative([*scene.negatives, *negatives, *guarded.negatives], scene.forbidden), scene.budget
    )
    return {
        "caption": guarded.text,
        "negative_prompt": negative.text,
        "backend": backend,
        "model": model,
        "fallback_reason": fallback_reason,
        "prompt_version": prompt_version,
        "calls": calls,
        "parts": {"subject": scene.subject, "setting": scene.setting, "mood": scene.mood, **fields},
        "guards": {
            **guarded.report(),
            "negative_tokens": negative.tokens,
            "negative_dropped": negative.dropped,
            "untranslated": scene.untranslated is not None,
            "translation": scene.untranslated,
        },
    }


# The clauses a caption is made of, in text order (the seed's topology), and which to keep first when the
# text encoder cannot read them all: the brief's own words (subject + setting, mood), then the model's.
CAPTION_CLAUSES = ("base", "pose", "lighting", "camera", "mood", "style")
CLAUSE_IMPORTANCE = ("base", "mood", "lighting", "pose", "camera", "style")


def compose_caption(scene: Scene, fields: dict[str, str]) -> guards.Guarded:
    """The seed's topology: subject + point of reference + environment, then the optional
    pose, lighting, camera, mood and style clauses; through the guards (caption-like,
    negation-free, no forbidden term, within the encoder's tokens and the character cap)."""
    given = {**fields, "base": scene.base, "mood": f"{scene.mood} mood" if scene.mood else ""}
    clauses = [collapse(given.get(name, "")) for name in CAPTION_CLAUSES]
    importance = [CAPTION_CLAUSES.index(name) for name in CLAUSE_IMPORTANCE]
    return guards.guard_clauses(clauses, scene.forbidden, scene.budget, importance, MAX_CAPTION_CHARS)


def negative_terms(extra: list[str]) -> list[str]:
    """The defaults first (always present), then what the brief or model negated, each once."""
    return dedupe([*DEFAULT_NEGATIVES, *(collapse(x) for x in extra if collapse(x))])


def negative_prompt(extra: list[str], budget: TokenBudget) -> guards.Fitted:
    """The negative terms within the encoder's tokens (it reads the negative prompt through the same
    77 positions): the terms it could not read are dropped from the end."""
    return guards.fit_tokens(negative_terms(extra), budget)


# ----------------------------------------------------------------------------- local backend


def _local_caption(
    scene: Scene, settings: Settings, template: PromptTemplate, calls: list[dict[str, Any]]
) -> dict[str, Any]:
    """Constrained try, one repair of the failing clauses, then the template caption."""
    from workers.models import llm_local

    fields, negatives = _llm_clauses(scene, settings, template, calls, previous=None, errors={})
    errors = caption_field_errors(fields, scene)
    if errors:
        fields, negatives = _llm_clauses(scene, settings, template, calls, previous=fields, errors=errors)
        repair_errors = caption_field_errors(fields, scene)
        if repair_errors:
            reason = (
                f"model clauses invalid (first try: {'; '.join(errors.values())}; "
                f"repair: {'; '.join(repair_errors.values())}); used the template caption"
            )
            return _template_caption(scene, reason, calls, template.id)
    model = llm_local.model_id(settings)
    return _caption_result(scene, fields, negatives, "local", model, None, calls, template.id)


def _clause_specs(previous: dict[str, str] | None, errors: dict[str, str]) -> list[Any]:
    """First try asks both clauses; the repair keeps the valid one and bans the rejected value."""
    from workers.models import llm_local

    if previous is None:
        return [llm_local.FieldSpec(k, kind="str") for k in CLAUSE_FIELDS]
    return [
        llm_local.FieldSpec(k, kind="str", banned=(previous[k],) if previous[k] else ())
        if k in errors
        else llm_local.FieldSpec(k, kind="str", fixed=previous[k])
        for k in CLAUSE_FIELDS
    ]


def _llm_clauses(
    scene: Scene,
    settings: Settings,
    template: PromptTemplate,
    calls: list[dict[str, Any]],
    previous: dict[str, str] | None,
    errors: dict[str, str],
) -> tuple[dict[str, str], list[str]]:
    """Fill "lighting" and "style" under a skeleton that already holds subject and setting."""
    import json

    from workers.models import llm_local

    skeleton = "{" + f'"subject": {json.dumps(scene.subject)}, "setting": {json.dumps(scene.setting)}'
    user = template.render_user("; ".join(errors.values()) or None, subject=scene.subject, setting=scene.setting)
    got = llm_local.generate_fields(
        template.system,
        user,
        _clause_specs(previous, errors),
        int(settings.llm_max_new_tokens),
        examples=template.examples,
        prefix=skeleton,
        settings=settings,
    )
    calls += [dict(c, attempt="repair" if errors else "first") for c in got.calls]
    return _clauses_without_negations({k: str(got.values.get(k) or "") for k in CLAUSE_FIELDS})


# ----------------------------------------------------------------------------- hosted backends


def _hosted_caption(
    scene: Scene, settings: Settings, template: PromptTemplate, calls: list[dict[str, Any]]
) -> dict[str, Any]:
    """One answer, one re-ask with the failed checks, then the template caption (said in the result)."""
    from workers.models import llm_hosted

    backend = llm_hosted.backend_for(settings)

    def clauses(errors: dict[str, str]) -> tuple[dict[str, str], list[str]]:
        answer = hosted_answer(
            backend, template, ClauseAnswer, calls, errors, subject=scene.subject, setting=scene.setting
        )
        return _clauses_without_negations({k: getattr(answer, k) for k in HOSTED_CLAUSE_FIELDS})

    (fields, negatives), failed = with_one_reask(clauses, lambda got: caption_field_errors(got[0], scene))
    if failed:
        reason = f"{backend.name} clauses invalid twice ({'; '.join(failed.values())}); used the template caption"
        return _template_caption(scene, reason, calls, template.id)
    return _caption_result(scene, fields, negatives, backend.name, backend.model, None, calls, template.id)


# ----------------------------------------------------------------------------- a reviewer's caption change


def reviewed(
    result: dict[str, Any],
    add: Sequence[str],
    remove: Sequence[str],
    budget: TokenBudget,
    forbidden_terms: Sequence[str] = (),
) -> dict[str, Any]:
    """A caption result with a reviewer's clauses added and clauses or words removed (shared.review.Change),
    through the same guards and budget as any caption: the subject clause is kept first, then the reviewer's
    clauses, then the rest. What was removed also goes to the negative prompt, so a generator steers away from
    it. result["review"] says what was added, removed, not found, and dropped for the budget."""
    clauses, removed, not_found = _without(guards.split_clauses(result["caption"]), remove)
    added = [collapse(a) for a in add if collapse(a) and collapse(a).lower() not in {c.lower() for c in clauses}]
    texts = [*clauses, *added]
    extra = range(len(clauses), len(texts))
    importance = [0, *extra, *range(1, len(clauses))] if clauses else list(range(len(texts)))
    guarded = guards.guard_clauses(texts, forbidden_terms, budget, importance, MAX_CAPTION_CHARS)
    terms = [*guards.split_clauses(result.get("negative_prompt") or ""), *removed, *guarded.negatives]
    negative = negative_prompt(guards.guard_negative(terms, forbidden_terms), budget)
    dropped = guarded.fitted.dropped if guarded.fitted else []
    review = {
        "added": [a for a in added if a not in dropped],
        "removed": removed,
        "not_found": not_found,
        "moved_to_negative": guarded.negatives,  # an added "no people" is a negative, not a scene clause
        "dropped_for_tokens": dropped,
        "previous_caption": result["caption"],
    }
    report = {**result["guards"], **guarded.token_report(), "negative_tokens": negative.tokens}
    return {**result, "caption": guarded.text, "negative_prompt": negative.text, "guards": report, "review": review}


def _without(clauses: list[str], remove: Sequence[str]) -> tuple[list[str], list[str], list[str]]:
    """(clauses left, terms removed, terms not in the caption): a term equal to a clause drops the clause; any
    other is taken out wherever it stands as whole words, and a clause left empty goes."""
    removed, not_found = [], []
    for term in (collapse(t) for t in remove if collapse(t)):
        pattern = re.compile(rf"(?<!\w){re.escape(term)}(?!\w)", re.IGNORECASE)
        if not any(pattern.search(c) for c in clauses):
            not_found.append(term)
            continue
        removed.append(term)
        clauses = [_DANGLING_RE.sub("", collapse(pattern.sub(" ", c))) for c in clauses if c.lower() != term.lower()]
        clauses = [c for c in clauses if c]
    return clauses, removed, not_found


# A word left hanging at a clause's end once what followed it was removed ("a street with [people]").
_DANGLING_RE = re.compile(r"(?:[\s,;]+(?:with|and|or|of|in|on|at|by|near|plus))*[\s,;]*$", re.IGNORECASE)
