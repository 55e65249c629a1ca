"""Language-stage evaluation on the labelled brief set (tests/data/briefs_eval.json).

For each backend asked (local, rules, openai, bedrock) every brief is decomposed and a caption is made from
the decomposition (no product title, no background caption), and the table reports:

* entity precision / recall / F1 for products, backgrounds and themes, micro-averaged over the briefs
  (true/false positives and false negatives summed over all briefs, then P = tp/(tp+fp), R = tp/(tp+fn)),
  for all briefs and split into English vs non-English briefs;
* fallback rate: the share of results whose ``backend`` differs from the backend asked (local -> rules),
  for decompose and caption separately, and the mean latency per brief (decompose + caption);
* caption rule compliance: length <= ``MAX_CAPTION_CHARS``, no negation word (``has_negation``), not
  instruction-like (``is_instruction_like``), and the share of captions passing all three.

Matching rule (loose, documented here because the numbers depend on it). A predicted phrase and an expected
phrase match when, after ``strip_determiners``, their content-word stems (``workers.language.text.content_stems``)

1. share the head noun: the stem of the last content word is the same ("wooden deck" ~ "old deck"), or
2. one phrase's stem set is a subset of the other's ("running shoe" ~ "red running shoe").

Matching is one-to-one and greedy in the predicted order: each predicted phrase takes the first expected
phrase of the same field it matches that is still free. Unmatched predictions are false positives, unmatched
expected phrases false negatives. Seasons (per the set's ``conventions``) are labelled in ``season``, not in
``themes``: a predicted theme that matches the expected season counts as a true positive, and a season that
is not predicted is not a false negative (it is an optional gold phrase of ``themes``).

Expected values are always English. The local and rules backends do not translate, so on non-English
briefs they predict phrases in the brief's language and score near zero there; the table says so rather
than hiding it. The hosted backends return an ``english`` translation and English phrases.

Hosted backends run only when asked *and* configured: ``ONBRAND_LLM_BACKEND`` names that backend, and the
credentials are in the environment (``ONBRAND_OPENAI_API_KEY`` or ``ONBRAND_OPENAI_BASE_URL`` for openai,
AWS credentials (``AWS_ACCESS_KEY_ID`` / ``AWS_PROFILE``) for bedrock); otherwise the line says
"skipped: not configured".

    python -m tests.bench.llm_eval --backend local --backend rules [--limit N]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.config import Settings
from workers.language import guards
from workers.language.caption import caption
from workers.language.decompose import decompose
from workers.language.hosted import BACKENDS, HOSTED_BACKENDS
from workers.language.text import (
    MAX_CAPTION_CHARS,
    content_stems,
    has_negation,
    is_instruction_like,
    stem,
    strip_determiners,
    words,
)

EVAL_FILE = Path(__file__).resolve().parent.parent / "data" / "briefs_eval.json"
FIELDS = ("products", "backgrounds", "themes")
LABELS = ("season", "audience")  # single values: P/R over present labels
SLICES = ("all", "en", "non-en")
PREFIX = "BENCH llm-eval"


def load(limit: int | None = None) -> list[dict[str, Any]]:
    briefs = json.loads(EVAL_FILE.read_text())["briefs"]
    return briefs[:limit] if limit else briefs


# ----------------------------------------------------------------------------- matching


def _key(phrase: str) -> tuple[set[str], str]:
    """(content stems, head-noun stem) of a phrase without determiners."""
    text = strip_determiners(phrase)
    content = [w for w in words(text) if content_stems(w)]
    return content_stems(text), (stem(content[-1]) if content else "")


def phrases_match(predicted: str, expected: str) -> bool:
    """Same head noun, or one phrase's content stems are a subset of the other's (see the module docstring)."""
    (a, head_a), (b, head_b) = _key(predicted), _key(expected)
    if not a or not b:
        return False
    return (head_a == head_b and head_a != "") or a <= b or b <= a


@dataclass
class Counts:
    tp: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, other: Counts) -> None:
        self.tp, self.fp, self.fn = self.tp + other.tp, self.fp + other.fp, self.fn + other.fn

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def match(predicted: Sequence[str], expected: Sequence[str], optional: Sequence[str] = ()) -> Counts:
    """Greedy one-to-one matching; `optional` gold phrases count when matched and are not missed otherwise."""
    gold = [(e, False) for e in expected] + [(o, True) for o in optional if o]
    free = list(range(len(gold)))
    counts = Counts()
    for p in predicted:
        hit = next((i for i in free if phrases_match(p, gold[i][0])), None)
        if hit is None:
            counts.fp += 1
        else:
            free.remove(hit)
            counts.tp += 1
    counts.fn = sum(1 for i in free if not gold[i][1])
    return counts


# ----------------------------------------------------------------------------- evaluation


@dataclass
class Row:
    """One brief's outcome."""

    id: str
    lang: str
    counts: dict[str, Counts]
    decompose_backend: str
    caption_backend: str
    latency_s: float
    caption: str
    length_ok: bool
    no_negation: bool
    not_instruction: bool
    translated: bool
    english_ok: bool = True
    fallback_reason: str | None = None
    error: str | None = None

    @property
    def english(self) -> bool:
        return self.lang == "en"


@dataclass
class Report:
    backend: str
    rows: list[Row] = field(default_factory=list)
    warmup_s: float = 0.0
    skipped: str | None = None

    def _rows(self, part: str) -> list[Row]:
        if part == "en":
            return [r for r in self.rows if r.english]
        if part == "non-en":
            return [r for r in self.rows if not r.english]
        return list(self.rows)

    def counts(self, name: str, part: str = "all") -> Counts:
        total = Counts()
        for row in self._rows(part):
            total.add(row.counts[name])
        return total

    def share(self, predicate: Any, rows: Sequence[Row] | None = None) -> float:
        rows = self.rows if rows is None else rows
        return sum(1 for r in rows if predicate(r)) / len(rows) if rows else 0.0

    @property
    def decompose_fallback_rate(self) -> float:
        return self.share(lambda r: r.decompose_backend != self.backend)

    @property
    def caption_fallback_rate(self) -> float:
        return self.share(lambda r: r.caption_backend != self.backend)

    @property
    def mean_latency_s(self) -> float:
        return sum(r.latency_s for r in self.rows) / len(self.rows) if self.rows else 0.0

    @property
    def compliance(self) -> dict[str, float]:
        return {
            "length": self.share(lambda r: r.length_ok),
            "no_negation": self.share(lambda r: r.no_negation),
            "not_instruction": self.share(lambda r: r.not_instruction),
            "english": self.share(lambda r: r.english_ok),
            "all": self.share(lambda r: r.length_ok and r.no_negation and r.not_instruction),
        }

    def lines(self) -> list[str]:
        b = f"{PREFIX} {self.backend:7s}"
        if self.skipped:
            return [f"{b} skipped: {self.skipped}"]
        en, non_en = len(self._rows("en")), len(self._rows("non-en"))
        translated = self.share(lambda r: r.translated, self._rows("non-en"))
        translation = (
            f"translated {translated:.0%} of non-English briefs"
            if translated
            else "no translation (expected values are English: non-en scores are low by design)"
        )
        out = [
            f"{b} briefs={len(self.rows)} (en {en}, non-en {non_en}); {translation}",
            f"{b} {'field':12s} {'slice':7s} {'P':>6s} {'R':>6s} {'F1':>6s} {'tp':>4s} {'fp':>4s} {'fn':>4s}",
        ]
        for name in (*FIELDS, *LABELS):
            for part in SLICES:
                c = self.counts(name, part)
                out.append(
                    f"{b} {name:12s} {part:7s} {c.precision:6.3f} {c.recall:6.3f} {c.f1:6.3f} "
                    f"{c.tp:4d} {c.fp:4d} {c.fn:4d}"
                )
        comp = self.compliance
        errors = sum(1 for r in self.rows if r.error)
        out += [
            f"{b} fallback decompose={self.decompose_fallback_rate:.1%} caption={self.caption_fallback_rate:.1%}"
            f" errors={errors}",
            f"{b} latency mean={self.mean_latency_s:.3f}s/brief (decompose+caption; warm-up {self.warmup_s:.1f}s "
            "not counted)",
            f"{b} caption compliance length<={MAX_CAPTION_CHARS}={comp['length']:.1%} "
            f"no-negation={comp['no_negation']:.1%} not-instruction={comp['not_instruction']:.1%} "
            f"all-three={comp['all']:.1%} english={comp['english']:.1%}",
        ]
        return out


def hosted_configured(backend: str, env: dict[str, str] | None = None) -> bool:
    """A hosted backend runs only when ONBRAND_LLM_BACKEND names it and its credentials are in the env."""
    env = dict(os.environ) if env is None else env
    if env.get("ONBRAND_LLM_BACKEND") != backend:
        return False
    if backend == "openai":
        return bool(env.get("ONBRAND_OPENAI_API_KEY") or env.get("ONBRAND_OPENAI_BASE_URL"))
    if backend == "bedrock":
        return bool(env.get("AWS_ACCESS_KEY_ID") or env.get("AWS_PROFILE"))
    return False


def _brief_row(brief: dict[str, Any], settings: Settings) -> Row:
    expected = brief["expected"]
    started = time.perf_counter()
    try:
        parts = decompose(brief["brief"], settings)
        made = caption(parts, None, None, settings)
    except Exception as exc:  # noqa: BLE001 - a crash is a result of the benchmark, not its end
        empty = {name: match([], expected[name]) for name in FIELDS}
        empty.update({name: match([], [expected[name]] if expected.get(name) else []) for name in LABELS})
        return Row(
            brief["id"],
            brief["lang"],
            empty,
            "error",
            "error",
            time.perf_counter() - started,
            "",
            False,
            False,
            False,
            False,
            error=f"{type(exc).__name__}: {exc}",
        )
    latency = time.perf_counter() - started
    counts = {
        name: match(
            parts.get(name) or [],
            expected.get(name) or [],
            optional=[expected["season"]] if name == "themes" and expected.get("season") else (),
        )
        for name in FIELDS
    }
    counts.update(
        {
            name: match([parts[name]] if parts.get(name) else [], [expected[name]] if expected.get(name) else [])
            for name in LABELS
        }
    )
    text = made["caption"]
    return Row(
        brief["id"],
        brief["lang"],
        counts,
        parts["backend"],
        made["backend"],
        latency,
        text,
        length_ok=len(text) <= MAX_CAPTION_CHARS,
        no_negation=not has_negation(text),
        not_instruction=not is_instruction_like(text),
        english_ok=guards.is_english(text),
        translated=bool(parts.get("english")),
        fallback_reason=parts.get("fallback_reason") or made.get("fallback_reason"),
    )


def evaluate(backend: str, settings: Settings, briefs: Sequence[dict[str, Any]], *, warmup: bool = True) -> Report:
    """Decompose and caption every brief with `backend` (overriding settings.llm_backend); one Row per brief.

    With `warmup`, the local backend is warmed up first (model load) on the first brief; that time is
    reported apart and not in the mean latency.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    settings = settings.model_copy(update={"llm_backend": backend})
    report = Report(backend)
    if warmup and backend == "local" and briefs:
        started = time.perf_counter()
        decompose(briefs[0]["brief"], settings)
        report.warmup_s = time.perf_counter() - started
    report.rows = [_brief_row(brief, settings) for brief in briefs]
    return report


def run(backend: str, briefs: Sequence[dict[str, Any]], settings: Settings | None = None) -> Report:
    """evaluate(), or a skipped Report for a hosted backend that is not configured."""
    if backend in HOSTED_BACKENDS and not hosted_configured(backend):
        return Report(backend, skipped="not configured")
    return evaluate(backend, settings or Settings(), briefs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backend", action="append", choices=BACKENDS, help="backend to evaluate (repeatable; default: rules)"
    )
    parser.add_argument("--limit", type=int, default=None, help="first N briefs only")
    args = parser.parse_args(argv)
    briefs = load(args.limit)
    for backend in args.backend or ["rules"]:
        for line in run(backend, briefs).lines():
            print(line, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
