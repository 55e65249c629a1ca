"""retrieve (retrieval queue): the product and a background from the media library by hybrid search."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from shared.db.models import Asset, Campaign
from shared.db.session import session_scope
from shared.search import Filters, Space, search
from workers.engine.context import StageContext, StageError
from workers.jobs import library
from workers.pipeline.common import tenant_asset
from workers.pipeline.outputs import DecomposeOutput, Entity, Match, RetrieveOutput

REFERENCE_KPI = "ctr"  # past campaigns that match a theme rank higher the better they performed
RETRIEVE_TOP = 5  # matches kept per entity (visible in the campaign resource)
CATCH_UP_LIMIT = 256  # assets the retrieve stage embeds itself when their embed task has not run yet

EntityQuery = tuple[str, str, str | None]  # (text, kind, kpi boost)


def run(ctx: StageContext) -> dict[str, Any]:
    from workers.models import text_embedder

    campaign = ctx.campaign
    catch_up(campaign, text_embedder.model_id())
    entities = entity_queries(ctx.output(DecomposeOutput))
    spaces = query_spaces([t for t, _, _ in entities])
    with session_scope() as session:
        found = [
            Entity(text=e[0], kind=e[1], boost=e[2], matches=matches(session, campaign, e, sp))
            for e, sp in zip(entities, spaces, strict=True)
        ]
        output = pick(session, ctx, found, spaces[0][0].model if spaces else text_embedder.model_id())
    ctx.publish(output)
    return {
        "product_asset_ids": output.products(),
        "product_asset_id": output.product_asset_id,
        "background_asset_id": output.background_asset_id,
    }


def scope(campaign: Campaign, kind: str | None = None) -> Filters:
    return Filters(tenant_id=campaign.tenant_id, kind=kind, brand_id=campaign.brand_id, include_unbranded=True)


def catch_up(campaign: Campaign, model: str) -> None:
    """Embed the brand's newest uploads whose embed task is still queued behind bulk work."""
    brand_scope = or_(Asset.brand_id == campaign.brand_id, Asset.brand_id.is_(None))
    with session_scope() as session:
        ids = library.missing_asset_ids(session, model, campaign.tenant_id, brand_scope, limit=CATCH_UP_LIMIT)
    if ids:
        library.embed_asset_ids([str(i) for i in ids])


def entity_queries(parts: DecomposeOutput) -> list[EntityQuery]:
    """(text, kind, kpi boost) per decomposed entity; themes also look for past campaigns by KPI."""
    found: list[EntityQuery] = [(t, "product", None) for t in parts.products]
    found += [(t, "background", None) for t in parts.backgrounds + parts.themes]
    found += [(t, "reference", REFERENCE_KPI) for t in parts.themes]
    return found


def query_spaces(texts: list[str]) -> list[tuple[Space, Space | None]]:
    from workers.models import clip_embedder, text_embedder

    text_model = text_embedder.model_id()
    vectors = text_embedder.embed(texts)
    images: list[Space | None] = [None] * len(texts)
    if clip_embedder.enabled() and texts:
        model = clip_embedder.model_id()
        images = [Space(model, len(v), v, "image") for v in clip_embedder.embed_texts(texts)]
    return [(Space(text_model, len(v), v), image) for v, image in zip(vectors, images, strict=True)]


def matches(
    session: Session, campaign: Campaign, entity: EntityQuery, spaces: tuple[Space, Space | None]
) -> list[Match]:
    text_, kind, boost = entity
    hits = search(
        session, text_, scope(campaign, kind), text_space=spaces[0], image_space=spaces[1], k=RETRIEVE_TOP, boost=boost
    )
    titles = dict(session.execute(select(Asset.id, Asset.title).where(Asset.id.in_([h.asset_id for h in hits]))).all())
    return [
        Match(asset_id=str(h.asset_id), title=titles.get(h.asset_id, ""), score=h.score, parts=h.parts) for h in hits
    ]


def _best(found: list[Entity], kind: str, min_score: float) -> Match | None:
    candidates = [m for e in found if e.kind == kind for m in e.matches if m.score >= min_score]
    return max(candidates, key=lambda m: m.score, default=None)


def _references(found: list[Entity], min_score: float) -> list[Match]:
    """Past campaign images that match the themes, best (relevance + KPI) first, deduplicated."""
    seen: dict[str, Match] = {}
    for match in (m for e in found if e.kind == "reference" for m in e.matches if m.score >= min_score):
        if match.asset_id not in seen or match.score > seen[match.asset_id].score:
            seen[match.asset_id] = match
    return sorted(seen.values(), key=lambda m: -m.score)[:3]


def choose_products(found: list[Entity], named: list[Any], min_score: float) -> tuple[list[str], float | None]:
    """Every product the campaign names (each gets its own scenes), else the best match of the brief's products."""
    if named:
        return list(dict.fromkeys(map(str, named))), None  # the same id twice is one product
    best = _best(found, "product", min_score)
    if best is None:
        raise StageError("no_product", "no product asset matches the brief; upload one or name it in product_asset_ids")
    return [best.asset_id], best.score


def pick(session: Session, ctx: StageContext, found: list[Entity], model: str) -> RetrieveOutput:
    named, min_score = ctx.campaign.product_asset_ids or [], ctx.settings.retrieval_min_score
    product_ids, product_score = choose_products(found, named, min_score)
    products = [tenant_asset(session, ctx.tenant_id, product_id) for product_id in product_ids]
    product_asset = products[0]
    background = _best(found, "background", min_score)
    bg_asset = tenant_asset(session, ctx.tenant_id, background.asset_id) if background else None
    return RetrieveOutput(
        product_asset_id=str(product_asset.id),
        product_title=product_asset.title,
        product_source="named" if named else "retrieved",
        product_score=product_score,
        background_asset_id=str(bg_asset.id) if bg_asset else None,
        background_caption=", ".join(p for p in (bg_asset.title, bg_asset.description) if p) if bg_asset else None,
        background_score=background.score if background else None,
        background_reason=None if bg_asset else "nothing relevant above min_score: studio backdrop in brand colours",
        references=_references(found, min_score),
        reference_kpi=REFERENCE_KPI,
        entities=found,
        model=model,
        min_score=min_score,
        product_asset_ids=[str(p.id) for p in products],
    )
