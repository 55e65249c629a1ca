"""What the review page shows, read from the database into plain typed records for the templates.

One query per table (results with their candidates, the left-out candidates, feedback, decisions),
whatever the number of results or review rounds.
"""

from __future__ import annotations

import re
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import presets
from shared.db.models import (
    TERMINAL_STATUSES,
    Campaign,
    Candidate,
    Feedback,
    FeedbackStatus,
    Result,
    ResultDecisionRecord,
)
from shared.provenance import delivered_creative_key
from shared.review import REASON_LABELS, SCALE_STEP, Change, Reason
from shared.storage import Storage

LEFT_OUT_LIMIT = 60  # the toggle lists at most this many candidates (the API has them all)


@dataclass(frozen=True)
class Verdict:
    check: str
    status: str  # pass | fail | unchecked
    value: str
    reason: str


@dataclass(frozen=True)
class ResultCard:
    id: uuid.UUID
    rank: int
    layout_key: str
    image_url: str | None
    fully_checked: bool
    needs_review: bool
    fallback: bool
    review_reasons: list[str]
    verdicts: list[Verdict]
    counts: dict[str, int]  # pass / fail / unchecked
    aesthetic: float | None
    aesthetic_parts: list[tuple[str, float]]
    why: list[str]  # why it was chosen, in words
    decision: str | None
    decided_by: str | None
    decided_at: datetime | None
    size: str = ""  # the ad size it was made for ("1080×1920 · story"): results are grouped per size
    creative_url: str | None = None  # the creative version (brand-kit overlay), with campaign copy
    creative_note: str = ""  # its OCR read-back and contrast, in words


@dataclass(frozen=True)
class LeftOut:
    layout_key: str
    round: int
    image_url: str | None
    passed: bool | None
    reason: str


@dataclass(frozen=True)
class DecisionLine:
    rank: int | None
    decision: str
    reasons: list[str]
    comment: str
    reviewer: str
    at: datetime


@dataclass(frozen=True)
class FeedbackView:
    id: uuid.UUID
    review_round: int
    text: str
    reasons: list[str]
    status: str
    change: list[str]  # the routed change, one line per field it sets
    not_understood: list[str]
    notes: list[str]  # what each routed sentence or reason became
    entry_stage: str | None
    error: str | None
    reviewer: str


@dataclass(frozen=True)
class EarlierRound:
    review_round: int
    feedback: FeedbackView | None  # the feedback that started it (None for round 0)
    results: list[tuple[int, str | None, str | None]]  # rank, image url, decision
    decisions: list[DecisionLine]


@dataclass
class ReviewPage:
    campaign: Campaign
    reviewer: str
    results: list[ResultCard]
    left_out: list[LeftOut]
    left_out_total: int
    current_feedback: FeedbackView | None  # the feedback that started the current review round
    pending_feedback: FeedbackView | None  # feedback for the next round (routing, not understood, failed)
    earlier: list[EarlierRound]
    decisions: list[DecisionLine]  # the current review round's history
    reasons: list[tuple[str, str]] = field(default_factory=lambda: [(r.value, REASON_LABELS[r]) for r in Reason])

    @property
    def terminal(self) -> bool:
        return self.campaign.status in TERMINAL_STATUSES

    @property
    def size_groups(self) -> list[tuple[str, list[ResultCard]]]:
        """The results per ad size (each size is its own deliverable), sizes in first-ranked order."""
        groups: dict[str, list[ResultCard]] = {}
        for card in self.results:
            groups.setdefault(card.size, []).append(card)
        return list(groups.items())

    @property
    def can_review(self) -> bool:
        """Decisions and feedback are open on a finished campaign with results and no feedback in flight."""
        return self.terminal and bool(self.results) and self.pending_feedback_routing is False

    @property
    def pending_feedback_routing(self) -> bool:
        return self.pending_feedback is not None and self.pending_feedback.status == FeedbackStatus.ROUTING

    def image_origins(self) -> set[str]:
        urls = [r.image_url for r in self.results] + [c.image_url for c in self.left_out]
        urls += [r.creative_url for r in self.results]
        urls += [u for e in self.earlier for _, u, _ in e.results]
        return {f"{p.scheme}://{p.netloc}" for p in (urlsplit(u) for u in urls if u) if p.scheme in ("http", "https")}


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and not isinstance(value, bool) else ""


def _verdicts(qc: dict[str, Any]) -> list[Verdict]:
    rows = [*(qc.get("verdicts") or []), *((qc.get("guidelines") or {}).get("verdicts") or [])]
    out = []
    for v in rows:
        status = str(v.get("status") or ("pass" if v.get("passed") else "fail"))
        limit = f" (limit {v['threshold']})" if v.get("threshold") is not None else ""
        value = _num(v.get("value"))
        out.append(
            Verdict(str(v.get("check") or v.get("guideline") or "?"), status, value + limit, str(v.get("reason") or ""))
        )
    return out


def _why(result: Result, cand: Candidate) -> list[str]:
    """Why rank chose this candidate: its rank, policy verdict, cluster and score, in words."""
    qc = cand.qc or {}
    policy, cluster = qc.get("policy") or {}, qc.get("cluster") or {}
    lines = [f"Rank {result.rank} of the round's {policy.get('name', 'QC')} ranking"]
    if policy:
        relaxed = f", relaxed {', '.join(policy['relaxed'])}" if policy.get("relaxed") else ""
        verdict = "passed" if policy.get("passed") else "did not pass"
        weighted = _num(policy.get("weighted_share"), 2)
        lines.append(f"{verdict} the {policy.get('name')} policy (weighted {weighted}){relaxed}")
    if cluster.get("size", 1) > 1:
        lines.append(f"best of near-duplicate cluster {cluster.get('id')} ({cluster.get('size')} similar images)")
    else:
        lines.append("no near-duplicate among the candidates")
    if cand.aesthetic is not None:
        lines.append(f"aesthetic score {cand.aesthetic:.2f} / 10")
    return lines


def _size_title(sizes: list[Any], placement: dict[str, Any] | None) -> str:
    size = presets.result_size(sizes, placement)
    if size is None:
        return ""
    named = size.get("preset") or size.get("aspect")
    return f"{size['width']}×{size['height']}" + (f" · {named}" if named else "")


def _card(result: Result, cand: Candidate, storage: Storage, sizes: list[Any]) -> ResultCard:
    verdicts = _verdicts(cand.qc or {})
    counts = {s: sum(v.status == s for v in verdicts) for s in ("pass", "fail", "unchecked")}
    review = result.review or {}
    parts = ((cand.qc or {}).get("aesthetic") or {}).get("parts") or {}
    return ResultCard(
        id=result.id,
        rank=result.rank,
        layout_key=cand.layout_key,
        image_url=storage.url(cand.image_key) if cand.image_key else None,
        fully_checked=result.fully_checked,
        needs_review=result.needs_review,
        fallback=bool(review.get("fallback")),
        review_reasons=[f"{r.get('kind')} {r.get('check')}: {r.get('reason')}" for r in review.get("reasons") or []],
        verdicts=verdicts,
        counts=counts,
        aesthetic=cand.aesthetic,
        aesthetic_parts=[(k, float(v)) for k, v in parts.items() if isinstance(v, int | float)],
        why=_why(result, cand),
        decision=result.decision.value if result.decision else None,
        decided_by=result.decided_by,
        decided_at=result.decided_at,
        size=_size_title(sizes, cand.placement),
        creative_url=storage.url(creative) if (creative := delivered_creative_key(cand.integrity)) else None,
        creative_note=_creative_note(cand.qc or {}),
    )


def _creative_note(qc: dict[str, Any]) -> str:
    """The creative in words, e.g. "OCR passed · contrast ≥ 5.2" ("" without one)."""
    found = qc.get("creative") or {}
    texts = (found.get("layout") or {}).get("texts") or []
    if not texts:
        return ""
    ocr = (found.get("ocr") or {}).get("status") or "not read yet"
    return f"OCR {ocr} · contrast ≥ {min(float(t['contrast']) for t in texts):.1f}"


def _change_line(name: str, value: Any) -> str:
    """One field of a routed change in a marketer's words (the API has the raw change)."""
    if name == "scale_steps":
        return f"product {'larger' if value > 0 else 'smaller'}: ×{SCALE_STEP**value:.2f} ({value:+d} step)"
    if name == "qc":
        return "stricter quality checks" if value > 0 else "looser quality checks"
    if name == "rotation":
        return "product upright only" if value is False else "rotation allowed"
    if name == "sizes":
        return "ad sizes: " + ", ".join(f"{s['width']}×{s['height']}" for s in value)
    shown = ", ".join(map(str, value)) if isinstance(value, list) else value
    return f"{name.replace('_', ' ')}: {shown}"


def _change_lines(change: dict[str, Any]) -> list[str]:
    if not change:
        return []
    parsed, defaults = Change.model_validate(change), Change()
    return [
        _change_line(name, value)
        for name, value in parsed.model_dump(mode="json").items()
        if value != getattr(defaults, name) and value not in (None, [])
    ]


_LINK_REVIEWER = re.compile(r"^link:[0-9a-f-]{36} \((?P<name>.*)\)$")


def who(reviewer: str | None) -> str:
    """A decider as a reviewer reads it: the name a review link was made for, else the API identity."""
    found = _LINK_REVIEWER.match(reviewer or "")
    return f"{found['name']} (review link)" if found else (reviewer or "")


def _label(reason: Any) -> str:
    """A stored reason's chip label (the raw value for one this version does not know)."""
    known = {r.value: label for r, label in REASON_LABELS.items()}
    return known.get(str(reason), str(reason))


def _feedback_view(row: Feedback) -> FeedbackView:
    return FeedbackView(
        id=row.id,
        review_round=row.review_round,
        text=row.text,
        reasons=[_label(r) for r in row.reasons or []],
        status=row.status.value,
        change=_change_lines(row.change or {}),
        not_understood=[str(s) for s in row.not_understood or []],
        notes=[str(s) for s in row.notes or []],
        entry_stage=row.entry_stage,
        error=row.error,
        reviewer=row.reviewer,
    )


def _decision_line(row: ResultDecisionRecord, ranks: dict[uuid.UUID, int]) -> DecisionLine:
    labels = [_label(r) for r in row.reasons or []]
    return DecisionLine(ranks.get(row.result_id), row.decision.value, labels, row.comment, row.reviewer, row.created_at)


def _left_out(session: Session, campaign: Campaign, storage: Storage) -> tuple[list[LeftOut], int]:
    """The current review round's pool minus its results: every candidate rank did not choose, and why."""
    pool_from = int((campaign.loop or {}).get("pool_from_round", 0))
    rows = session.scalars(
        select(Candidate)
        .where(Candidate.campaign_id == campaign.id, Candidate.round >= pool_from, Candidate.rank.is_(None))
        .order_by(Candidate.passed.desc().nulls_last(), Candidate.aesthetic.desc().nulls_last(), Candidate.layout_key)
    ).all()
    shown = [
        LeftOut(
            layout_key=c.layout_key,
            round=c.round,
            image_url=storage.url(c.image_key) if c.image_key else None,
            passed=c.passed,
            reason=c.excluded_reason or ("passed, but ranked below the top results" if c.passed else "not checked"),
        )
        for c in rows[:LEFT_OUT_LIMIT]
    ]
    return shown, len(rows)


def load(session: Session, campaign: Campaign, reviewer: str, storage: Storage) -> ReviewPage:
    pairs = session.execute(
        select(Result, Candidate)
        .join(Candidate, Candidate.id == Result.candidate_id)
        .where(Result.campaign_id == campaign.id)
        .order_by(Result.review_round, Result.rank)
    ).all()
    ranks = {r.id: r.rank for r, _ in pairs}
    feedback = {
        f.review_round: _feedback_view(f)
        for f in session.scalars(select(Feedback).where(Feedback.campaign_id == campaign.id))
    }
    history: dict[int, list[DecisionLine]] = defaultdict(list)
    records = session.scalars(
        select(ResultDecisionRecord)
        .where(ResultDecisionRecord.campaign_id == campaign.id)
        .order_by(ResultDecisionRecord.created_at.desc())
    )
    for rec in records:
        history[rec.review_round].append(_decision_line(rec, ranks))
    current = campaign.review_round
    left_out, total = _left_out(session, campaign, storage)
    earlier = [
        EarlierRound(
            review_round=n,
            feedback=feedback.get(n),
            results=[
                (r.rank, storage.url(c.image_key) if c.image_key else None, r.decision.value if r.decision else None)
                for r, c in pairs
                if r.review_round == n
            ],
            decisions=history.get(n, []),
        )
        for n in range(current - 1, -1, -1)
    ]
    return ReviewPage(
        campaign=campaign,
        reviewer=reviewer,
        results=[_card(r, c, storage, list(campaign.sizes or [])) for r, c in pairs if r.review_round == current],
        left_out=left_out,
        left_out_total=total,
        current_feedback=feedback.get(current) if current else None,
        pending_feedback=feedback.get(current + 1),
        earlier=earlier,
        decisions=history.get(current, []),
    )
