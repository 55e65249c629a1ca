"""Deterministic guards on every language backend's output (local, rules, openai, bedrock).

A model, small or large, can answer with an instruction ("Generate a photo of..."), a
negation the diffusion text encoder would read as its opposite ("no people" -> people), a
competitor's name the brand forbids, another language, or a caption too long for the
encoder. These rules run after every backend, so what reaches the generator is usable
whichever model wrote it, and the result says what was changed.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from workers.language.text import cap_at_boundary, collapse, split_negations, strip_instructions

MAX_PROMPT_CHARS = 1024
_LETTER_RE = re.compile(r"[^\W\d_]", re.UNICODE)
# Function words that are common in the briefs' other languages and not English words.
_FOREIGN_WORDS = frozenset(
    "de la le les des du une un el los las con para por sobre und der die das ein eine einem einer mit auf im "
    "für bei zur zum sur dans avec pour au aux em uma um numa num para com ao na no dos das het een op "
    "voor bij van il lo gli della nel sul dei per und oder ist sind".split()
)
_ENGLISH_WORDS = frozenset(
    "the a an on in at with of and by near under over for from to is are its their this under beside".split()
)


@dataclass
class Guarded:
    """A positive prompt after the guards, and what they did to it."""

    text: str
    negatives: list[str] = field(default_factory=list)  # moved to the negative prompt
    removed_terms: list[str] = field(default_factory=list)  # brand-forbidden terms taken out
    cut: bool = False  # shortened at a sentence/comma boundary
    english: bool = True

    def report(self) -> dict[str, Any]:
        return {
            "negations_moved": self.negatives,
            "forbidden_removed": self.removed_terms,
            "cut": self.cut,
            "english": self.english,
        }


def is_english(text: str) -> bool:
    """Mostly Latin letters, and not more foreign function words than English ones.

    Deliberately simple and deterministic: it catches a caption or item left in German,
    Spanish, Chinese..., not a subtle mix; brand names and loanwords pass.
    """
    letters = _LETTER_RE.findall(text)
    if not letters:
        return True
    if sum(ch.isascii() for ch in letters) / len(letters) < 0.9:
        return False
    tokens = [t.lower() for t in re.findall(r"[\w'-]+", text)]
    foreign = sum(t in _FOREIGN_WORDS and t not in _ENGLISH_WORDS for t in tokens)
    return foreign == 0 or foreign <= sum(t in _ENGLISH_WORDS for t in tokens) // 2


def check_terms(name: str, terms: Sequence[str] | None) -> list[str]:
    """The terms stripped, blanks dropped; TypeError unless a list of str (a bare str is a mistake)."""
    if terms is None:
        return []
    if isinstance(terms, str) or not all(isinstance(t, str) for t in terms):
        raise TypeError(f"{name} must be a list of str, got {terms!r}")
    return [t.strip() for t in terms if t.strip()]


def remove_terms(text: str, terms: Sequence[str]) -> tuple[str, list[str]]:
    """Take each term out (whole words, any case) and tidy the commas it leaves."""
    removed = []
    for term in check_terms("forbidden_terms", terms):
        # the whole compound goes: "Nike-style" and "Nike's" are still the name
        pattern = re.compile(rf"(?<![\w-]){re.escape(term)}(?:-[\w]+)*(?:'s)?(?![\w-])", re.I)
        if pattern.search(text):
            removed.append(term)
            text = pattern.sub(" ", text)
    text = re.sub(r"\s+([,;.])", r"\1", re.sub(r"(?:\s*,\s*){2,}", ", ", text))
    return collapse(re.sub(r"\s{2,}", " ", text)), removed


def guard_prompt(text: str, forbidden_terms: Sequence[str] = (), limit: int = MAX_PROMPT_CHARS) -> Guarded:
    """Instruction words off, negations moved out, forbidden terms removed, cut at a boundary."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    kept, negatives = split_negations(strip_instructions(collapse(text)))
    kept, removed = remove_terms(kept, forbidden_terms)
    capped = cap_at_boundary(kept, limit)
    return Guarded(capped, negatives, removed, capped != kept, is_english(capped))


def guard_negative(terms: Sequence[str], forbidden_terms: Sequence[str] = ()) -> list[str]:
    """The negative prompt also names what the brand forbids, so the generator steers away from it."""
    return [*terms, *check_terms("forbidden_terms", forbidden_terms)]
