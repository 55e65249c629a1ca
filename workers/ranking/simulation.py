"""A simulated reviewer with a hidden preference, to measure how fast the brand ranker learns it.

Candidates are real plan layouts (workers.imaging.composition.plan: canvases x 3x3 grid x rotations, at two
product scales per campaign, as a retry or a "make it bigger" review round adds them; nothing is rendered)
with the values qc and rank would store on them: the aesthetic score's parts (thirds and grounding from
the layout's geometry, the image statistics from a per-campaign scene plus per-candidate variation) and the
QC metrics of composited products. The reviewer's hidden value prefers the product large and on the left,
and a good aesthetic score; it approves a shown result when the value, plus logistic noise, clears the
campaign's bar (the 75th percentile of its pool). The loop is the product's: each campaign shows its top 3
under the brand's current ranker (aesthetic only below learn.MIN_PAIRS pairs), the reviewer decides, the
brand refits. Figures: pairwise agreement with the reviewer's noise-free value on held-out campaigns, and
the share of their top 3 the reviewer would approve, after N decisions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.db.models import ResultDecision
from workers.checks import aesthetic
from workers.imaging import composition
from workers.ranking import learn, pairwise
from workers.ranking.features import features

CANVASES = ((1024, 1024), (1200, 628), (1080, 1350), (1080, 1920))
SCALE_SHARES = (0.30, 0.38, 0.45, 0.55)
TOP_K = 3
BUDGETS = (0, 5, 10, 20, 40, 80)
# The hidden preference: value = sum(weight * feature) (product_area as its log: "twice as large" counts
# the same at any size)
HIDDEN = {"log_product_area": 2.0, "centre_x": -3.0, "aesthetic": 4.0}
NOISE = 0.5  # the reviewer's logistic noise, in standard deviations of the value within a campaign
BAR = 0.75  # approve above this quantile of the campaign pool's value


@dataclass
class SimCandidate:
    """A candidate as rank sees it (features.CandidateLike), with its features computed once."""

    qc: dict[str, Any]
    placement: dict[str, Any]
    aesthetic: float | None
    feats: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Point:
    decisions: int
    pairs: int
    learned: bool  # the ranker rank would use (else aesthetic only: fewer than MIN_PAIRS pairs)
    agreement: float  # pairwise agreement with the reviewer on held-out campaigns
    approved_top: float  # share of the held-out top 3 the reviewer would approve (noise-free)


def campaign_pool(rng: np.random.Generator) -> list[SimCandidate]:
    """One campaign's candidates: one canvas, one product, two scales, every grid cell and rotation."""
    canvas = CANVASES[int(rng.integers(len(CANVASES)))]
    product = (int(rng.integers(200, 600)), int(rng.integers(250, 800)))
    scene = {k: float(rng.uniform(lo, hi)) for k, (lo, hi) in SCENE.items()}
    scene["fill"] = float(rng.uniform(0.55, 0.8))  # the product's share of its own box (its shape)
    shares = rng.choice(SCALE_SHARES, size=2, replace=False)
    plans = [composition.plan([canvas], product, scale_share=float(s)).layouts for s in sorted(shares)]
    pool = [candidate(layout, scene, rng) for layouts in plans for layout in layouts]
    for cand in pool:
        cand.feats = features(cand)
    return pool


SCENE = {  # per campaign (its background and product): (low, high)
    "sharpness": (0.5, 0.95),
    "exposure": (0.55, 0.95),
    "colourfulness": (0.2, 0.8),
    "contrast": (0.2, 0.8),
    "palette": (0.1, 0.9),
    "luminance": (0.35, 0.65),
    "rms": (0.12, 0.3),
}


def candidate(layout: composition.Layout, scene: dict[str, float], rng: np.random.Generator) -> SimCandidate:
    """The values qc and the classical aesthetic scorer would store for ``layout`` in ``scene``."""
    record = layout.record()
    cw, ch = layout.canvas_w, layout.canvas_h
    cx, cy = (layout.x + layout.width / 2) / cw, (layout.y + layout.height / 2) / ch
    rotated = layout.rotation != 0
    parts = {
        # an upscaled or resampled (rotated) product is softer
        "sharpness": scene["sharpness"] / math.sqrt(max(1.0, layout.scale)) * (0.97 if rotated else 1.0),
        "exposure": scene["exposure"] + rng.normal(0, 0.02),
        "colourfulness": scene["colourfulness"] + rng.normal(0, 0.02),
        "contrast": scene["contrast"] + rng.normal(0, 0.12),  # the backdrop under the product varies
        "thirds": 1 - min(math.hypot(cx - px, cy - py) for px in (1 / 3, 2 / 3) for py in (1 / 3, 2 / 3)) / 0.4714,
        "grounding": (layout.ground_y / ch - aesthetic.GROUND_FROM) / aesthetic.GROUND_SPAN,
    }
    parts = {k: round(float(np.clip(v, 0.0, 1.0)), 4) for k, v in parts.items()}
    score = round(10 * sum(aesthetic.WEIGHTS[k] * v for k, v in parts.items()), 4)
    area = scene["fill"] * (0.85 if rotated else 1.0) * layout.width * layout.height / (cw * ch)
    metrics = {
        "exact_fraction": 1.0,  # composited: the product's pixels are copied
        "msssim_edges": round(0.995 - (0.01 if rotated else 0.0) + rng.normal(0, 0.002), 6),
        "delta_e": round(abs(rng.normal(0, 0.2)), 4),
        "dino_cosine": None,  # DINOv2 not configured
    }
    verdicts = [
        {"check": "product_area", "value": round(area, 6)},
        {"check": "palette_adherence", "value": round(scene["palette"] + (1 - area) * rng.normal(0, 0.05), 6)},
        {"check": "exposure", "value": round(scene["luminance"] + rng.normal(0, 0.02), 6)},
        {"check": "contrast", "value": round(scene["rms"] + rng.normal(0, 0.01), 6)},
    ]
    qc = {"metrics": metrics, "verdicts": verdicts, "aesthetic": {"score": score, "parts": parts}}
    return SimCandidate(qc, record, score)


def hidden_value(cand: SimCandidate) -> float:
    """What the simulated reviewer really wants (the learner never sees it)."""
    f = cand.feats
    return (
        HIDDEN["log_product_area"] * math.log(f["product_area"])
        + HIDDEN["centre_x"] * f["centre_x"]
        + HIDDEN["aesthetic"] * f["aesthetic"]
    )


Ranker = Callable[[SimCandidate], float]


def ranker(weights: pairwise.Weights | None) -> Ranker:
    """How rank orders passing candidates: the learned utility, or the aesthetic score without weights."""
    if weights is None:
        return lambda c: float(c.aesthetic or 0.0)
    return lambda c: pairwise.utility(weights, c.feats)


def top(pool: Sequence[SimCandidate], rank: Ranker, k: int = TOP_K) -> list[SimCandidate]:
    return sorted(pool, key=rank, reverse=True)[:k]


def bar(pool: Sequence[SimCandidate]) -> tuple[float, float]:
    """The campaign's approval bar and the spread of its values (the noise's unit)."""
    values = np.asarray([hidden_value(c) for c in pool])
    return float(np.quantile(values, BAR)), float(values.std())


def decide(cand: SimCandidate, pool: Sequence[SimCandidate], rng: np.random.Generator | None) -> bool:
    """Approve? With ``rng``, a noisy reviewer; without, the reviewer's noise-free judgement."""
    threshold, spread = bar(pool)
    noise = 0.0 if rng is None else float(rng.logistic(0.0, NOISE * spread))
    return hidden_value(cand) + noise > threshold


def agreement(pools: Sequence[Sequence[SimCandidate]], rank: Ranker) -> float:
    """Share of within-campaign pairs the ranking orders as the reviewer's value does (ties count half)."""
    agree, total = 0.0, 0
    for pool in pools:
        truth = np.asarray([hidden_value(c) for c in pool])
        guess = np.asarray([rank(c) for c in pool])
        upper = np.triu_indices(len(pool), k=1)
        dt = np.sign(truth[:, None] - truth[None, :])[upper]
        dg = np.sign(guess[:, None] - guess[None, :])[upper]
        keep = dt != 0
        agree += float((dt[keep] == dg[keep]).sum() + 0.5 * (dg[keep] == 0).sum())
        total += int(keep.sum())
    return agree / total


def approved_top(pools: Sequence[Sequence[SimCandidate]], rank: Ranker) -> float:
    shown = [(c, pool) for pool in pools for c in top(pool, rank)]
    return sum(decide(c, pool, None) for c, pool in shown) / len(shown)


def curve(seed: int, budgets: Sequence[int] = BUDGETS, held_out: int = 20) -> list[Point]:
    """The learning curve of one simulated brand: a Point after each budget of decisions."""
    rng = np.random.default_rng(seed)
    held = [campaign_pool(rng) for _ in range(held_out)]
    shown: list[learn.Shown] = []
    points: list[Point] = []
    weights: pairwise.Weights | None = None
    if 0 in budgets:
        points.append(measure(shown, held))
    campaign = 0
    while len(shown) < max(budgets):
        pool = campaign_pool(rng)
        for cand in top(pool, ranker(weights))[: max(budgets) - len(shown)]:  # shown under the ranker of the moment
            approved = decide(cand, pool, rng)
            decision = ResultDecision.APPROVED if approved else ResultDecision.REJECTED
            shown.append(learn.Shown(str(campaign), cand.feats, decision, superseded=False))
            if len(shown) in budgets:
                points.append(measure(shown, held))
        campaign += 1
        weights = usable(shown)  # the brand refits after every decision; rank reads it for the next campaign
    return points


def usable(shown: Sequence[learn.Shown]) -> pairwise.Weights | None:
    pairs = learn.preference_pairs(shown)
    return pairwise.fit(pairs) if len(pairs) >= learn.MIN_PAIRS else None


def measure(shown: Sequence[learn.Shown], held: Sequence[Sequence[SimCandidate]]) -> Point:
    pairs = learn.preference_pairs(shown)
    weights = usable(shown)
    rank = ranker(weights)
    return Point(len(shown), len(pairs), weights is not None, agreement(held, rank), approved_top(held, rank))
