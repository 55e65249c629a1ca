"""Language stage: ad brief -> decomposition -> generation caption (plain functions, no DB).

`decompose` splits a brief into products / backgrounds / themes / mood. With the
local backend a small LLM fills a code-written JSON skeleton; its answer is
validated (grounded in the brief, short, no scene mixed into the product...),
repaired once with the validation error in the prompt, and otherwise replaced by
the transparent rules decomposer, with `fallback_reason` saying what went wrong.

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
import string
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, Field, ValidationError, ValidationInfo, field_validator

from workers.language import guards

if TYPE_CHECKING:
    from shared.config import Settings

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
RULES_MODEL_ID = "rules-v1"
MAX_BRIEF_CHARS = 2000
HOSTED_BACKENDS = ("openai", "bedrock")
BACKENDS = ("local", "rules", *HOSTED_BACKENDS)
MAX_CAPTION_CHARS = 1024
MAX_ITEM_WORDS = 8
DEFAULT_NEGATIVES = ("blurry", "distorted product", "extra objects", "text", "watermark")
TEMPLATE_STYLE = "product photography"

# ----------------------------------------------------------------------------- vocabularies

_DETERMINERS = frozenset("a an the our my your their his her its this that these those some any".split())
_MULTI_PREPS = ("in front of", "on top of", "next to", "close to", "in the middle of")
_PREPS = frozenset(
    "on in at by near under over against beside atop inside during beneath below above across "
    "along among behind underneath around upon onto into through amid amidst within outside".split()
)
_MOOD_NOUNS = r"mood|moods|vibe|vibes|feel|feeling|atmosphere|tone|aesthetic|ambience|ambiance"
_STOP = (
    _DETERMINERS
    | _PREPS
    | frozenset(
        "and or of with for to is are be very just plus & ad advert image photo picture shot".split()
        + _MOOD_NOUNS.split("|")
    )
)
_PARTICIPLES = frozenset(
    "placed standing sitting lying resting displayed set shown positioned floating perched laid "
    "arranged hanging leaning photographed captured is are sits stands lies rests".split()
)
# Head nouns that make a prepositional phrase a theme (time, light, season, weather).
_THEME_HEADS = frozenset(
    "sunset sunrise dawn dusk twilight night nighttime midnight noon midday morning afternoon evening "
    "day daytime daylight hour light lighting sunlight moonlight candlelight glow shadow summer "
    "winter autumn fall spring season christmas holiday halloween rain snow fog mist storm weather "
    "sun haze".split()
)
_POINT_IN_TIME = frozenset("sunset sunrise dawn dusk twilight night midnight noon midday".split())
_SURFACES = frozenset(
    "table desk counter countertop floor shelf sheet sand grass rock bench bed tray pedestal "
    "plinth surface court street road sidewalk beach board cloth podium stone".split()
)
_MOOD_WORDS = frozenset(
    "calm cozy cosy warm romantic dreamy playful luxurious luxury minimal minimalist moody serene "
    "energetic vibrant elegant festive bold fresh nostalgic rustic edgy cheerful peaceful "
    "mysterious dramatic sporty fun joyful relaxed soft bright dark and".split()
)
_LIGHT_WORDS = frozenset(
    "light lights lighting lit glow glowing sun sunlight sunlit backlit backlight shadow shadows "
    "illuminated illumination bright golden hour daylight neon candlelight moonlight rim "
    "highlights luminous radiant ambient diffused".split()
)
_NEGATION = r"no|not|without|never|none|nothing|nor|neither|avoid|avoiding|don't|doesn't|isn't|aren't"
_NEGATION_RE = re.compile(rf"\b(?:{_NEGATION})\b(?!-)", re.I)  # "no-show socks" is not a negation
_INSTRUCTION_VERBS = (
    "generate|create|draw|make|render|produce|design|show|paint|depict|illustrate|imagine|"
    "photograph|give|write|use|add|include|ensure|keep|place|put"
)
_LEAD_INSTRUCTION_RE = re.compile(
    # a verb is stripped only when an object follows ("show our sneaker"), so that
    # product names such as "Paint roller" or "make-up bag" survive
    rf"^\s*(?:please\s+)?(?:(?:{_INSTRUCTION_VERBS})\s+(?:me\s+|us\s+)?"
    r"(?=(?:a|an|the|some|our|my|your|this|these|image|photo|picture|\d)\b)"
    r"|(?:an?\s+|the\s+)?(?:image|photo|photograph|picture|illustration|rendering|render|shot|ad|"
    r"advert|advertisement|caption)\s+(?:of|for|showing|featuring|with)\b\s*)",
    re.I,
)
_CLAUSE_SPLIT = re.compile(r"\s*(?:[,;|]|\s-\s|\.\s)\s*")


# ----------------------------------------------------------------------------- prompt templates


@dataclass(frozen=True)
class PromptTemplate:
    """A versioned prompt file: system text, few-shot turns, user and repair texts."""

    name: str
    version: str
    system: str
    examples: tuple[tuple[str, str], ...]
    user: str
    repair: str

    @property
    def id(self) -> str:
        return f"{self.name}.{self.version}"

    def render_user(self, error: str | None = None, **values: str) -> str:
        """User turn with $placeholders filled; the repair text is appended when
        a previous answer failed validation."""
        text = string.Template(self.user).substitute(values)
        if error:
            text += "\n" + string.Template(self.repair).substitute(values, error=error)
        return text


def load_prompt(name: str, version: str = "v1") -> PromptTemplate:
    """Load workers/prompts/<name>.<version>.txt."""
    if not re.fullmatch(r"[a-z_]+", name or ""):
        raise ValueError(f"name must be lowercase letters/underscores, got {name!r}")
    if not re.fullmatch(r"v\d+", version or ""):
        raise ValueError(f"version must look like 'v1', got {version!r}")
    path = PROMPTS_DIR / f"{name}.{version}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"no prompt template {path}")
    return _parse_template(name, version, path.read_text(encoding="utf-8"))


def _parse_template(name: str, version: str, text: str) -> PromptTemplate:
    sections: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        header = re.fullmatch(r"\[([a-z.]+)\]\s*", line)
        if header:
            sections.append((header.group(1), []))
        elif sections:  # lines before the first header are comments
            sections[-1][1].append(line)
    parts = [(key, "\n".join(lines).strip()) for key, lines in sections]
    singles = {key: body for key, body in parts if not key.startswith("example.")}
    ex_users = [body for key, body in parts if key == "example.user"]
    ex_answers = [body for key, body in parts if key == "example.assistant"]
    if len(ex_users) != len(ex_answers) or not {"system", "user", "repair"} <= singles.keys():
        raise ValueError(f"prompt template {name}.{version} lacks sections or example pairs")
    examples = tuple(zip(ex_users, ex_answers, strict=True))
    return PromptTemplate(name, version, singles["system"], examples, singles["user"], singles["repair"])


# ----------------------------------------------------------------------------- text helpers


def words(text: str) -> list[str]:
    return re.findall(r"[\w'&-]+", text)


def stem(word: str) -> str:
    """Crude singular form so "shoes" grounds "shoe" (no NLP dependency)."""
    w = word.lower().removesuffix("'s")
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith(("sses", "shes", "ches", "xes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def content_stems(text: str) -> set[str]:
    return {stem(w) for w in words(text) if w.lower() not in _STOP}


def is_grounded(phrase: str, brief: str, strict: bool = False) -> bool:
    """Lenient: the phrase shares a content word with the brief. Strict: every
    content word is in the brief ("rainbow window" is not grounded by "rainy window")."""
    mine, theirs = content_stems(phrase), content_stems(brief)
    found = {w for w in mine if any(_same_word(w, t) for t in theirs)}
    return bool(found) and (not strict or found == mine)


def _same_word(a: str, b: str) -> bool:
    """Equal stems, or a derived form: "sand"/"sandy", "wood"/"wooden" (not "night"/"nightmare")."""
    short, long = sorted((a, b), key=len)
    return a == b or (len(short) >= 4 and long.startswith(short) and len(long) - len(short) <= 3)


def collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip(" ,;:.-")


def strip_determiners(phrase: str) -> str:
    """Drop leading/trailing articles, determiners and dangling participles."""
    ws = words(phrase)
    while ws and ws[0].lower() in _DETERMINERS | {"and"}:
        ws = ws[1:]
    while ws and ws[-1].lower() in _PARTICIPLES | _DETERMINERS | {"and"}:
        ws = ws[:-1]
    return " ".join(ws)


def strip_instructions(text: str) -> str:
    """Remove leading "generate/create/draw ... an image of" so text reads as a caption."""
    previous = None
    while previous != text:
        previous, text = text, _LEAD_INSTRUCTION_RE.sub("", text, count=1).strip()
    return text


def is_instruction_like(text: str) -> bool:
    first = words(text)[:1]
    return bool(first) and bool(re.fullmatch(rf"(?:please|{_INSTRUCTION_VERBS})", first[0], re.I))


def has_negation(text: str) -> bool:
    return bool(_NEGATION_RE.search(text))


def split_negations(text: str) -> tuple[str, list[str]]:
    """Move negated phrases out of comma clauses: "soft light without harsh shadows"
    -> ("soft light", ["harsh shadows"])."""
    kept: list[str] = []
    negatives: list[str] = []
    for clause in re.split(r"\s*[,;]\s*", text):
        match = _NEGATION_RE.search(clause)
        if match is None:
            kept.append(clause)
            continue
        before, after = clause[: match.start()], clause[match.end() :]
        place = _PREP_RE.search(after)  # "no case next to a laptop": the place is not negated
        negated, rest = (after[: place.start()], after[place.start() :]) if place else (after, "")
        negatives += [n for n in (strip_determiners(p) for p in re.split(r"\bor\b|\band\b", negated)) if n]
        kept.append(collapse(re.sub(r"\b(?:with|and|but|or)\s*$", "", before.strip()) + " " + rest))
    return ", ".join(c for c in kept if c), negatives


def cap_at_boundary(text: str, limit: int = MAX_CAPTION_CHARS) -> str:
    """Cut to at most `limit` characters at the last sentence/comma boundary
    (a word boundary when there is none in the second half)."""
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive int, got {limit!r}")
    if len(text) <= limit:
        return text
    window = text[: limit + 1]
    # punctuation followed by a space: "4.5 inch" and "1,000" are not boundaries
    cut = max((m.start() for m in re.finditer(r"[.,;](?=\s|$)", window)), default=-1)
    if cut < limit // 2:
        cut = window.rfind(" ")
    return text[: cut if cut > 0 else limit].rstrip(" ,;.")


def with_article(phrase: str) -> str:
    """'a'/'an' before a singular noun phrase; plurals and mass nouns stay bare."""
    ws = words(phrase)
    if not ws or ws[0].lower() in _DETERMINERS or ws[0][0].isdigit():
        return phrase
    last = ws[-1].lower()
    if stem(last) != last or last.endswith("ware"):
        return phrase
    return ("an " if ws[0][0].lower() in "aeiou" else "a ") + phrase


def join_and(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


# ----------------------------------------------------------------------------- rules decomposer


def rules_decompose(brief: str) -> dict[str, Any]:
    """Transparent decomposer: noun phrases around prepositions.
    "the shoe on an urban street at sunset" -> shoe / urban street / sunset."""
    text = strip_instructions(_check_brief(brief))
    text, negatives = split_negations(text)
    text, mood = _extract_mood(text)
    text, audience = _extract_audience(text)
    text, season = _extract_season(text)
    clauses = [c for c in _CLAUSE_SPLIT.split(text) if c.strip()]
    parts: dict[str, Any] = {
        "products": [],
        "backgrounds": [],
        "themes": [],
        "mood": mood,
        "season": season,
        "audience": audience,
    }
    if clauses:
        head, segments = _split_prepositions(clauses[0])
        parts["products"] = _split_products(head)
        _classify_segments(segments, parts)
    for clause in clauses[1:]:
        _classify_clause(clause, parts)
    parts["negatives"] = _dedupe(negatives)
    return parts


def _extract_mood(text: str) -> tuple[str, str | None]:
    """ "..., calm mood" / "mood: playful" / "with a romantic vibe" -> mood word(s)."""
    labelled = re.search(rf"\b(?:{_MOOD_NOUNS})\s*[:=]\s*([^,;.]+)", text, re.I)
    if labelled:
        return text[: labelled.start()] + text[labelled.end() :], collapse(labelled.group(1)) or None
    noun = re.search(rf"\b(?:{_MOOD_NOUNS})\b", text, re.I)
    if noun is None:
        return text, None
    start = _mood_start(text[: noun.start()])
    if start is None:
        return text, None
    mood = collapse(text[start : noun.start()]).removeprefix("and ").strip()
    before = re.sub(r"(?:\b(?:with|in)\s+)?(?:\b(?:an?|the)\s+)?$", "", text[:start])
    return before + text[noun.end() :], mood or None


_PEOPLE = (
    r"parents|mothers|fathers|moms|mums|dads|families|kids|children|teens|teenagers|students|runners|athletes|"
    r"professionals|executives|women|men|girls|boys|couples|lovers|beginners|dwellers|travell?ers|commuters|"
    r"cyclists|hikers|gamers|shoppers|fans|millennials|seniors|adults|owners|buyers|customers|people|foodies|"
    r"enthusiasts|creators|workers|nurses|chefs|golfers|skaters|surfers|climbers|drivers|riders"
)
_AUDIENCE_RE = re.compile(rf"\bfor\s+((?:[\w'-]+\s+){{0,4}}?(?:{_PEOPLE})(?:\s+in\s+their\s+[\w-]+)?)\b", re.I)
_SEASONS = r"spring|summer|autumn|fall|winter"
_SEASON_RE = re.compile(
    rf"\b(?:in|during|for|this|our|the|of|at)\s+(?:(?:the|our|this)\s+)?"
    rf"((?:{_SEASONS})\s+(?:holidays?|season|launch|collection|sale)|holiday season|holidays|christmas|halloween|"
    rf"easter|{_SEASONS})\b",
    re.I,
)


def _extract_audience(text: str) -> tuple[str, str | None]:
    """ "..., for busy parents" -> busy parents: who the ad is for, taken out of the scene."""
    m = _AUDIENCE_RE.search(text)
    if m is None:
        return text, None
    return text[: m.start()] + text[m.end() :], collapse(m.group(1))


def _extract_season(text: str) -> tuple[str, str | None]:
    """ "in autumn", "for the holiday season", "our spring launch" -> the season as written.
    A season that names a launch or collection stays in the text (it is part of a sentence)."""
    m = _SEASON_RE.search(text)
    if m is None:
        return text, None
    phrase = m.group(1)
    season = re.sub(r"\s+(?:launch|collection|sale)$", "", phrase, flags=re.I).lower()
    if season != phrase.lower():
        return text, season
    return text[: m.start()] + text[m.end() :], season


def _mood_start(before: str) -> int | None:
    """Start of the mood words that precede "mood": the last word always, then
    earlier words while they are mood adjectives ("romantic and dreamy")."""
    found = list(re.finditer(r"[\w'-]+", before))
    if not found or found[-1].group().lower() in _STOP:
        return None
    k = len(found) - 1
    while k > 0 and found[k - 1].group().lower() in _MOOD_WORDS:
        k -= 1
    return found[k].start()


def _prep_pattern() -> re.Pattern[str]:
    alternatives = sorted(list(_MULTI_PREPS) + list(_PREPS), key=len, reverse=True)
    return re.compile(r"\b(" + "|".join(re.escape(p) for p in alternatives) + r")\b", re.I)


_PREP_RE = _prep_pattern()


def _split_prepositions(clause: str) -> tuple[str, list[tuple[str, str]]]:
    """ "the shoe on an urban street at sunset" -> ("the shoe", [("on", "an urban street"), ("at", "sunset")])."""
    matches = list(_PREP_RE.finditer(clause))
    if not matches:
        return clause, []
    head = clause[: matches[0].start()]
    segments = []
    for i, m in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(clause)
        segments.append((m.group(1).lower(), clause[m.end() : end]))
    return head, segments


def _split_products(head: str) -> list[str]:
    """ "a handbag and sunglasses" -> ["handbag", "sunglasses"]."""
    pieces = [strip_determiners(p) for p in re.split(r"\s*(?:,|&|\band\b|\bplus\b)\s*", head)]
    return _dedupe([p for p in pieces if p])


def _is_theme(phrase: str, prep: str | None) -> bool:
    ws = words(phrase)
    return prep == "during" or (bool(ws) and stem(ws[-1]) in _THEME_HEADS)


def _classify_segments(segments: Sequence[tuple[str | None, str]], parts: dict[str, Any]) -> None:
    for prep, raw in segments:
        phrase = strip_determiners(raw)
        if phrase:
            parts["themes" if _is_theme(phrase, prep) else "backgrounds"].append(phrase)


def _classify_clause(clause: str, parts: dict[str, Any]) -> None:
    """A later comma clause: mood adjectives, prepositional phrases or a bare phrase."""
    ws = [w.lower() for w in words(clause)]
    if ws and all(w in _MOOD_WORDS for w in ws) and not parts["mood"]:
        parts["mood"] = collapse(clause)
        return
    head, segments = _split_prepositions(clause)
    _classify_segments([(None, head), *segments], parts)


def _dedupe(items: list[str]) -> list[str]:
    seen: set[str] = set()
    return [x for x in items if not (x.lower() in seen or seen.add(x.lower()))]  # type: ignore[func-returns-value]


def _check_brief(brief: str) -> str:
    if not isinstance(brief, str):
        raise TypeError(f"brief must be str, got {type(brief).__name__}")
    text = collapse(brief.replace("\n", " "))
    if not text:
        raise ValueError("brief must not be empty")
    if len(text) > MAX_BRIEF_CHARS:
        raise ValueError(f"brief must be at most {MAX_BRIEF_CHARS} characters, got {len(text)}")
    return text


# ----------------------------------------------------------------------------- validation

LIST_FIELDS = ("products", "backgrounds", "themes")


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
    if name == "products" and _PREP_RE.search(item):
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
    return _errors_by_field(DecompositionCheck, data, {"brief": brief}, "decomposition")


def _errors_by_field(
    model: type[BaseModel], data: dict[str, Any], context: dict[str, Any], whole: str
) -> dict[str, str]:
    """The first validation error per top-level field ({} when valid); `whole` names model-level errors."""
    try:
        model.model_validate(data, context=context)
    except ValidationError as exc:
        out: dict[str, str] = {}
        for e in exc.errors():
            out.setdefault(str(e["loc"][0]) if e["loc"] else whole, _error_text(e))
        return out
    return {}


def validation_error(parts: dict[str, Any], brief: str) -> str | None:
    """None when the decomposition is usable, else a short readable reason."""
    errors = field_errors(parts, brief)
    return "; ".join(errors.values()) if errors else None


def _error_text(error: Any) -> str:
    msg = str(error.get("msg", "")).removeprefix("Value error, ")
    loc = ".".join(str(x) for x in error.get("loc", ()))
    return msg if '"' in msg or not loc else f"{loc}: {msg}"


def clean_mood(mood: str | None, parts: dict[str, Any], brief: str) -> str | None:
    """The model's mood is kept only if the brief says it and no other field does
    (the model tends to echo a theme there); dropping is not inventing."""
    if not mood or not is_grounded(mood, brief, strict=True) or len(words(mood)) > 4 or has_negation(mood):
        return None
    used = set().union(*(content_stems(x) for k in LIST_FIELDS for x in parts.get(k) or []))
    return None if content_stems(mood) & used else mood


# ----------------------------------------------------------------------------- decompose


def decompose(brief: str, settings: Settings | None = None) -> dict[str, Any]:
    """Brief -> {"products", "backgrounds", "themes", "mood", "negatives", "backend",
    "model", "fallback_reason", "validation_error", "prompt_version", "calls", "brief"}."""
    text = _check_brief(brief)
    settings = _check_settings(settings)
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


def _check_settings(settings: Settings | None) -> Settings:
    if settings is None:
        from shared.config import get_settings

        return get_settings()
    backend = getattr(settings, "llm_backend", None)
    if backend not in BACKENDS:
        raise ValueError(f"settings.llm_backend must be one of {BACKENDS}, got {backend!r}")
    return settings


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


class ClauseAnswer(BaseModel):
    pose: str = Field("", max_length=200)
    lighting: str = Field("", max_length=200)
    camera: str = Field("", max_length=200)
    style: str = Field("", max_length=200)


R = TypeVar("R")
B = TypeVar("B", bound=BaseModel)


def hosted_answer(
    backend: Any,
    template: PromptTemplate,
    schema: type[B],
    calls: list[dict[str, Any]],
    errors: dict[str, str],
    images: tuple[Any, ...] = (),
    **values: str,
) -> B:
    """The template as chat turns (the failed checks appended on a re-ask, images on the user turn),
    answered as schema."""
    from workers.models import llm_hosted
    from workers.models.llm_api import Message

    user = template.render_user("; ".join(errors.values()) or None, **values)
    messages = llm_hosted.few_shot(template.system, template.examples, user)
    messages[-1] = Message("user", user, tuple(images))
    return llm_hosted.ask(
        backend,
        messages,
        schema,
        calls,
        "repair" if errors else "first",
        temperature=getattr(backend, "temperature", 0.2),
    )


def with_one_reask(
    produce: Callable[[dict[str, str]], R], check: Callable[[R], dict[str, str]]
) -> tuple[R, dict[str, str] | None]:
    """Produce and check; re-ask once with the failed checks. (value, None) when it passes, else
    (last value, the first try's errors) so the caller can fall back and say why."""
    value = produce({})
    errors = check(value)
    if not errors:
        return value, None
    value = produce(errors)
    return value, (errors if check(value) else None)


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


def english_errors(parts: dict[str, Any]) -> dict[str, str]:
    """A hosted answer must be in English (it was asked to translate)."""
    return {
        k: f'{k} item "{x}" is not English' for k in LIST_FIELDS for x in parts.get(k) or [] if not guards.is_english(x)
    }


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


def _hosted_caption(
    scene: Scene, settings: Settings, template: PromptTemplate, calls: list[dict[str, Any]]
) -> dict[str, Any]:
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


# ----------------------------------------------------------------------------- caption: scene


@dataclass(frozen=True)
class Scene:
    """The parts of a caption that come from the decomposition, never from the model."""

    subject: str
    setting: str  # point of reference + environment (+ themes), e.g. "on an urban street at sunset"
    mood: str | None
    negatives: tuple[str, ...]
    forbidden: tuple[str, ...] = ()  # the brand's forbidden terms: never in the positive prompt

    @property
    def base(self) -> str:
        return collapse(f"{self.subject} {self.setting}")


def build_scene(
    decomposition: dict[str, Any],
    product_title: str | None,
    background_caption: str | None,
    forbidden_terms: Sequence[str] = (),
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
        tuple(_dedupe(negatives)),
        tuple(guards.check_terms("forbidden_terms", forbidden_terms)),
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
    preps = "|".join(re.escape(p) for p in sorted(list(_MULTI_PREPS) + list(_PREPS), key=len, reverse=True))
    m = re.search(rf"\b({preps})\s+(?:(a|an|the)\s+)?{re.escape(phrase)}\b", brief, re.I)
    return (m.group(1).lower(), m.group(2)) if m else (default, None)


def _environment(decomposition: dict[str, Any], bg_caption: str) -> str:
    backgrounds = [b for b in decomposition.get("backgrounds", []) if b]
    if bg_caption:
        first = backgrounds[0] if backgrounds else ""
        prep, _ = _preposition(decomposition, first, _default_prep(first)) if first else ("in", None)
        return bg_caption if _PREP_RE.match(bg_caption) else f"{prep} {bg_caption}"
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
        out.append(f"in {season}" if re.fullmatch(_SEASONS, season, re.I) else f"during the {season}")
    return " ".join(out)


# ----------------------------------------------------------------------------- caption: clauses

CLAUSE_FIELDS = ("lighting", "style")  # what the local model fills (each field costs it seconds)
HOSTED_CLAUSE_FIELDS = ("pose", "lighting", "camera", "style")  # the seed's full optional topology
_CAMERA_WORDS = frozenset(
    "shot angle view close-up closeup lens eye-level overhead top-down macro wide low high perspective framing "
    "camera aerial portrait landscape telephoto bokeh depth focus".split()
)


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


def caption_field_errors(fields: dict[str, str], scene: Scene) -> dict[str, str]:
    """{field: reason} for every unusable clause; empty when all are usable."""
    return _errors_by_field(CaptionFields, dict(fields), {"base": scene.base}, "caption")


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
    settings = _check_settings(settings)
    scene = build_scene(decomposition, product_title, background_caption, forbidden_terms)
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
    return {
        "caption": guarded.text,
        "negative_prompt": negative_prompt(
            guards.guard_negative([*scene.negatives, *negatives, *guarded.negatives], scene.forbidden)
        ),
        "backend": backend,
        "model": model,
        "fallback_reason": fallback_reason,
        "prompt_version": prompt_version,
        "calls": calls,
        "parts": {"subject": scene.subject, "setting": scene.setting, "mood": scene.mood, **fields},
        "guards": guarded.report(),
    }


def compose_caption(scene: Scene, fields: dict[str, str]) -> guards.Guarded:
    """The seed's topology: subject + point of reference + environment, then the optional
    pose, lighting, camera, mood and style clauses; through the guards (caption-like,
    negation-free, no forbidden term, capped at a boundary)."""
    mood = f"{scene.mood} mood" if scene.mood else ""
    clauses = [
        scene.base,
        fields.get("pose", ""),
        fields.get("lighting", ""),
        fields.get("camera", ""),
        mood,
        fields.get("style", ""),
    ]
    text = ", ".join(collapse(c) for c in clauses if collapse(c))
    return guards.guard_prompt(text, scene.forbidden, MAX_CAPTION_CHARS)


def negative_prompt(extra: list[str]) -> str:
    """The defaults first (always present), then what the brief or model negated."""
    terms = _dedupe([*DEFAULT_NEGATIVES, *(collapse(x) for x in extra if collapse(x))])
    return ", ".join(terms)


def timed(fn: Callable[..., dict[str, Any]], *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Run a stage function and add its wall time (seconds) as "latency_s"."""
    started = time.perf_counter()
    out = fn(*args, **kwargs)
    out["latency_s"] = round(time.perf_counter() - started, 4)
    return out
