"""A brief from the product alone: scene, theme and copy suggestions for a campaign without a brief
(plain functions, no DB; workers/pipeline/brief.py reads the facts).

Inputs are the product assets' listing (title, description, tags, attributes) and the brand's best past
campaigns. "Best" is decided by a scorer over what Onbrand itself measures: the reviewers' decisions on a
campaign's delivered results (`approval_rate`, the default). There is no external KPI feed yet; one plugs in
as another `CampaignScorer` (a function from a past campaign to a score) without touching the rest.

Backends, as the other language stages: the configured LLM (local SmolLM2, openai, bedrock) fills
{scene, theme, headline, cta}; its answer is validated (scene and theme copied from the listing or the past
scenes, short, no negation; a headline about the product), repaired once with the error in the prompt, and
otherwise replaced by the rules composer with `fallback_reason` saying why. The rules composer (the `rules`
backend, offline) takes the best past campaign's scene and theme, else a place the description names, else
the studio backdrop. Every result names its sources: which product fields, which past campaigns.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from workers.language.hosted import HOSTED_BACKENDS, check_settings, errors_by_field, hosted_answer, with_one_reask
from workers.language.prompts import PromptTemplate, load_prompt
from workers.language.rules import MAX_BRIEF_CHARS, RULES_MODEL_ID
from workers.language.text import (
    PREP_RE,
    collapse,
    content_stems,
    has_negation,
    is_grounded,
    is_instruction_like,
    join_and,
    prep_alternatives,
    stem,
    strip_determiners,
    with_article,
    words,
)

if TYPE_CHECKING:
    from shared.config import Settings

PROMPT = ("infer_brief", "v1")
# The scene when neither a past campaign nor the listing names one: the brand's studio backdrop, which is also
# what retrieval falls back to when no background photo fits.
STUDIO_SCENE = "clean studio backdrop"
DEFAULT_CTA = "Shop now"
MAX_PAST = 3  # past campaigns shown to the model and named as sources
MAX_SCENE_WORDS = 8
MAX_HEADLINE_WORDS = 8
MAX_CTA_WORDS = 4
# Attributes that read as an adjective of the product ("black desk lamp"); others (sku, size) stay out.
ADJECTIVE_ATTRIBUTES = ("colour", "color", "material", "finish", "pattern")
# Prepositions after which a description names a surface the product stands on ("on a desk", "next to a sofa").
_SURFACE_PREPS = frozenset({"on", "atop", "against", "beside", "next to", "near", "in front of", "on top of"})
_LIGHT_HEADS = frozenset(
    "light lighting sunlight moonlight candlelight glow haze fog mist rain snow shade shadow".split()
)
_CLAUSE_END = re.compile(r"[,;.|!?]|\s-\s")


@dataclass(frozen=True)
class ProductFacts:
    """One product asset's listing, as uploaded (screened then by the input guardrails)."""

    asset_id: str
    title: str = ""
    description: str = ""
    tags: tuple[str, ...] = ()
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PastCampaign:
    """A finished campaign of the same brand: the scene it ran with and how its results were received."""

    campaign_id: str
    brief: str
    scene: str | None  # its first background (a reviewer's background query when one replaced it)
    theme: str | None
    mood: str | None
    copy: dict[str, Any] | None  # the headline / cta it carried (campaigns.copy)
    approved: int = 0
    rejected: int = 0
    results: int = 0  # delivered results, decided or not


CampaignScorer = Callable[[PastCampaign], float]


def approval_rate(campaign: PastCampaign) -> float:
    """Approved share of the decided results with one approval and one rejection assumed up front (Laplace):
    1 approved of 1 scores 0.67, undecided 0.5, 1 rejected 0.33, so a single decision never reads as certain."""
    return (campaign.approved + 1) / (campaign.approved + campaign.rejected + 2)


SCORERS: dict[str, CampaignScorer] = {"approval_rate": approval_rate}


def best_past(
    campaigns: Sequence[PastCampaign], scorer: CampaignScorer = approval_rate, limit: int = MAX_PAST
) -> list[tuple[PastCampaign, float]]:
    """The campaigns with a scene, best score first; ties go to more decisions, then to the order given
    (the reader passes the newest first)."""
    scored = [(c, round(scorer(c), 4)) for c in campaigns if c.scene]
    scored.sort(key=lambda pair: (-pair[1], -(pair[0].approved + pair[0].rejected)))
    return scored[:limit]


# ----------------------------------------------------------------------------- the listing


def product_phrase(product: ProductFacts) -> tuple[str, list[str]]:
    """(what the brief calls the product, the fields it came from): the title up to its first clause end or
    place ("Desk lamp - 40 cm" -> "Desk lamp"), with colour/material attributes it does not already say."""
    head = _CLAUSE_END.split(product.title or "", maxsplit=1)[0]
    head = strip_determiners(PREP_RE.split(head, maxsplit=1)[0])
    fields = ["title"] if head else []
    if not head:
        head, fields = next(((t, ["tags"]) for t in product.tags if t.strip()), ("product", []))
    said = content_stems(head)
    for key in ADJECTIVE_ATTRIBUTES:
        value = product.attributes.get(key)
        if isinstance(value, str) and re.fullmatch(r"[A-Za-z]+(?: [A-Za-z]+)?", value.strip()):
            if not content_stems(value) <= said and len(words(head)) < MAX_SCENE_WORDS - 1:
                head, said = f"{value.strip().lower()} {head}", said | content_stems(value)
                fields.append(f"attributes.{key}")
    return collapse(" ".join(words(head)[:MAX_SCENE_WORDS])), fields


def listing_text(product: ProductFacts) -> str:
    """The listing as one line for the prompt and the grounding checks."""
    attrs = [f"{k}: {v}" for k, v in product.attributes.items() if isinstance(v, str | int | float)]
    parts = [product.title, product.description, "Tags: " + ", ".join(product.tags) if product.tags else ""]
    return collapse(". ".join(p.strip().rstrip(".") for p in [*parts, "; ".join(attrs)] if p and p.strip()))[:600]


def described_scene(description: str) -> str | None:
    """A surface the description puts the product on ("looks great on a walnut desk" -> "walnut desk")."""
    for match in PREP_RE.finditer(description or ""):
        if match.group(1).lower() not in _SURFACE_PREPS:
            continue
        rest = description[match.end() :]
        stop = min((m.start() for m in (_CLAUSE_END.search(rest), PREP_RE.search(rest)) if m), default=len(rest))
        phrase = strip_determiners(rest[:stop])
        if phrase and len(words(phrase)) <= 5 and not has_negation(phrase) and not re.search(r"\d", phrase):
            return collapse(phrase)
    return None


def headline_from(product: ProductFacts, name: str) -> tuple[str, str]:
    """(headline, source): the description's first sentence when it is short and about the product, else
    the product's name as the title writes it."""
    first = re.split(r"(?<=[.!?])\s", (product.description or "").strip(), maxsplit=1)[0].rstrip(".!")
    ok = 0 < len(words(first)) <= MAX_HEADLINE_WORDS and not has_negation(first) and is_grounded(first, name)
    return (collapse(first), "description") if ok else (name[:1].upper() + name[1:], "title")


# ----------------------------------------------------------------------------- the brief


def compose_brief(products: Sequence[str], scene: str, theme: str | None, mood: str | None, past: str = "") -> str:
    """The brief the rest of the pipeline reads, in the shape the decomposers parse: "the ceramic mug on a
    wooden table at sunset, calm mood". The scene's and theme's prepositions are the past brief's when it
    has them ("against a brick wall"), else "on" / "at" ("in" for light and weather)."""
    text = f"the {join_and(list(products))} {_prep_before(scene, past, 'on')} {with_article(scene)}"
    if theme:
        light = stem(words(theme)[-1]) in _LIGHT_HEADS  # "in soft morning light", but "at sunset"
        text += f" {_prep_before(theme, past, 'in' if light else 'at')} {theme}"
    if mood:
        text += f", {mood} mood"
    return collapse(text)[:MAX_BRIEF_CHARS]


def _prep_before(phrase: str, past: str, default: str) -> str:
    found = re.search(rf"\b({prep_alternatives()})\s+(?:(?:a|an|the)\s+)?{re.escape(phrase)}", past, re.I)
    return found.group(1).lower() if found else default


# ----------------------------------------------------------------------------- validation


class InferenceCheck(BaseModel):
    """What a usable model answer looks like; the grounds (listing and past scenes) and the product's name
    come in the validation context, so each error names its field for the one repair."""

    scene: str
    theme: str = ""
    headline: str
    cta: str

    @field_validator("scene", "theme")
    @classmethod
    def _place_ok(cls, value: str, info: ValidationInfo) -> str:
        context = info.context or {}
        name, grounds = str(context.get("product", "")), str(context.get("grounds", ""))
        if not value and info.field_name == "theme":
            return value
        n = len(words(value))
        if not 1 <= n <= MAX_SCENE_WORDS:
            raise ValueError(f'{info.field_name} "{value}" has {n} words (1-{MAX_SCENE_WORDS} allowed)')
        if has_negation(value):
            raise ValueError(f'{info.field_name} "{value}" is negated')
        if not is_grounded(value, grounds, strict=True):
            raise ValueError(f'{info.field_name} "{value}" is not in the listing or the past scenes')
        if content_stems(value) & content_stems(name):
            raise ValueError(f'{info.field_name} "{value}" names the product; give only the place')
        if info.field_name == "theme" and content_stems(value) & content_stems(str(info.data.get("scene") or "")):
            raise ValueError(f'theme "{value}" repeats the scene; give a time of day or light, or nothing')
        return value

    @field_validator("headline")
    @classmethod
    def _headline_ok(cls, value: str, info: ValidationInfo) -> str:
        n = len(words(value))
        if not 1 <= n <= MAX_HEADLINE_WORDS or len(value) > 90:
            raise ValueError(f'headline "{value}" has {n} words (1-{MAX_HEADLINE_WORDS}, 90 characters allowed)')
        if has_negation(value) or is_instruction_like(value):
            raise ValueError(f'headline "{value}" is negated or an instruction')
        if not is_grounded(value, str((info.context or {}).get("about", ""))):
            raise ValueError(f'headline "{value}" does not name the product')
        return value

    @field_validator("cta")
    @classmethod
    def _cta_ok(cls, value: str) -> str:
        n = len(words(value))
        if not 1 <= n <= MAX_CTA_WORDS or len(value) > 30:
            raise ValueError(f'cta "{value}" has {n} words (1-{MAX_CTA_WORDS}, 30 characters allowed)')
        return value


def place(value: str | None) -> str:
    """A model's scene or theme without a leading preposition or article ("on a wooden table" -> "wooden table")."""
    text = re.sub(rf"^\s*(?:{prep_alternatives()})\s+", "", value or "", flags=re.I)
    return collapse(strip_determiners(text))


def field_errors(answer: dict[str, Any], product: str, grounds: str, about: str = "") -> dict[str, str]:
    """{field: reason} of a model answer; grounds: the listing and past scenes; about: the product's name and
    tags (a headline must name the product, not the scene)."""
    data = {k: place(answer.get(k)) for k in ("scene", "theme")}
    data |= {k: collapse(str(answer.get(k) or "")) for k in ("headline", "cta")}
    context = {"product": product, "grounds": grounds, "about": about or product}
    return errors_by_field(InferenceCheck, data, context, "inference")


# ----------------------------------------------------------------------------- infer


@dataclass
class Facts:
    """Everything one inference reads, prepared once."""

    products: list[ProductFacts]
    names: list[str]
    name_fields: list[list[str]]
    past: list[tuple[PastCampaign, float]]
    scorer: str

    @property
    def grounds(self) -> str:
        past = " ; ".join(f"{c.scene or ''} , {c.theme or ''} , {c.brief}" for c, _ in self.past)
        return " ; ".join([*(listing_text(p) for p in self.products), past, STUDIO_SCENE])

    @property
    def about(self) -> str:
        return " ; ".join([*self.names, *(t for p in self.products for t in p.tags)])

    def errors(self, answer: dict[str, Any]) -> dict[str, str]:
        return field_errors(answer, self.names[0], self.grounds, self.about)

    def scenes_line(self) -> str:
        """The scenes the model may choose from: the past campaigns' (best first, with their theme), a surface
        the listing names, the studio backdrop (a small model copies from a list far better than it reads)."""
        scenes = [", ".join(x for x in (c.scene, c.theme) if x) for c, _ in self.past]
        scenes += [s for p in self.products if (s := described_scene(p.description))] + [STUDIO_SCENE]
        return "; ".join(f'"{s}"' for s in dict.fromkeys(scenes))


def infer_brief(
    products: Sequence[ProductFacts],
    past: Sequence[PastCampaign],
    settings: Settings | None = None,
    scorer: str = "approval_rate",
) -> dict[str, Any]:
    """The products and past campaigns -> {brief, product, scene, theme, mood, copy_suggestions, sources,
    backend, model, fallback_reason, prompt_version, calls}. ValueError without a product."""
    if not products:
        raise ValueError("a brief can only be inferred from at least one product")
    settings = check_settings(settings)
    named = [product_phrase(p) for p in products]
    facts = Facts(
        list(products), [n for n, _ in named], [f for _, f in named], best_past(past, SCORERS[scorer]), scorer
    )
    if settings.llm_backend == "rules":
        return rules_inference(facts, None, [], None)
    template = load_prompt(*PROMPT)
    calls: list[dict[str, Any]] = []
    if settings.llm_backend in HOSTED_BACKENDS:
        return _hosted(facts, settings, template, calls)
    try:
        return _local(facts, settings, template, calls)
    except (OSError, RuntimeError, ImportError, ValueError) as exc:  # model missing or broken
        reason = f"local LLM unavailable ({type(exc).__name__}: {exc}); used the rules composer"
        return rules_inference(facts, reason, calls, template.id)


def rules_inference(
    facts: Facts, fallback_reason: str | None, calls: list[dict[str, Any]], prompt_version: str | None
) -> dict[str, Any]:
    """The transparent composer: the best past campaign's scene, theme and mood, else a surface the
    description names, else the studio backdrop; the headline from the listing, the CTA of the best past
    campaign that carried copy, else "Shop now"."""
    first = facts.products[0]
    best = facts.past[0][0] if facts.past else None
    described = next((s for p in facts.products if (s := described_scene(p.description))), None)
    if best is not None and best.scene:
        scene, scene_source = best.scene, f"past_campaign:{best.campaign_id}"
    elif described:
        scene, scene_source = described, f"product:{first.asset_id}:description"
    else:
        scene, scene_source = STUDIO_SCENE, "default"
    headline, headline_field = headline_from(first, facts.names[0])
    with_copy = next((c for c, _ in facts.past if (c.copy or {}).get("cta")), None)
    cta = str(with_copy.copy["cta"]) if with_copy and with_copy.copy else DEFAULT_CTA
    answer = {
        "scene": scene,
        "theme": best.theme if best else None,
        "mood": best.mood if best else None,
        "headline": headline,
        "cta": cta,
    }
    sources = {
        "scene": scene_source,
        "theme": f"past_campaign:{best.campaign_id}" if best and best.theme else None,
        "headline": f"product:{first.asset_id}:{headline_field}",
        "cta": f"past_campaign:{with_copy.campaign_id}" if with_copy else "default",
    }
    return _result(facts, answer, sources, "rules", RULES_MODEL_ID, fallback_reason, calls, prompt_version)


def _result(
    facts: Facts,
    answer: dict[str, Any],
    sources: dict[str, Any],
    backend: str,
    model: str,
    fallback_reason: str | None,
    calls: list[dict[str, Any]],
    prompt_version: str | None,
) -> dict[str, Any]:
    scene, theme = str(answer["scene"]), answer.get("theme") or None
    best_brief = facts.past[0][0].brief if facts.past else ""
    return {
        "brief": compose_brief(facts.names, scene, theme, answer.get("mood"), best_brief),
        "products": list(facts.names),
        "scene": scene,
        "theme": theme,
        "mood": answer.get("mood"),
        "copy_suggestions": {"headline": str(answer["headline"]), "cta": str(answer["cta"])},
        "sources": {
            **sources,
            "products": [
                {"asset_id": p.asset_id, "name": n, "fields": f}
                for p, n, f in zip(facts.products, facts.names, facts.name_fields, strict=True)
            ],
            "ranking": facts.scorer,
            "past_campaigns": [
                {
                    "campaign_id": c.campaign_id,
                    "score": score,
                    "approved": c.approved,
                    "rejected": c.rejected,
                    "results": c.results,
                    "scene": c.scene,
                    "theme": c.theme,
                }
                for c, score in facts.past
            ],
        },
        "backend": backend,
        "model": model,
        "fallback_reason": fallback_reason,
        "prompt_version": prompt_version,
        "calls": calls,
    }


def _model_sources(facts: Facts, answer: dict[str, Any]) -> dict[str, Any]:
    """Where the model's scene and theme come from: the first past campaign that has them, else the listing."""

    def source(value: str | None) -> str | None:
        if not value:
            return None
        for campaign, _ in facts.past:
            if is_grounded(value, f"{campaign.scene or ''} {campaign.theme or ''} {campaign.brief}", strict=True):
                return f"past_campaign:{campaign.campaign_id}"
        return f"product:{facts.products[0].asset_id}:listing"

    listing = f"product:{facts.products[0].asset_id}:listing"
    return {"scene": source(answer["scene"]), "theme": source(answer.get("theme")), "headline": listing, "cta": "model"}


# ----------------------------------------------------------------------------- local backend


def _local(facts: Facts, settings: Settings, template: PromptTemplate, calls: list[dict[str, Any]]) -> dict[str, Any]:
    """Constrained try; one repair that keeps the valid fields and re-asks the failing ones with their
    rejected values banned; then the rules composer."""
    from workers.models import llm_local

    answer = _local_answer(facts, settings, template, calls, None, {})
    errors = repair = facts.errors(answer)
    if errors:
        answer = _local_answer(facts, settings, template, calls, answer, errors)
        repair = facts.errors(answer)
        if "scene" in repair:
            why = (
                f"model output invalid (first try: {'; '.join(errors.values())}; "
                f"repair: {'; '.join(repair.values())}); used the rules composer"
            )
            return rules_inference(facts, why, calls, template.id)
    answer, sources, reason = _patched(facts, _cleaned(answer), repair)
    model = llm_local.model_id(settings)
    return _result(facts, answer, sources, "local", model, reason, calls, template.id)


def _patched(
    facts: Facts, answer: dict[str, Any], errors: dict[str, str]
) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """A valid scene with other parts still invalid after the repair: the theme is dropped and the headline or
    CTA are the rules composer's (dropping is not inventing); (answer, sources, why) with what was replaced."""
    sources = _model_sources(facts, answer)
    if not errors:
        return answer, sources, None
    rules = rules_inference(facts, None, [], None)
    answer = {**answer, "theme": None if "theme" in errors else answer.get("theme")}
    sources["theme"] = None if "theme" in errors else sources["theme"]
    for key in ("headline", "cta"):
        if key in errors:
            answer[key], sources[key] = rules["copy_suggestions"][key], rules["sources"][key]
    reason = f"model output partly invalid after the repair ({'; '.join(errors.values())}): the rules composer's used"
    return answer, sources, reason


def _local_answer(
    facts: Facts,
    settings: Settings,
    template: PromptTemplate,
    calls: list[dict[str, Any]],
    previous: dict[str, Any] | None,
    errors: dict[str, str],
) -> dict[str, Any]:
    from workers.models import llm_local

    specs = []
    for name in ("scene", "theme", "headline", "cta"):
        optional = name == "theme"
        if previous is not None and name not in errors:
            specs.append(llm_local.FieldSpec(name, kind="str", optional=optional, fixed=str(previous[name])))
        else:
            banned = (str(previous[name]),) if previous is not None and previous.get(name) else ()
            specs.append(llm_local.FieldSpec(name, kind="str", optional=optional, banned=banned))
    user = template.render_user("; ".join(errors.values()) or None, **_values(facts))
    budget = min(int(settings.llm_max_new_tokens), 16)  # 8 words never need more: stops runaway loops early
    got = llm_local.generate_fields(template.system, user, specs, budget, examples=template.examples, settings=settings)
    calls += [dict(c, attempt="repair" if errors else "first") for c in got.calls]
    return {k: str(got.values.get(k) or "") for k in ("scene", "theme", "headline", "cta")}


def _values(facts: Facts) -> dict[str, str]:
    listing = " ".join(listing_text(p) for p in facts.products)
    return {"product": join_and(facts.names), "listing": listing.replace('"', "'"), "past": facts.scenes_line()}


def _cleaned(answer: dict[str, Any]) -> dict[str, Any]:
    scene, theme = place(answer.get("scene")), place(answer.get("theme"))
    return {**answer, "scene": scene, "theme": theme or None, "mood": None}


# ----------------------------------------------------------------------------- hosted backends


class InferAnswer(BaseModel):
    """What a hosted model answers for infer_brief.v1; the same field checks as the local path follow."""

    scene: str = Field(max_length=120)
    theme: str | None = Field(None, max_length=120)
    headline: str = Field(max_length=120)
    cta: str = Field(max_length=60)


def _hosted(facts: Facts, settings: Settings, template: PromptTemplate, calls: list[dict[str, Any]]) -> dict[str, Any]:
    """One answer, one re-ask with the failed checks, then the rules composer (said in the result).
    LLMError (unreachable, no credentials, throttled past the retries) propagates: the stage fails."""
    from workers.models import llm_hosted

    backend = llm_hosted.backend_for(settings)

    values = _values(facts)

    def produce(errors: dict[str, str]) -> dict[str, Any]:
        product, listing, past = values["product"], values["listing"], values["past"]
        got = hosted_answer(backend, template, InferAnswer, calls, errors, product=product, listing=listing, past=past)
        return got.model_dump()

    answer, failed = with_one_reask(produce, facts.errors)
    last = facts.errors(answer) if failed else {}
    if "scene" in last:
        why = f"{backend.name} output invalid twice ({'; '.join((failed or last).values())}); used the rules composer"
        return rules_inference(facts, why, calls, template.id)
    answer, sources, reason = _patched(facts, _cleaned(answer), last)
    return _result(facts, answer, sources, backend.name, backend.model, reason, calls, template.id)
