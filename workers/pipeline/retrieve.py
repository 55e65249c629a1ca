"""retrieve (retrieval queue): the product and a background from the media library by hybrid search."""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from shared.db.models import Asset, Campaign
from shared.db.session import session_scope
from shared.review import Change
from shared.search import Filters, Space, search
from workers.engine.context import StageContext, StageError
from workers.engine.review import current_change
from workers.jobs import library
from workers.pipeline.common import canvases, tenant_asset
from workers.pipeline.outputs import DecomposeOutput, Entity, Match, RetrieveOutput

# A background is "about as relevant" as the best one within this much of its score: among those, each canvas
# gets the one whose aspect ratio is closest to its own (a 9:16 story from a portrait photo, not a crop of a
# landscape's middle fifth).
BACKGROUND_SCORE_MARGIN = 0.05
REFERENCE_KPI = "ctr"  # past campaigns that match a theme rank higher the better they performed
RETRIEVE_TOP = 5  # matches kept per entity (visible in the campaign resource)
CATCH_UP_LIMIT = 256  # assets the retrieve stage embeds itself when their embed task has not run yet

EntityQuery = tuple[str, str, str | None]  # (text, kind, kpi boost)


def run(ctx: StageContext) -> dict[str, Any]:
    from workers.models import text_embedder

    campaign = ctx.campaign
    change = current_change(campaign)
    catch_up(campaign, text_embedder.model_id())
    entities = reviewed_queries(entity_queries(ctx.output(DecomposeOutput)), change)
    spaces = query_spaces([t for t, _, _ in entities])
    excluded = {str(i) for i in change.exclude_background_ids} if change else set()
    with session_scope() as session:
        found = [
            Entity(text=e[0], kind=e[1], boost=e[2], matches=matches(session, campaign, e, sp, excluded))
            for e, sp in zip(entities, spaces, strict=True)
        ]
        output = pick(session, ctx, found, spaces[0][0].model if spaces else text_embedder.model_id())
        if change is not None:
            output = reviewed_background(session, ctx, same_products(output, ctx), change)
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


def reviewed_queries(entities: list[EntityQuery], change: Change | None) -> list[EntityQuery]:
    """A reviewer's background query replaces the brief's background queries (themes still find references)."""
    if change is None or not change.background_query:
        return entities
    others = [e for e in entities if e[1] != "background"]
    return [*others, (change.background_query, "background", None)]


def matches(
    session: Session,
    campaign: Campaign,
    entity: EntityQuery,
    spaces: tuple[Space, Space | None],
    excluded: Collection[str] = (),
) -> list[Match]:
    """The entity's top matches; backgrounds a reviewer turned down are never among them."""
    text_, kind, boost = entity
    skip = set(excluded) if kind == "background" else set()
    k = RETRIEVE_TOP + len(skip)  # enough left after the exclusions
    hits = search(session, text_, scope(campaign, kind), text_space=spaces[0], image_space=spaces[1], k=k, boost=boost)
    hits = [h for h in hits if str(h.asset_id) not in skip][:RETRIEVE_TOP]
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
    fitted = fit_backgrounds(session, ctx, found, background) if background else {}
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
        backgrounds_by_size=fitted,
    )


def fit_backgrounds(session: Session, ctx: StageContext, found: list[Entity], best: Match) -> dict[str, str]:
    """Per canvas that another background suits better than the best one: {"WxH": asset id}."""
    close = {m.asset_id: m.score for e in found if e.kind == "background" for m in e.matches}
    close = {a: s for a, s in close.items() if s >= best.score - BACKGROUND_SCORE_MARGIN}
    if len(close) < 2:
        return {}
    rows = session.execute(
        select(Asset.id, Asset.width, Asset.height).where(Asset.tenant_id == ctx.tenant_id, Asset.id.in_(list(close)))
    ).all()
    aspects = {str(i): w / h for i, w, h in rows if w and h}
    fitted = {}
    for width, height in canvases(ctx):
        choice = choose_background(aspects, close, width / height)
        if choice is not None and choice != best.asset_id:
            fitted[f"{width}x{height}"] = choice
    return fitted


def choose_background(aspects: dict[str, float], scores: dict[str, float], canvas_aspect: float) -> str | None:
    """The asset whose aspect is closest to the canvas's (in log ratio: 2:1 is as far from 1:1 as 1:2), the higher
    score on a tie; cover-crop keeps the most of it."""
    if not aspects:
        return None
    return min(aspects, key=lambda a: (round(abs(math.log(aspects[a] / canvas_aspect)), 3), -scores[a]))


def same_products(output: RetrieveOutput, ctx: StageContext) -> RetrieveOutput:
    """In a review round the products stay those the reviewer saw: their cut-outs are carried over
    (segment is reused), whatever the library now ranks first for the brief."""
    previous = (ctx.campaign.state or {}).get(RetrieveOutput.stage)
    if previous is None:
        return output
    shown = RetrieveOutput.model_validate(previous)
    kept = ("product_asset_id", "product_title", "product_source", "product_score", "product_asset_ids")
    return output.model_copy(update={name: getattr(shown, name) for name in kept})


def reviewed_background(session: Session, ctx: StageContext, output: RetrieveOutput, change: Change) -> RetrieveOutput:
    """The reviewer's explicit background asset (the tenant's own background photo) replaces the search's pick;
    the output records what the change made retrieval do."""
    record: dict[str, Any] = {
        "background_query": change.background_query,
        "excluded_background_ids": [str(i) for i in change.exclude_background_ids],
        "background_asset_id": None,
    }
    if change.background_asset_id is None:
        return output.model_copy(update={"review": record})
    asset = session.scalars(
        select(Asset).where(Asset.tenant_id == ctx.tenant_id, Asset.id == change.background_asset_id)
    ).first()
    if asset is None:
        raise StageError("background_not_found", f"background asset {change.background_asset_id} does not exist")
    if asset.kind != "background":
        raise StageError("not_a_background", f"asset {asset.id} is a {asset.kind} asset, not a background")
    if asset.brand_id not in (None, ctx.campaign.brand_id):
        raise StageError("background_other_brand", f"background asset {asset.id} belongs to another brand")
    record["background_asset_id"] = str(asset.id)
    return output.model_copy(
        update={
            "background_asset_id": str(asset.id),
            "background_caption": ", ".join(p for p in (asset.title, asset.description) if p),
            "background_score": None,
            "background_reason": "chosen by the reviewer",
            "review": record,
        }
    )
