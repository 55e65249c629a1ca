"""The brief the decompose stage reads: the reviewer's replacement (a `brief` change), the request's, or one
inferred from the campaign's products and its brand's best past campaigns (workers.language.infer_brief).

The inference reads only the tenant's own data: the product assets' listings (screened by the input
guardrails at upload) and the brand's finished campaigns (their briefs screened at creation), with the
reviewers' decisions on their results as the measure of "best".
"""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.db.models import Asset, Campaign, CampaignStatus, Result, ResultDecision
from shared.db.session import session_scope
from workers.engine.context import StageContext, StageError
from workers.engine.review import current_change
from workers.language.infer_brief import PastCampaign, ProductFacts

STATE_KEY = "brief_inferred"  # campaign.state: the inferred brief, shown by the gateway (set "pending" at creation)
MAX_PAST_READ = 200  # the brand's newest finished campaigns considered


def brief_to_use(ctx: StageContext) -> tuple[str | None, str]:
    """(brief, source): the review round's replacement, else the request's; (None, "inferred") when the
    campaign has neither and the brief must be inferred."""
    change = current_change(ctx.campaign)
    if change is not None and change.brief:
        return change.brief, "review"
    if (ctx.campaign.brief or "").strip():
        return ctx.campaign.brief, "request"
    return None, "inferred"


def products(ctx: StageContext) -> list[ProductFacts]:
    """The campaign's named products' listings, in the request's order; a product deleted since fails."""
    ids = [uuid.UUID(str(i)) for i in ctx.campaign.product_asset_ids or []]
    with session_scope() as session:
        rows = session.scalars(select(Asset).where(Asset.tenant_id == ctx.tenant_id, Asset.id.in_(ids))).all()
        by_id = {row.id: _facts(row) for row in rows}
    missing = [str(i) for i in ids if i not in by_id]
    if not ids:  # the gateway refuses such a campaign (brief_or_product_required)
        raise StageError("brief_missing", "the campaign has neither a brief nor a product to infer one from")
    if missing:
        raise StageError("asset_missing", f"product asset {', '.join(missing)} no longer exists")
    return [by_id[i] for i in ids]


def _facts(asset: Asset) -> ProductFacts:
    attributes = {str(k): v for k, v in (asset.attributes or {}).items() if isinstance(v, str | int | float)}
    return ProductFacts(str(asset.id), asset.title or "", asset.description or "", tuple(asset.tags or ()), attributes)


def past_campaigns(ctx: StageContext) -> list[PastCampaign]:
    """The brand's finished campaigns (newest first, this one excluded) with their decompose output and the
    reviewers' latest decision on each of their results, over every review round."""
    campaign = ctx.campaign
    with session_scope() as session:
        rows = session.execute(
            select(
                Campaign.id,
                Campaign.brief,
                Campaign.state["decompose"].label("decompose"),
                Campaign.state["review"]["change"]["background_query"].label("background_query"),
                Campaign.copy,
            )
            .where(
                Campaign.tenant_id == campaign.tenant_id,
                Campaign.brand_id == campaign.brand_id,
                Campaign.id != campaign.id,
                Campaign.status.in_([CampaignStatus.COMPLETED, CampaignStatus.PARTIAL]),
            )
            .order_by(Campaign.created_at.desc())
            .limit(MAX_PAST_READ)
        ).all()
        tallies = _decisions(session, campaign.tenant_id, [r.id for r in rows])
    return [_past(r, tallies.get(r.id, Counter())) for r in rows if r.decompose]


def _decisions(session: Session, tenant_id: uuid.UUID, ids: list[uuid.UUID]) -> dict[uuid.UUID, Counter[str]]:
    if not ids:
        return {}
    stmt = (
        select(Result.campaign_id, Result.decision, func.count())
        .where(Result.tenant_id == tenant_id, Result.campaign_id.in_(ids))
        .group_by(Result.campaign_id, Result.decision)
    )
    out: dict[uuid.UUID, Counter[str]] = {}
    for campaign_id, decision, count in session.execute(stmt):
        out.setdefault(campaign_id, Counter())[str(decision.value) if decision else "undecided"] += int(count)
    return out


def _past(row: Any, decided: Counter[str]) -> PastCampaign:
    parts: dict[str, Any] = row.decompose or {}
    backgrounds, themes = list(parts.get("backgrounds") or []), list(parts.get("themes") or [])
    # A reviewer's background query replaced the scene the brief asked for: its results show that one.
    scene = row.background_query if isinstance(row.background_query, str) else None
    return PastCampaign(
        campaign_id=str(row.id),
        brief=str(parts.get("english") or parts.get("brief") or row.brief or ""),
        scene=scene or (str(backgrounds[0]) if backgrounds else None),
        theme=str(themes[0]) if themes else None,
        mood=parts.get("mood"),
        copy=row.copy,
        approved=decided[ResultDecision.APPROVED.value],
        rejected=decided[ResultDecision.REJECTED.value],
        results=sum(decided.values()),
    )


def record(inferred: dict[str, Any], campaign: Campaign) -> dict[str, Any]:
    """campaign.state["brief_inferred"]: what was inferred and from what (the calls are in llm_calls).
    Copy suggestions are shown only when the campaign has its own copy, never applied over it."""
    shown_only = campaign.copy is not None
    suggestions = {**inferred["copy_suggestions"], "shown_only": shown_only}
    keep = ("brief", "products", "scene", "theme", "mood", "sources", "backend", "model", "fallback_reason")
    return {
        "status": "inferred",
        **{k: inferred.get(k) for k in keep},
        "prompt_version": inferred.get("prompt_version"),
        "copy_suggestions": suggestions,
    }


def creative_copy(campaign: Campaign) -> dict[str, Any] | None:
    """The copy a creative carries: the campaign's own, else the copy suggested with an inferred brief
    (None: neither, no creative version)."""
    if campaign.copy:
        return dict(campaign.copy)
    inferred = (campaign.state or {}).get(STATE_KEY) or {}
    suggestions = inferred.get("copy_suggestions") or {}
    if inferred.get("status") != "inferred" or not suggestions.get("headline"):
        return None
    return {"headline": suggestions["headline"], "cta": suggestions["cta"], "legal": None}
