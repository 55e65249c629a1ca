"""Refit a brand's ranking weights from its reviewers' decisions (task onbrand.learn_ranking).

Preference pairs, within one campaign (its results of every review round; a campaign is one product,
one brief, one set of ad sizes, so its results are comparable; results of different campaigns are not):

* approved > rejected: the reviewer said so, result by result (any review rounds of the campaign: a result
  approved after feedback is preferred to the one rejected before it);
* approved > not picked: a result left undecided in a review round that the reviewer ended with feedback
  (the next review round exists) was seen and passed over.

Not used: passing candidates that were never results. The review page shows them only behind a toggle and
the reviewer decides on results only, so nothing says they were looked at and found worse; counting them
as losers would teach the ranker its own past order. Undecided results of the current review round are
not used either: the review may simply not be finished.

The fit is workers.ranking.pairwise (the aesthetic score as the prior). rank uses the weights once they rest
on MIN_PAIRS pairs: 6 pairs are two to three reviewed campaigns; tests/bench/test_bench_ranking.py measures
that the learned ranking agrees with the simulated reviewer better than the aesthetic score from there on.

refit is idempotent: the same decisions give the same weights, and then the version is not bumped.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import Brand, BrandRanker, Campaign, Candidate, Result, ResultDecision
from shared.db.session import session_scope
from workers.ranking import pairwise
from workers.ranking.features import features

MIN_PAIRS = 6


@dataclass(frozen=True)
class Shown:
    """One result a reviewer was shown: its campaign, features, latest decision, and whether the reviewer
    moved on to a later review round of the campaign."""

    campaign: str
    features: dict[str, float]
    decision: ResultDecision | None
    superseded: bool


def preference_pairs(shown: Sequence[Shown]) -> list[pairwise.Pair]:
    """(preferred, other) feature pairs from the results shown (see the module docstring)."""
    by_campaign: dict[str, list[Shown]] = {}
    for item in shown:
        by_campaign.setdefault(item.campaign, []).append(item)
    pairs: list[pairwise.Pair] = []
    for items in by_campaign.values():
        approved = [s for s in items if s.decision is ResultDecision.APPROVED]
        losers = [s for s in items if s.decision is ResultDecision.REJECTED or (s.decision is None and s.superseded)]
        pairs += [(a.features, b.features) for a in approved for b in losers]
    return pairs


def refit(brand_id: str) -> int:
    """Fit the brand's weights on every decision so far and store them; the ranker's version (0: no brand)."""
    with session_scope() as session:
        # The brand row's lock serialises refits of one brand: the last one to commit saw every decision.
        brand = session.get(Brand, uuid.UUID(brand_id), with_for_update=True)
        if brand is None:
            return 0  # deleted since the decision: nothing left to rank
        shown = gather(session, brand)
        pairs = preference_pairs(shown)
        weights = pairwise.fit(pairs).to_json()
        decisions = sum(s.decision is not None for s in shown)
        return store(session, brand, weights, len(pairs), decisions)


def gather(session: Session, brand: Brand) -> list[Shown]:
    """Every result of the brand's campaigns that have at least one decision, in a stable order."""
    decided = select(Result.campaign_id).where(Result.tenant_id == brand.tenant_id, Result.decision.is_not(None))
    query = (
        select(Result, Candidate, Campaign.review_round)
        .join(Candidate, Candidate.id == Result.candidate_id)
        .join(Campaign, Campaign.id == Result.campaign_id)
        .where(
            Campaign.tenant_id == brand.tenant_id,
            Campaign.brand_id == brand.id,
            Result.campaign_id.in_(decided),
        )
        .order_by(Result.campaign_id, Result.review_round, Result.rank)
    )
    return [
        Shown(str(result.campaign_id), features(cand), result.decision, result.review_round < current)
        for result, cand, current in session.execute(query).all()
    ]


def store(session: Session, brand: Brand, weights: dict[str, object], pairs: int, decisions: int) -> int:
    """Write the brand's ranker: version + 1, unless these are the stored weights already (a redelivery)."""
    row = session.get(BrandRanker, brand.id)
    if row is not None and (row.weights, row.pairs, row.decisions) == (weights, pairs, decisions):
        return row.version
    if row is None:
        row = BrandRanker(brand_id=brand.id, tenant_id=brand.tenant_id, version=0)
        session.add(row)
    row.version += 1
    row.weights, row.pairs, row.decisions = dict(weights), pairs, decisions
    row.updated_at = datetime.now(UTC)
    session.flush()
    return row.version


@dataclass(frozen=True)
class Ranking:
    """The brand ranker rank uses: its weights, and what the campaign records of it."""

    weights: pairwise.Weights
    version: int
    pairs: int
    decisions: int

    def record(self) -> dict[str, int]:
        return {"version": self.version, "pairs": self.pairs, "decisions": self.decisions}


def usable(row: BrandRanker | None) -> Ranking | None:
    """The ranker rank should use for the brand: None (aesthetic only) below MIN_PAIRS pairs."""
    if row is None or row.pairs < MIN_PAIRS or not row.weights:
        return None
    return Ranking(pairwise.Weights.from_json(row.weights), row.version, row.pairs, row.decisions)
