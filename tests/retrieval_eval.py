"""The labelled retrieval set (tests/data/retrieval_eval.json) and its metrics, shared by the in-process
evaluation (tests/shared/test_search_eval.py) and the end-to-end one over HTTP (tests/e2e/test_e2e_library.py)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EVAL_FILE = Path(__file__).parent / "data" / "retrieval_eval.json"


@dataclass(frozen=True)
class Scores:
    recall_at_5: float
    mrr: float
    per_type: dict[str, float]  # recall@5 per query type

    def row(self, name: str) -> str:
        types = " ".join(f"{t}={v:.2f}" for t, v in sorted(self.per_type.items()))
        return f"{name:8s} recall@5={self.recall_at_5:.3f} MRR={self.mrr:.3f} ({types})"


def load() -> dict[str, Any]:
    return json.loads(EVAL_FILE.read_text())


def evaluate(queries: Sequence[dict[str, Any]], ranked: Callable[[dict[str, Any]], list[str]]) -> Scores:
    """recall@5 (share of a query's relevant keys in its top 5, averaged) and MRR of the first relevant key."""
    recalls, reciprocal, by_type = [], [], {}
    for query in queries:
        keys = ranked(query)
        relevant = set(query["relevant"])
        recall = len(relevant & set(keys[:5])) / len(relevant)
        first = next((i for i, key in enumerate(keys) if key in relevant), None)
        recalls.append(recall)
        reciprocal.append(0.0 if first is None else 1.0 / (first + 1))
        by_type.setdefault(query.get("type", "all"), []).append(recall)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return Scores(mean(recalls), mean(reciprocal), {t: mean(v) for t, v in by_type.items()})
