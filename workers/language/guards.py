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

from workers.language.budget import TokenBudget
from workers.language.text import (
    FOREIGN_NEGATIONS,
    cap_at_boundary,
    collapse,
    dedupe,
    split_negations,
    strip_instructions,
)

MAX_PROMPT_CHARS = 1024
_LETTER_RE = re.compile(r"[^\W\d_]", re.UNICODE)
# Function words that are common in the briefs' other languages and not English words.
_FOREIGN_WORDS = frozenset(
    "de la le les des du une un el los las con para por sobre und der die das ein eine einem einer mit auf im "
    "für bei zur zum sur dans avec pour au aux em uma um numa num para com ao na no dos das het een op "
    "voor bij van il lo gli della nel sul dei per und oder ist sind".split()
) | frozenset(w for w in FOREIGN_NEGATIONS.split("|") if " " not in w)
_ENGLISH_WORDS = frozenset(
    "the a an on in at with of and by near under over for from to is are its their this under beside".split()
)


@dataclass
class Fitted:
    """Clauses fitted to the text encoder's token budget."""

    text: str
    tokens: int
    dropped: list[str] = field(default_factory=list)  # whole clauses taken out, least important first
    cut: bool = False  # the last clause kept was cut at a word boundary


@dataclass
class Guarded:
    """A positive prompt after the guards, and what they did to it."""

    text: str
    negatives: list[str] = field(default_factory=list)  # moved to the negative prompt
    removed_terms: list[str] = field(default_factory=list)  # brand-forbidden terms taken out
    cut: bool = False  # shortened at a sentence/comma boundary (characters or tokens)
    english: bool = True
    budget: TokenBudget | None = None  # what counted the tokens (None: characters only)
    fitted: Fitted | None = None

    def token_report(self) -> dict[str, Any]:
        if self.budget is None or self.fitted is None:
            return {}
        return {
            "tokens": self.fitted.tokens,
            "token_limit": self.budget.limit,
            "tokenizer": self.budget.tokenizer,
            "tokenizer_fallback": self.budget.fallback_reason,
            "dropped_for_tokens": self.fitted.dropped,
        }

    def report(self) -> dict[str, Any]:
        return {
            "negations_moved": self.negatives,
            "forbidden_removed": self.removed_terms,
            "cut": self.cut,
            "english": self.english,
            **self.token_report(),
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


def guard_prompt(
    text: str, forbidden_terms: Sequence[str] = (), limit: int = MAX_PROMPT_CHARS, budget: TokenBudget | None = None
) -> Guarded:
    """Instruction words off, negations moved out, forbidden terms removed, cut at a boundary; with a
    budget, also fitted to the encoder's tokens by dropping trailing comma clauses (text order is the
    order of importance: a caption says its subject first)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be str, got {type(text).__name__}")
    kept, negatives = split_negations(strip_instructions(collapse(text)))
    kept, removed = remove_terms(kept, forbidden_terms)
    capped = cap_at_boundary(kept, limit)
    if budget is None:
        return Guarded(capped, negatives, removed, capped != kept, is_english(capped))
    fitted = fit_tokens(split_clauses(capped), budget)
    cut = capped != kept or bool(fitted.dropped) or fitted.cut
    return Guarded(fitted.text, negatives, removed, cut, is_english(fitted.text), budget, fitted)


def guard_clauses(
    clauses: Sequence[str],
    forbidden_terms: Sequence[str] = (),
    budget: TokenBudget | None = None,
    importance: Sequence[int] | None = None,
    limit: int = MAX_PROMPT_CHARS,
) -> Guarded:
    """The guards on each clause (in text order), then the clauses fitted to the budget, the least
    important (last in `importance`, indices into `clauses`; default: text order) dropped first."""
    parts = [guard_prompt(c, forbidden_terms, limit) for c in clauses]
    negatives = dedupe([n for p in parts for n in p.negatives])
    removed = dedupe([t for p in parts for t in p.removed_terms])
    texts = [p.text for p in parts]
    whole = join_clauses(texts)
    if budget is None:
        capped = cap_at_boundary(whole, limit)
        return Guarded(capped, negatives, removed, capped != whole, is_english(capped))
    fitted = fit_tokens(texts, budget, importance)
    capped = cap_at_boundary(fitted.text, limit)
    fitted.tokens = budget.count(capped)
    cut = capped != whole
    return Guarded(capped, negatives, removed, cut, is_english(capped), budget, fitted)


def split_clauses(text: str) -> list[str]:
    """Comma/semicolon clauses ("4.5 inch" and "1,000" are not boundaries: a space must follow)."""
    return [c for c in (collapse(p) for p in re.split(r"[,;]\s+", text)) if c]


def join_clauses(clauses: Sequence[str]) -> str:
    return ", ".join(c for c in clauses if c)


def fit_tokens(clauses: Sequence[str], budget: TokenBudget, importance: Sequence[int] | None = None) -> Fitted:
    """Drop whole clauses, least important first (never the most important), until the joined text
    fits; a clause still too long alone is cut at the last word boundary that fits."""
    order = list(importance) if importance is not None else list(range(len(clauses)))
    if sorted(order) != list(range(len(clauses))):
        raise ValueError(f"importance must order every clause index once, got {order!r}")
    kept = [bool(c) for c in clauses]
    dropped: list[str] = []
    for index in reversed(order[1:]):
        if budget.fits(join_clauses([c for c, k in zip(clauses, kept, strict=True) if k])):
            break
        if kept[index]:
            kept[index] = False
            dropped.append(clauses[index])
    text = join_clauses([c for c, k in zip(clauses, kept, strict=True) if k])
    if budget.fits(text):
        return Fitted(text, budget.count(text), dropped)
    text = cut_words(text, budget)
    return Fitted(text, budget.count(text), dropped, cut=True)


def cut_words(text: str, budget: TokenBudget) -> str:
    """The longest prefix ending at a word boundary that fits (at least the first word)."""
    ws = text.split(" ")
    lo, hi = 1, len(ws)  # invariant: the first `lo` words are kept; more than `hi` never fit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if budget.fits(collapse(" ".join(ws[:mid]))):
            lo = mid
        else:
            hi = mid - 1
    return collapse(" ".join(ws[:lo]))


def guard_negative(terms: Sequence[str], forbidden_terms: Sequence[str] = ()) -> list[str]:
    """The negative prompt also names what the brand forbids, so the generator steers away from it."""
    return [*terms, *check_terms("forbidden_terms", forbidden_terms)]
