"""A per-brand pairwise ranking model: Bradley-Terry, i.e. logistic regression on feature differences.

P(a preferred to b) = sigmoid(w . (z(a) - z(b))), z = the features standardised with the pairs' own mean
and standard deviation. w is the maximum a posteriori fit under a Gaussian prior centred on the aesthetic
score: w0 = PRIOR_WEIGHT on "aesthetic", 0 elsewhere, penalty L2/2 * |w - w0|^2. So

* with no pairs, w = w0: the utility is the aesthetic score (shifted and scaled), the ranking is
  today's aesthetic order;
* each pair pulls w away from w0 only as far as the evidence goes; a handful of noisy decisions cannot
  turn the ranking upside down.

Fitted by Newton's method (the objective is strictly concave: a unique optimum): plain numpy, no
randomness, the same pairs always give the same weights.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from workers.ranking.features import FEATURES

PRIOR_FEATURE = "aesthetic"
PRIOR_WEIGHT = 1.0  # in standard deviations of the aesthetic score: 1 sd apart -> 73 % preferred
L2 = 2.0  # prior strength; measured with tests/bench/test_bench_ranking.py (see workers.ranking.learn)
MIN_SCALE = 1e-6  # a feature (nearly) constant over the pairs keeps scale 1: its differences are ~0 anyway
MAX_STEPS, TOLERANCE = 50, 1e-9

Features = Mapping[str, float]
Pair = tuple[Features, Features]  # (preferred, the other)


@dataclass(frozen=True)
class Weights:
    """Standardisation and coefficients, per feature name (what BrandRanker.weights stores as JSON)."""

    features: tuple[str, ...]
    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    pairs: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "model": "bradley-terry",
            "prior": {"feature": PRIOR_FEATURE, "weight": PRIOR_WEIGHT, "l2": L2},
            "pairs": self.pairs,
            "features": {
                name: {"mean": m, "scale": s, "coef": c}
                for name, m, s, c in zip(self.features, self.mean, self.scale, self.coef, strict=True)
            },
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Weights:
        found = data["features"]
        names = tuple(found)
        return cls(
            names,
            tuple(float(found[n]["mean"]) for n in names),
            tuple(float(found[n]["scale"]) for n in names),
            tuple(float(found[n]["coef"]) for n in names),
            int(data.get("pairs", 0)),
        )


def prior(names: Sequence[str] = FEATURES) -> Weights:
    """The weights of no data: the aesthetic score alone."""
    coef = tuple(PRIOR_WEIGHT if n == PRIOR_FEATURE else 0.0 for n in names)
    return Weights(tuple(names), (0.0,) * len(names), (1.0,) * len(names), coef, 0)


def fit(pairs: Sequence[Pair], names: Sequence[str] = FEATURES, l2: float | None = None) -> Weights:
    """MAP Bradley-Terry weights for ``pairs`` (each (preferred, other)); no pairs: prior()."""
    if not pairs:
        return prior(names)
    winners, losers = _matrix([a for a, _ in pairs], names), _matrix([b for _, b in pairs], names)
    both = np.vstack([winners, losers])
    mean = both.mean(axis=0)
    sd = both.std(axis=0)
    scale = np.where(sd > MIN_SCALE, sd, 1.0)
    diffs = (winners - losers) / scale  # the mean cancels in a difference
    w0 = np.asarray(prior(names).coef)
    w = _newton(diffs, w0, L2 if l2 is None else l2)
    return Weights(tuple(names), _floats(mean), _floats(scale), _floats(w), len(pairs))


def utility(weights: Weights, feats: Features) -> float:
    """The learned utility of one candidate (higher ranks first). A feature the weights know but ``feats``
    lacks (weights stored before a feature was renamed) reads as its mean: it then counts for nothing."""
    x = np.asarray([feats.get(n, m) for n, m in zip(weights.features, weights.mean, strict=True)], np.float64)
    z = (x - np.asarray(weights.mean)) / np.asarray(weights.scale)
    return float(z @ np.asarray(weights.coef))


def _newton(diffs: np.ndarray, w0: np.ndarray, l2: float) -> np.ndarray:
    """argmax sum log sigmoid(diffs @ w) - l2/2 |w - w0|^2."""
    w = w0.copy()
    eye = np.eye(len(w0))
    for _ in range(MAX_STEPS):
        p = _sigmoid(diffs @ w)
        grad = diffs.T @ (1.0 - p) - l2 * (w - w0)
        hess = (diffs * (p * (1.0 - p))[:, None]).T @ diffs + l2 * eye
        step = np.linalg.solve(hess, grad)
        w += step
        if float(np.abs(step).max()) < TOLERANCE:
            break
    return w


def _sigmoid(x: np.ndarray) -> np.ndarray:
    out: np.ndarray = 0.5 * (1.0 + np.tanh(0.5 * x))  # stable for any x
    return out


def _matrix(rows: Sequence[Features], names: Sequence[str]) -> np.ndarray:
    return np.asarray([[r[n] for n in names] for r in rows], dtype=np.float64)


def _floats(values: np.ndarray) -> tuple[float, ...]:
    return tuple(round(float(v), 9) for v in values)
