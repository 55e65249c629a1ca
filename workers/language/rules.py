"""The transparent rules decomposer: noun phrases around prepositions, no model.

It is the "rules" backend of decompose and the fallback of every model backend, and it
parses what a small model gets wrong (negations, season, audience) on the local path too.
Every phrase it returns is cut out of the brief; nothing is invented.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from workers.language.text import (
    MOOD_NOUNS,
    PREP_RE,
    SEASONS,
    STOP,
    collapse,
    dedupe,
    split_negations,
    stem,
    strip_determiners,
    strip_instructions,
    words,
)

RULES_MODEL_ID = "rules-v1"  # the "model" named in a result the rules (or a fixed template) produced
MAX_BRIEF_CHARS = 2000

# Head nouns that make a prepositional phrase a theme (time, light, season, weather).
_THEME_HEADS = frozenset(
    "sunset sunrise dawn dusk twilight night nighttime midnight noon midday morning afternoon evening "
    "day daytime daylight hour light lighting sunlight moonlight candlelight glow shadow summer "
    "winter autumn fall spring season christmas holiday halloween rain snow fog mist storm weather "
    "sun haze".split()
)
_MOOD_WORDS = frozenset(
    "calm cozy cosy warm romantic dreamy playful luxurious luxury minimal minimalist moody serene "
    "energetic vibrant elegant festive bold fresh nostalgic rustic edgy cheerful peaceful "
    "mysterious dramatic sporty fun joyful relaxed soft bright dark and".split()
)
_CLAUSE_SPLIT = re.compile(r"\s*(?:[,;|]|\s-\s|\.\s)\s*")
_PEOPLE = (
    r"parents|mothers|fathers|moms|mums|dads|families|kids|children|teens|teenagers|students|runners|athletes|"
    r"professionals|executives|women|men|girls|boys|couples|lovers|beginners|dwellers|travell?ers|commuters|"
    r"cyclists|hikers|gamers|shoppers|fans|millennials|seniors|adults|owners|buyers|customers|people|foodies|"
    r"enthusiasts|creators|workers|nurses|chefs|golfers|skaters|surfers|climbers|drivers|riders"
)
_AUDIENCE_RE = re.compile(rf"\bfor\s+((?:[\w'-]+\s+){{0,4}}?(?:{_PEOPLE})(?:\s+in\s+their\s+[\w-]+)?)\b", re.I)
_SEASON_RE = re.compile(
    rf"\b(?:in|during|for|this|our|the|of|at)\s+(?:(?:the|our|this)\s+)?"
    rf"((?:{SEASONS})\s+(?:holidays?|season|launch|collection|sale)|holiday season|holidays|christmas|halloween|"
    rf"easter|{SEASONS})\b",
    re.I,
)


def check_brief(brief: str) -> str:
    """The brief on one line, whitespace collapsed; TypeError / ValueError when it is unusable."""
    if not isinstance(brief, str):
        raise TypeError(f"brief must be str, got {type(brief).__name__}")
    text = collapse(brief.replace("\n", " "))
    if not text:
        raise ValueError("brief must not be empty")
    if len(text) > MAX_BRIEF_CHARS:
        raise ValueError(f"brief must be at most {MAX_BRIEF_CHARS} characters, got {len(text)}")
    return text


def rules_decompose(brief: str) -> dict[str, Any]:
    """Transparent decomposer: noun phrases around prepositions.
    "the shoe on an urban street at sunset" -> shoe / urban street / sunset."""
    text = strip_instructions(check_brief(brief))
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
    parts["negatives"] = dedupe(negatives)
    return parts


def _extract_mood(text: str) -> tuple[str, str | None]:
    """ "..., calm mood" / "mood: playful" / "with a romantic vibe" -> mood word(s)."""
    labelled = re.search(rf"\b(?:{MOOD_NOUNS})\s*[:=]\s*([^,;.]+)", text, re.I)
    if labelled:
        return text[: labelled.start()] + text[labelled.end() :], collapse(labelled.group(1)) or None
    noun = re.search(rf"\b(?:{MOOD_NOUNS})\b", text, re.I)
    if noun is None:
        return text, None
    start = _mood_start(text[: noun.start()])
    if start is None:
        return text, None
    mood = collapse(text[start : noun.start()]).removeprefix("and ").strip()
    before = re.sub(r"(?:\b(?:with|in)\s+)?(?:\b(?:an?|the)\s+)?$", "", text[:start])
    return before + text[noun.end() :], mood or None


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
    if not found or found[-1].group().lower() in STOP:
        return None
    k = len(found) - 1
    while k > 0 and found[k - 1].group().lower() in _MOOD_WORDS:
        k -= 1
    return found[k].start()


def _split_prepositions(clause: str) -> tuple[str, list[tuple[str, str]]]:
    """ "the shoe on an urban street at sunset" -> ("the shoe", [("on", "an urban street"), ("at", "sunset")])."""
    matches = list(PREP_RE.finditer(clause))
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
    return dedupe([p for p in pieces if p])


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
