"""Feedback router: a reviewer's free text and structured reasons -> a typed change (shared.review.Change).

Structured reasons map through a fixed table, whatever the backend. The text is routed clause by clause:
by a keyword table (English and German) on the local and rules backends, or by a hosted model (openai,
bedrock; prompt feedback_route.v1) whose JSON answer is validated against `Change` and checked against
the feedback before it is used. Nothing is guessed: a clause the table does not match, a negated one
("not bigger"), and contradictions ("bigger" and "smaller", left and right) go to `not_understood`
verbatim, so the reviewer sees what was not routed.

Negative caption clauses ("no text or lettering") rely on the caption guards, which move every negation
to the negative prompt (the diffusion text encoder would read "no text" as "text").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from shared.review import SCALE_STEP, Change, ChangeSize, Reason
from workers.language import guards
from workers.language.hosted import HOSTED_BACKENDS, check_settings, hosted_answer, with_one_reask
from workers.language.prompts import load_prompt
from workers.language.rules import RULES_MODEL_ID
from workers.language.text import collapse, has_negation, is_instruction_like, words

if TYPE_CHECKING:
    from shared.config import Settings

MAX_FEEDBACK_CHARS = 4000
LIGHT_CLAUSE = "soft natural light with a realistic contact shadow"
NO_TEXT_CLAUSE = "no text or lettering or watermarks"  # the guards move it to the negative prompt
BRAND_COLOUR_CLAUSE = "colours in the brand palette"
# The qc_policy a qc step leaves the campaign on (as workers/engine/review.py applies it): a step that
# would leave it where it is changes nothing and is said, not routed.
QC_TARGET = {1: "strict", -1: "flexible"}


class RouteContext(BaseModel):
    """What the router knows of the review round being reviewed."""

    background_asset_ids: list[str] = Field(default_factory=list)  # excluded on "another background"
    sizes: list[dict[str, int]] = Field(default_factory=list)  # current sizes [{width, height}]
    qc_policy: str = "strict"


class Routed(BaseModel):
    """The router's answer: the change, what it could not route, and one note per routed clause/reason."""

    change: Change
    not_understood: list[str]  # sentences (or "reason:<name>") it could not route, never guessed
    router: str  # "rules" | "openai" | "bedrock"
    notes: list[str]
    model: str = RULES_MODEL_ID  # for the llm_calls rows: what routed the text
    prompt_version: str | None = None
    fallback_reason: str | None = None  # a hosted answer invalid twice: the keyword table routed instead
    calls: list[dict[str, Any]] = Field(default_factory=list)  # hosted completions (llm_hosted.call_record)


@dataclass(frozen=True)
class Fragment:
    """One thing a clause asks for: Change fields, the axis it may contradict on, the reviewer's note."""

    fields: dict[str, Any]
    note: str
    axis: str = ""  # scale, placement, rotation, qc, query, asset, time, light, warmth; "" never conflicts
    value: Any = None


@dataclass
class Intent:
    """A routed clause or reason (`source`) and its fragments."""

    source: str
    fragments: list[Fragment] = field(default_factory=list)
    by_text: bool = False  # a reason the text already routed (composition with "move it left")

    def routes(self) -> bool:
        """It changes something (or is a reason the text routed)."""
        return self.by_text or any(f.fields for f in self.fragments)

    def axes(self) -> dict[str, set[Any]]:
        out: dict[str, set[Any]] = {}
        for f in self.fragments:
            if f.axis:
                out.setdefault(f.axis, set()).add(f.value)
        return out


def route(text: str, reasons: Sequence[Reason | str], context: RouteContext, settings: Settings) -> Routed:
    """Feedback -> Routed. settings: the process settings; the "feedback" stage's backend is used.
    Hosted LLMError (unreachable, no credentials, invalid JSON twice) propagates."""
    text = collapse(str(text or ""))[:MAX_FEEDBACK_CHARS]
    picked = [Reason(r) for r in dict.fromkeys(reasons)]  # ValueError for an unknown reason
    settings = check_settings(settings).for_stage("feedback")
    if text and settings.llm_backend in HOSTED_BACKENDS:
        return _hosted(text, picked, context, settings)
    return _combine(_rules_intents(text, context), [], picked, context, "rules")


# ----------------------------------------------------------------------------- keyword table

_Handler = Callable[[re.Match[str] | None, RouteContext], Fragment]  # None: a reason, not a match


@dataclass(frozen=True)
class Rule:
    pattern: re.Pattern[str]
    make: _Handler


def _rule(pattern: str, make: _Handler) -> Rule:
    return Rule(re.compile(pattern, re.I), make)


def _fixed(fields: dict[str, Any], note: str, axis: str = "", value: Any = None) -> _Handler:
    return lambda _m, _c: Fragment(fields, note, axis, value)


_MUCH = re.compile(r"\b(?:much|a lot|way|far|significantly|considerably|viel|deutlich|wesentlich)\b", re.I)


def _scale(sign: int) -> _Handler:
    def make(m: re.Match[str] | None, _c: RouteContext) -> Fragment:
        steps = sign * (2 if m and _MUCH.search(m.string) else 1)
        word = "larger" if sign > 0 else "smaller"
        note = f"product {abs(steps)} step{'s' if abs(steps) > 1 else ''} {word} (×{SCALE_STEP**steps:.2f})"
        return Fragment({"scale_steps": steps}, note, "scale", sign)

    return make


def _qc(sign: int) -> _Handler:
    def make(_m: re.Match[str] | None, context: RouteContext) -> Fragment:
        target = QC_TARGET[sign]
        if context.qc_policy == target:  # already there: re-ranking would change nothing
            return Fragment({}, f"QC is already {target}: nothing to change", "qc", sign)
        return Fragment({"qc": sign}, f"{'stricter' if sign > 0 else 'looser'} QC ({target} policy)", "qc", sign)

    return make


def _other_background(_m: re.Match[str] | None, context: RouteContext) -> Fragment:
    ids = context.background_asset_ids
    if not ids:
        return Fragment({}, "the results use the brand backdrop: no retrieved background to exclude")
    return Fragment({"exclude_background_ids": ids}, f"another background (the {len(ids)} shown excluded)")


def _caption(clause: str, axis: str = "") -> _Handler:
    return _fixed({"caption_add": [clause]}, f'caption clause "{clause}"', axis, clause if axis else None)


def _place(places: dict[str, str]) -> _Handler:
    def make(m: re.Match[str] | None, _c: RouteContext) -> Fragment:
        place = m.group("place").lower() if m else ""
        query = places.get(place, place)
        return Fragment({"background_query": query}, f'background searched for "{query}"', "query", query)

    return make


_SCENES = (
    r"beach|forest|woods|kitchen|street|city|park|garden|office|lake|mountains?|desert|studio|caf[eé]|bar|"
    r"table|desk|rooftop|pool|field|meadow|harbou?r|bathroom|bedroom|living room|road|track|gym|shop|store|"
    r"countryside|river|sea|ocean|waterfall|trail|countertop|counter|shelf|loft|terrace|balcony|boardwalk"
)
_SCENE_EN = (
    rf"\b(?:on|at|in|by|near|to|like|onto)\s+(?:a|an|the|some)\s+"
    rf"(?P<place>(?:[a-z]+\s+)?(?:{_SCENES}))\b(?!\s+(?:side|third|edge))"
)
_SCENES_DE = {
    "strand": "beach",
    "wald": "forest",
    "küche": "kitchen",
    "stadt": "city",
    "straße": "street",
    "park": "park",
    "garten": "garden",
    "büro": "office",
    "see": "lake",
    "bergen": "mountains",
    "berge": "mountains",
    "wüste": "desert",
    "tisch": "table",
    "holztisch": "wooden table",
    "wiese": "meadow",
    "hafen": "harbour",
    "badezimmer": "bathroom",
    "wohnzimmer": "living room",
}
_SCENE_DE = (
    r"\b(?:am|im|in der|in einer|in einem|auf dem|auf einem|auf einer|an einem|an der|vor einem|vor einer|"
    rf"in den)\s+(?P<place>{'|'.join(sorted(_SCENES_DE, key=len, reverse=True))})\b"
)
_BACKGROUND = r"(?:background|backdrop|scene|setting|location|hintergrund|szene|umgebung)"

# Order matters: a rule consumes its match, so the negated and "too ..." forms come before the plain words.
RULES: tuple[Rule, ...] = (
    # scale: "too small" asks for larger, "not big enough" is one request, not a negation
    _rule(
        r"\b(?:too|zu)\s+(?:small|tiny|klein)\b|\bnot\s+(?:big|large)\s+enough\b|\bnicht\s+groß\s+genug\b", _scale(1)
    ),
    _rule(r"\b(?:too|zu)\s+(?:big|large|huge|groß|gross)\b", _scale(-1)),
    _rule(r"\b(?:bigger|larger|zoom in|more prominent|gr(?:ö|oe|o)(?:ß|ss)er)\b", _scale(1)),
    _rule(r"\b(?:smaller|tinier|zoom out|less dominant|kleiner)\b", _scale(-1)),
    # rotation: upright only; "don't rotate" is the request itself
    _rule(
        r"\b(?:no\s+rotation|(?:don't|do not|never)\s+(?:rotate|tilt)|not\s+(?:rotated|tilted|angled)|keine\s+drehung|"
        r"nicht\s+(?:gedreht|schräg|schief|gekippt)|(?:is|looks|are|ist)\s+(?:tilted|rotated|crooked|schräg|schief)|"
        r"straight|upright|crooked|askew|aufrecht|schief|gerade\s+(?:stellen|ausrichten|hinstellen|stehen(?:d)?))\b",
        _fixed({"rotation": False}, "upright only (no rotation)", "rotation", False),
    ),
    _rule(
        r"\b(?:(?:rotate|tilt)\s+(?:it|the product)|at an angle|schräg\s+(?:stellen|hinstellen))\b",
        _fixed({"rotation": True}, "rotated layouts allowed", "rotation", True),
    ),
    # placement
    _rule(r"\b(?:left|links)\b", _fixed({"placement": "left"}, "product placed on the left", "placement", "left")),
    _rule(
        r"\b(?:(?:to|on|at|towards?|onto)\s+the\s+right|right(?:[- ]hand)?\s+(?:side|third|edge)|"
        r"move\s+(?:it\s+|the\s+product\s+)?right|rechts)\b",
        _fixed({"placement": "right"}, "product placed on the right", "placement", "right"),
    ),
    _rule(
        r"\b(?:centre|center|centred|centered|middle|mittig|zentriert|zentrieren|in\s+der\s+mitte)\b",
        _fixed({"placement": "centre"}, "product placed in the centre", "placement", "centre"),
    ),
    # QC policy
    _rule(
        r"\b(?:not\s+strict\s+enough|stricter|more\s+strict|strenger(?:e|en)?|(?:too|zu)\s+(?:lenient|lax|locker))\b",
        _qc(1),
    ),
    _rule(
        r"\b(?:(?:too|zu)\s+strict|zu\s+streng|less\s+strict|looser|more\s+lenient|weniger\s+streng|lockerer|nachsichtiger)\b",
        _qc(-1),
    ),
    # the product itself looks wrong: its fidelity and framing checks tightened
    _rule(r"\b(?:distorted|warped|stretched|deformed|cut\s+off|cropped|verzerrt|verformt|abgeschnitten)\b", _qc(1)),
    # text artefacts: the negation goes to the negative prompt; QC tightened
    _rule(
        r"\b(?:(?:no|remove|without|get rid of|keine|ohne)\s+(?:the\s+|any\s+)?)?"
        r"(?:text|lettering|letters|writing|watermarks?|gibberish|schrift|schriftzug|buchstaben|wasserzeichen)\b"
        r"(?:\s+entfernen)?",
        lambda m, c: Fragment({"caption_add": [NO_TEXT_CLAUSE], **_qc(1)(m, c).fields}, "no text (negative prompt)"),
    ),
    # background: another one, or a named place
    _rule(
        rf"\b(?:(?:another|different|other|new|alternative|anderer|anderen|andere|neuer|neuen|neue)\s+{_BACKGROUND}s?|"
        rf"(?:change|replace|swap|switch)\s+(?:the\s+)?{_BACKGROUND}|{_BACKGROUND}\s+(?:ändern|wechseln|austauschen)|"
        rf"(?:don't|do not)\s+like\s+the\s+{_BACKGROUND}|{_BACKGROUND}\s+gefällt\s+(?:mir\s+)?nicht|"
        rf"{_BACKGROUND}\s+(?:is|looks|ist|wirkt)\s+(?:too\s+|zu\s+)?"
        rf"(?:wrong|bad|ugly|boring|off|busy|distracting|cluttered|falsch|hässlich|langweilig|unruhig))\b",
        _other_background,
    ),
    _rule(_SCENE_EN, _place({})),
    _rule(_SCENE_DE, _place(_SCENES_DE)),
    # time of day, season, weather and light: caption clauses (the light axis: brighter vs darker)
    _rule(r"\b(?:at night|night ?time|bei nacht|nachts)\b", _caption("at night", "time")),
    _rule(r"\b(?:at sunset|sunset|bei sonnenuntergang|sonnenuntergang)\b", _caption("at sunset", "time")),
    _rule(r"\b(?:at sunrise|sunrise|bei sonnenaufgang|sonnenaufgang)\b", _caption("at sunrise", "time")),
    _rule(r"\b(?:golden hour|goldene stunde)\b", _caption("in golden hour light", "time")),
    _rule(r"\b(?:in (?:the )?winter|im winter|in (?:the )?snow|im schnee)\b", _caption("in winter snow")),
    _rule(r"\b(?:in the rain|im regen)\b", _caption("in the rain")),
    _rule(r"\b(?:too dark|zu dunkel|brighter|heller)\b", _caption("bright even light", "light")),
    _rule(r"\b(?:too bright|zu hell|darker|dunkler|moodier)\b", _caption("low-key moody light", "light")),
    _rule(r"\b(?:warmer|wärmer)\b", _caption("warm light", "warmth")),
    _rule(r"\b(?:cooler|kühler)\b", _caption("cool light", "warmth")),
    _rule(
        r"\b(?:floating|floats|hovering|schwebt|schwebend|harsh (?:light|shadows?)|softer light|weicheres licht|"
        r"(?:missing|no|needs? a|add a|more)\s+(?:contact\s+)?shadows?|(?:fehlender|kein|keinen|mehr)\s+schatten|"
        r"(?:fake|wrong|unrealistic|odd|weird)\s+shadows?|shadows?\s+(?:looks?|is|are)\s+(?:fake|wrong|unrealistic|off))\b",
        _caption(LIGHT_CLAUSE),
    ),
)

# ----------------------------------------------------------------------------- sizes and explicit assets

_RATIOS = {
    "9:16": (1080, 1920),
    "16:9": (1920, 1080),
    "1:1": (1080, 1080),
    "4:5": (1080, 1350),
    "5:4": (1350, 1080),
    "4:3": (1440, 1080),
    "3:4": (1080, 1440),
    "2:3": (1080, 1620),
    "3:2": (1620, 1080),
    "1.91:1": (1200, 628),
}
_SIZE_WORDS = {"story": "9:16", "stories": "9:16", "reel": "9:16", "reels": "9:16", "square": "1:1"}
_SIZE_WORDS |= {"quadratisch": "1:1", "quadratische": "1:1", "landscape": "16:9", "querformat": "16:9"}
_PIXELS_RE = re.compile(r"\b(\d{2,5})\s*[x×]\s*(\d{2,5})\b", re.I)
_RATIO_RE = re.compile(r"(?<![\d.])(" + "|".join(re.escape(r) for r in _RATIOS) + r")(?![\d:])")
_SIZE_WORD_RE = re.compile(r"\b(" + "|".join(_SIZE_WORDS) + r")\b", re.I)
_UUID_RE = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b", re.I)


def _sizes(rest: str) -> tuple[list[Fragment], str, bool]:
    """Ad sizes named in a clause ("1080x1920", "9:16", "story"): (fragments, rest, all valid)."""
    pairs = [(int(w), int(h)) for w, h in _PIXELS_RE.findall(rest)]
    rest = _PIXELS_RE.sub(" | ", rest)
    ratios = _RATIO_RE.findall(rest)
    rest = _RATIO_RE.sub(" | ", rest)
    named = [_SIZE_WORDS[w.lower()] for w in _SIZE_WORD_RE.findall(rest)]
    rest = _SIZE_WORD_RE.sub(" | ", rest)
    pairs += [_RATIOS[r] for r in [*ratios, *named]]  # "9:16 story" is one size: pairs are deduplicated
    valid = all(64 <= v <= 4096 for p in pairs for v in p)
    sizes = [{"width": w, "height": h} for w, h in dict.fromkeys(pairs)]
    if not sizes or not valid:
        return [], rest, valid
    listing = ", ".join(f"{s['width']}×{s['height']}" for s in sizes)
    return [Fragment({"sizes": sizes}, f"ad sizes {listing}")], rest, True


def _asset(rest: str) -> tuple[list[Fragment], str]:
    found = _UUID_RE.findall(rest)
    if len(found) != 1:  # two assets named: which one is not for the router to pick
        return [], rest
    frag = Fragment({"background_asset_id": found[0]}, f"background asset {found[0]}", "asset", found[0])
    return [frag], _UUID_RE.sub(" | ", rest)


# ----------------------------------------------------------------------------- clauses

_CLAUSE_SPLIT = re.compile(r"(?<=[.!?])\s+|[\n;]+|,\s+|\s+(?:but|aber|also|and also|und auch)\s+", re.I)
_COURTESY = re.compile(
    r"(?:please|bitte|thanks?(?: a lot)?|thank you|danke(?: schön)?|ok(?:ay)?|hi|hello|hallo|cheers|"
    r"actually|also|well|hmm|eigentlich)\W*",
    re.I,
)
# A scale word next to one of these may be about that thing, not the product ("bigger text").
_OTHER_OBJECTS = re.compile(r"\b(?:background|backdrop|shadow|text|font|logo|lettering|hintergrund|schatten|schrift)\b")
_BARE_SIDE = re.compile(r"\bright\b")
_REMOVE_RE = re.compile(
    r"(?:please\s+)?(?:remove|get rid of|lose|drop|no|without)\s+(?:the\s+|all\s+|any\s+)?(?P<x>[a-z][a-z' -]{1,40}?)"
    r"(?:\s+please)?",
    re.I,
)
_ADD_RE = re.compile(r"(?:please\s+)?(?:add|include)\s+(?P<x>[a-z][a-z' -]{1,40}?)(?:\s+please)?", re.I)


def clauses(text: str) -> list[str]:
    """The feedback's clauses as the reviewer wrote them (whitespace and end punctuation tidied)."""
    return [c for c in (collapse(p).rstrip("!?") for p in _CLAUSE_SPLIT.split(text or "")) if c]


def _rules_intents(text: str, context: RouteContext) -> list[Intent | str]:
    """One Intent per routed clause; a clause it cannot route is kept as a string (not understood)."""
    out: list[Intent | str] = []
    for clause in clauses(text):
        if _COURTESY.fullmatch(clause):
            continue
        out.append(route_clause(clause, context) or clause)
    return out


def route_clause(clause: str, context: RouteContext) -> Intent | None:
    """The keyword table on one clause; None when it matches nothing or the clause is ambiguous."""
    fragments, rest, valid = _match_all(clause.lower(), context)
    if not valid:
        return None
    if not fragments:
        return _generic(clause)
    if has_negation(rest) or any(len(v) > 1 for v in Intent(clause, fragments).axes().values()):
        return None  # "not bigger", "bigger or smaller": never guessed
    if any(f.axis == "scale" for f in fragments) and _OTHER_OBJECTS.search(clause.lower()):
        return None
    if any(f.axis == "placement" for f in fragments) and _BARE_SIDE.search(rest):
        return None  # "left or right": the bare "right" is not matched as a side, but it is one here
    return Intent(clause, fragments)


def _match_all(rest: str, context: RouteContext) -> tuple[list[Fragment], str, bool]:
    """Every rule's matches, each consumed from the clause (what is left is checked for negations)."""
    fragments, rest, valid = _sizes(rest)
    assets, rest = _asset(rest)
    fragments += assets
    for rule in RULES:
        matches = list(rule.pattern.finditer(rest))
        if matches:
            fragments += [rule.make(m, context) for m in matches[:1]]
            rest = rule.pattern.sub(" | ", rest)
    return fragments, rest, valid


def _generic(clause: str) -> Intent | None:
    """ "remove the plant" / "no people" / "add some flowers": English caption edits of a few words."""
    removal, addition = _REMOVE_RE.fullmatch(clause), _ADD_RE.fullmatch(clause)
    thing = collapse((removal or addition).group("x")) if (removal or addition) else ""  # type: ignore[union-attr]
    if not thing or len(words(thing)) > 4 or has_negation(thing) or not guards.is_english(thing):
        return None
    if removal:
        fields = {"caption_remove": [thing], "caption_add": [f"no {thing}"]}
        return Intent(clause, [Fragment(fields, f'"{thing}" out of the caption (negative prompt)')])
    return Intent(clause, [Fragment({"caption_add": [f"with {thing}"]}, f'caption clause "with {thing}"')])


# ----------------------------------------------------------------------------- reasons

_REASON_FRAGMENTS: dict[Reason, Callable[[RouteContext], list[Fragment]]] = {
    Reason.PRODUCT: lambda c: [_qc(1)(None, c)],
    Reason.BACKGROUND: lambda c: [_other_background(None, c)],
    Reason.LIGHTING: lambda c: [_caption(LIGHT_CLAUSE)(None, c)],
    Reason.TEXT_ARTEFACTS: lambda c: [_caption(NO_TEXT_CLAUSE)(None, c), _qc(1)(None, c)],
    Reason.OFF_BRAND_COLOUR: lambda c: [_caption(BRAND_COLOUR_CLAUSE)(None, c), _qc(1)(None, c)],
}
# Reasons that only say *what* is wrong: the text must say how (a direction), else they are not understood.
_NEEDS_TEXT: dict[Reason, tuple[str, ...]] = {
    Reason.COMPOSITION: ("placement", "rotation"),
    Reason.SCALE: ("scale",),
    Reason.OTHER: (),  # any routed text
}


def _reason_intent(reason: Reason, routed_axes: set[str], routed_text: bool, context: RouteContext) -> Intent | str:
    source = f"reason:{reason.value}"
    if reason not in _NEEDS_TEXT:
        return Intent(source, _REASON_FRAGMENTS[reason](context))
    needed = _NEEDS_TEXT[reason]
    if routed_axes & set(needed) if needed else routed_text:
        return Intent(source, [Fragment({}, "as the text says")], by_text=True)
    return source


# ----------------------------------------------------------------------------- combining


def _combine(
    text_items: list[Intent | str],
    model_not_understood: list[str],
    reasons: list[Reason],
    context: RouteContext,
    router: str,
    **meta: Any,
) -> Routed:
    """Text intents and reason intents -> one Change; contradicting intents all go to not_understood,
    and so does an intent that changes nothing ("stricter" when QC is already strict)."""
    text_intents = [i for i in text_items if isinstance(i, Intent) and i.routes()]
    routed_axes = {a for i in text_intents for a in i.axes()}
    items = text_items + [_reason_intent(r, routed_axes, bool(text_intents), context) for r in reasons]
    candidates = [i for i in items if isinstance(i, Intent) and i.routes()]
    kept, torn = _without_conflicts(candidates)
    dropped = [i for i in items if isinstance(i, Intent) and i not in kept]
    notes = [f"{_label(i.source)} → {'; '.join(f.note for f in i.fragments)}" for i in kept]
    notes += [
        f"{_label(i.source)}: contradicts another request ({', '.join(torn & set(i.axes()))})"
        for i in dropped
        if i.routes()
    ]
    notes += [f"{_label(i.source)}: {f.note}" for i in dropped if not i.routes() for f in i.fragments]
    unrouted = [i if isinstance(i, str) else i.source for i in items if isinstance(i, str) or i in dropped]
    cut = sum(1 for i in text_items if isinstance(i, str) or i in dropped)
    not_understood = unrouted[:cut] + model_not_understood + unrouted[cut:]  # the text's, the model's, the reasons'
    return Routed(
        change=merge_fields([f.fields for i in kept for f in i.fragments]),
        not_understood=list(dict.fromkeys(not_understood)),
        router=router,
        notes=list(dict.fromkeys(notes)),
        **meta,
    )


def _label(source: str) -> str:
    return source if source.startswith("reason:") else f'"{source}"'


def _without_conflicts(intents: list[Intent]) -> tuple[list[Intent], set[str]]:
    """(the intents minus every one on an axis where two disagree (bigger here, smaller there), those axes)."""
    values: dict[str, set[Any]] = {}
    for intent in intents:
        for axis, vals in intent.axes().items():
            values.setdefault(axis, set()).update(vals)
    torn = {axis for axis, vals in values.items() if len(vals) > 1}
    return [i for i in intents if not torn & set(i.axes())], torn


def merge_fields(parts: list[dict[str, Any]]) -> Change:
    """Partial Change fields -> one Change: lists add up (each item once), the largest scale step wins."""
    merged: dict[str, Any] = {}
    for part in parts:
        for key, value in part.items():
            if isinstance(value, list):
                merged[key] = list(dict.fromkeys([*merged.get(key, []), *_hashable(value)]))
            elif key == "scale_steps":
                merged[key] = max(merged.get(key, 0), value, key=abs)
            else:
                merged[key] = value
    if "sizes" in merged:
        merged["sizes"] = [ChangeSize(width=w, height=h) for w, h in merged["sizes"]]
    for key in ("caption_add", "caption_remove", "exclude_background_ids", "sizes"):
        if key in merged:
            merged[key] = merged[key][:10]
    return Change.model_validate(merged)


def _hashable(items: list[Any]) -> list[Any]:
    return [(i["width"], i["height"]) if isinstance(i, dict) else i for i in items]


# ----------------------------------------------------------------------------- hosted backends


class RouteAnswer(BaseModel):
    """What a hosted model answers for feedback_route.v1 (the change's own schema forbids extra keys)."""

    model_config = ConfigDict(extra="forbid")
    change: Change
    not_understood: list[str] = Field(default_factory=list, max_length=20)
    notes: list[str] = Field(default_factory=list, max_length=20)


def answer_errors(answer: RouteAnswer, text: str, context: RouteContext) -> dict[str, str]:
    """A hosted answer is used only when it stays within the feedback: {field: reason}, {} when usable."""
    change, errors = answer.change, {}
    shown = {i.lower() for i in context.background_asset_ids}
    if any(str(i).lower() not in shown for i in change.exclude_background_ids):
        errors["exclude_background_ids"] = "exclude_background_ids may only name the backgrounds shown"
    if change.background_asset_id and str(change.background_asset_id).lower() not in text.lower():
        errors["background_asset_id"] = "background_asset_id must be an asset id written in the feedback"
    bad = [c for c in change.caption_add if len(words(c)) > 12 or is_instruction_like(c) or not guards.is_english(c)]
    if bad:
        errors["caption_add"] = f'caption_add "{bad[0]}" must be a short English description, not an instruction'
    flat = collapse(text).lower()
    made_up = [s for s in answer.not_understood if collapse(s).rstrip(".!?").lower() not in flat]
    if made_up:
        errors["not_understood"] = f'not_understood "{made_up[0]}" is not a sentence of the feedback'
    if change.is_empty() and not answer.not_understood:
        errors["change"] = "the change is empty and not_understood names no sentence: route the feedback or list it"
    return errors


def _hosted(text: str, reasons: list[Reason], context: RouteContext, settings: Settings) -> Routed:
    from workers.models import llm_hosted

    backend, template = llm_hosted.backend_for(settings), load_prompt("feedback_route", "v1")
    calls: list[dict[str, Any]] = []
    shown = _context_text(context)
    answer, failed = with_one_reask(
        lambda errors: hosted_answer(backend, template, RouteAnswer, calls, errors, feedback=text, context=shown),
        lambda got: answer_errors(got, text, context),
    )
    meta: dict[str, Any] = {"model": backend.model, "prompt_version": template.id, "calls": calls}
    if failed:
        reason = f"{backend.name} answer invalid twice ({'; '.join(failed.values())}); routed by the keyword table"
        return _combine(_rules_intents(text, context), [], reasons, context, "rules", **meta, fallback_reason=reason)
    return _combine(_model_intents(answer, text), answer.not_understood, reasons, context, backend.name, **meta)


def _model_intents(answer: RouteAnswer, text: str) -> list[Intent | str]:
    """The model's change as one intent per field (so a reason contradicting one field costs only that one)."""
    fields = answer.change.model_dump(mode="json", exclude_defaults=True)
    note = "; ".join(answer.notes) or "routed by the model"
    axes = {"scale_steps": "scale", "placement": "placement", "rotation": "rotation", "qc": "qc"}
    intents: list[Intent | str] = []
    for key, value in fields.items():
        axis = axes.get(key, "")
        sign = (value > 0) - (value < 0) if key in ("scale_steps", "qc") else value
        intents.append(Intent(text, [Fragment({key: value}, note, axis, sign if axis else None)]))
    return intents


def _context_text(context: RouteContext) -> str:
    sizes = ", ".join(f"{s.get('width')}x{s.get('height')}" for s in context.sizes) or "unknown"
    shown = ", ".join(context.background_asset_ids) or "none (the brand backdrop)"
    return f"Backgrounds shown: {shown}\nAd sizes: {sizes}\nQC policy: {context.qc_policy}"
