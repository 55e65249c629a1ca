"""The pipeline's stage functions (plain functions over a StageContext; tests call them directly).

Each one reads what it needs, computes with no transaction open, and leaves its durable
output in ctx.state_patch / ctx.rows / ctx.finalize for the runner to commit atomically.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, TypeVar

from PIL import Image
from sqlalchemy import delete, or_, select
from sqlalchemy.orm import Session

from shared import metrics, webhooks
from shared.db.models import Asset, Brand, Campaign, Candidate, LlmCall, Result
from shared.db.session import session_scope
from shared.model_specs import ModelSpec, generate_spec, segment_spec
from shared.search import Filters, Space, search
from shared.storage import campaign_key, get_storage
from workers.engine.runner import StageContext, StageError, StageFn, Task, campaign_finished, now, webhook_tasks
from workers.jobs import library

T = TypeVar("T")

# --- helpers --------------------------------------------------------------------------------


def load_image(key: str) -> Image.Image:
    image = Image.open(io.BytesIO(get_storage().get(key)))
    image.load()
    return image


def save_png(key: str, image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=1)  # speed over size: candidates are many
    get_storage().put(key, buf.getvalue(), "image/png")
    return key


def candidate_id(campaign_id: uuid.UUID, rnd: int, layout_key: str) -> uuid.UUID:
    # Deterministic: a retried generate task upserts the same row instead of adding one.
    return uuid.uuid5(campaign_id, f"{rnd}:{layout_key}")


def state(ctx: StageContext, name: str) -> dict[str, Any]:
    value = (ctx.campaign.state or {}).get(name)
    if value is None:
        raise StageError("missing_state", f"stage {ctx.stage} needs the output of {name}, which is missing")
    return value


def tenant_asset(session: Session, tenant_id: uuid.UUID, asset_id: str | uuid.UUID) -> Asset:
    asset = session.scalars(
        select(Asset).where(Asset.tenant_id == tenant_id, Asset.id == uuid.UUID(str(asset_id)))
    ).first()
    if asset is None:
        raise StageError("asset_missing", f"asset {asset_id} no longer exists")
    return asset


# --- decompose / caption (llm queue) ----------------------------------------------------------


@contextmanager
def _llm_failures(stage: str) -> Iterator[None]:
    """A hosted LLM that cannot answer (no credentials, bad request) fails the stage at once with
    its name and reason; transient errors were retried by the backend and go to the task retries."""
    from workers.models.llm_api import LLMError

    try:
        yield
    except LLMError as exc:
        if exc.retryable:
            raise
        raise StageError(exc.code, f"{stage}: {exc.detail}") from None


def llm_call_rows(ctx: StageContext, result: dict[str, Any], key: str = "") -> list[LlmCall]:
    """The call log of a language stage's result (local calls report seconds, hosted ones ms).
    Ids are derived from (stage, round, item, key, index), so a retried task rewrites the same rows."""
    rows = []
    for i, call in enumerate(result.get("calls") or []):
        latency_ms = call["latency_ms"] if "latency_ms" in call else 1000.0 * float(call.get("latency_s") or 0.0)
        rows.append(
            LlmCall(
                id=uuid.uuid5(ctx.campaign.id, f"llm:{ctx.stage}:{ctx.round}:{ctx.item}:{key}:{i}"),
                tenant_id=ctx.tenant_id,
                campaign_id=ctx.campaign.id,
                stage=ctx.stage,
                round=ctx.round,
                backend=call.get("backend", "local"),
                model=str(call.get("model") or result.get("model") or ""),
                prompt_version=result.get("prompt_version"),
                attempt=str(call.get("attempt") or "first"),
                latency_ms=round(latency_ms, 1),
                tokens_in=int(call.get("tokens_in") or 0),
                tokens_out=int(call.get("tokens_out") or 0),
                cost_usd=call.get("cost_usd"),
            )
        )
    for row in rows:  # counted when made: a retried stage really spent its tokens twice
        metrics.observe_llm_call(row.backend, row.model, row.tokens_in, row.tokens_out, row.cost_usd)
    return rows


def decompose(ctx: StageContext) -> dict[str, Any]:
    from workers.language.decompose import decompose

    with _llm_failures("decompose"):
        result = decompose(ctx.campaign.brief, ctx.settings.for_stage("decompose"))
    ctx.state_patch["decompose"] = result
    ctx.rows += llm_call_rows(ctx, result)
    return {"backend": result.get("backend"), "fallback_reason": result.get("fallback_reason")}


def caption(ctx: StageContext) -> dict[str, Any]:
    from workers.language.caption import caption

    retrieved = state(ctx, "retrieve")
    with _llm_failures("caption"):
        result = caption(
            state(ctx, "decompose"),
            retrieved.get("product_title"),
            retrieved.get("background_caption"),
            ctx.settings.for_stage("caption"),
            forbidden_terms=campaign_brand(ctx).forbidden_terms or [],
        )
    ctx.state_patch["caption"] = result
    ctx.rows += llm_call_rows(ctx, result)
    return {"caption": result["caption"], "backend": result.get("backend")}


def campaign_brand(ctx: StageContext) -> Brand:
    with session_scope() as session:
        brand = session.scalars(
            select(Brand).where(Brand.tenant_id == ctx.tenant_id, Brand.id == ctx.campaign.brand_id)
        ).first()
    if brand is None:
        raise StageError("brand_missing", f"brand {ctx.campaign.brand_id} no longer exists")
    return brand


# --- retrieve (retrieval queue) ----------------------------------------------------------------


REFERENCE_KPI = "ctr"  # past campaigns that match a theme rank higher the better they performed
RETRIEVE_TOP = 5  # matches kept per entity (visible in the campaign resource)
CATCH_UP_LIMIT = 256  # assets the retrieve stage embeds itself when their embed task has not run yet


def _scope(campaign: Campaign, kind: str | None = None) -> Filters:
    return Filters(tenant_id=campaign.tenant_id, kind=kind, brand_id=campaign.brand_id, include_unbranded=True)


def _catch_up(campaign: Campaign, model: str) -> None:
    """Embed the brand's newest uploads whose embed task is still queued behind bulk work."""
    scope = or_(Asset.brand_id == campaign.brand_id, Asset.brand_id.is_(None))
    with session_scope() as session:
        ids = library.missing_asset_ids(session, model, campaign.tenant_id, scope, limit=CATCH_UP_LIMIT)
    if ids:
        library.embed_asset_ids([str(i) for i in ids])


def _entities(parts: dict[str, Any]) -> list[tuple[str, str, str | None]]:
    """(text, kind, kpi boost) per decomposed entity; themes also look for past campaigns by KPI."""
    found = [(t, "product", None) for t in parts.get("products", [])]
    found += [(t, "background", None) for t in parts.get("backgrounds", []) + parts.get("themes", [])]
    found += [(t, "reference", REFERENCE_KPI) for t in parts.get("themes", [])]
    return found


def _query_spaces(texts: list[str]) -> list[tuple[Space, Space | None]]:
    from workers.models import clip_embedder, text_embedder

    text_model = text_embedder.model_id()
    vectors = text_embedder.embed(texts)
    images: list[Space | None] = [None] * len(texts)
    if clip_embedder.enabled() and texts:
        model = clip_embedder.model_id()
        images = [Space(model, len(v), v, "image") for v in clip_embedder.embed_texts(texts)]
    return [(Space(text_model, len(v), v), image) for v, image in zip(vectors, images, strict=True)]


def _matches(
    session: Session, campaign: Campaign, entity: tuple[str, str, str | None], spaces: tuple[Space, Space | None]
) -> list[dict[str, Any]]:
    text_, kind, boost = entity
    hits = search(
        session, text_, _scope(campaign, kind), text_space=spaces[0], image_space=spaces[1], k=RETRIEVE_TOP, boost=boost
    )
    titles = dict(session.execute(select(Asset.id, Asset.title).where(Asset.id.in_([h.asset_id for h in hits]))).all())
    return [
        {"asset_id": str(h.asset_id), "title": titles.get(h.asset_id, ""), "score": h.score, "parts": h.parts}
        for h in hits
    ]


def retrieve(ctx: StageContext) -> dict[str, Any]:
    from workers.models import text_embedder

    campaign = ctx.campaign
    _catch_up(campaign, text_embedder.model_id())
    entities = _entities(state(ctx, "decompose"))
    spaces = _query_spaces([t for t, _, _ in entities])
    with session_scope() as session:
        found = [
            {"text": e[0], "kind": e[1], "boost": e[2], "matches": _matches(session, campaign, e, sp)}
            for e, sp in zip(entities, spaces, strict=True)
        ]
        result = _pick(session, ctx, found)
    result.update(
        entities=found,
        model=spaces[0][0].model if spaces else text_embedder.model_id(),
        min_score=ctx.settings.retrieval_min_score,
    )
    ctx.state_patch["retrieve"] = result
    return {"product_asset_id": result["product_asset_id"], "background_asset_id": result["background_asset_id"]}


def _best(found: list[dict[str, Any]], kind: str, min_score: float) -> dict[str, Any] | None:
    matches = [m for e in found if e["kind"] == kind for m in e["matches"] if m["score"] >= min_score]
    return max(matches, key=lambda m: m["score"], default=None)


def _references(found: list[dict[str, Any]], min_score: float) -> list[dict[str, Any]]:
    """Past campaign images that match the themes, best (relevance + KPI) first, deduplicated."""
    seen: dict[str, dict[str, Any]] = {}
    for match in (m for e in found if e["kind"] == "reference" for m in e["matches"] if m["score"] >= min_score):
        if match["score"] > seen.get(match["asset_id"], {"score": -1.0})["score"]:
            seen[match["asset_id"]] = match
    return sorted(seen.values(), key=lambda m: -m["score"])[:3]


def _pick(session: Session, ctx: StageContext, found: list[dict[str, Any]]) -> dict[str, Any]:
    named, min_score = ctx.campaign.product_asset_ids or [], ctx.settings.retrieval_min_score
    product = {"asset_id": named[0], "score": None} if named else _best(found, "product", min_score)
    if product is None:
        raise StageError("no_product", "no product asset matches the brief; upload one or name it in product_asset_ids")
    product_asset = tenant_asset(session, ctx.tenant_id, product["asset_id"])
    background = _best(found, "background", min_score)
    bg_asset = tenant_asset(session, ctx.tenant_id, background["asset_id"]) if background else None
    return {
        "product_asset_id": str(product_asset.id),
        "product_title": product_asset.title,
        "product_source": "named" if named else "retrieved",
        "product_score": product["score"],
        "background_asset_id": str(bg_asset.id) if bg_asset else None,
        "background_caption": ", ".join(p for p in (bg_asset.title, bg_asset.description) if p) if bg_asset else None,
        "background_score": background["score"] if background else None,
        "background_reason": None if bg_asset else "nothing relevant above min_score: studio backdrop in brand colours",
        "references": _references(found, min_score),
        "reference_kpi": REFERENCE_KPI,
    }


# --- segment / plan (segment queue) ---------------------------------------------------------


def segment(ctx: StageContext) -> dict[str, Any]:
    from workers.imaging import matting
    from workers.models import registry

    retrieved = state(ctx, "retrieve")
    with session_scope() as session:
        asset = tenant_asset(session, ctx.tenant_id, retrieved["product_asset_id"])
    image = load_image(asset.storage_key)
    spec = segment_spec(ctx.settings)
    try:
        result = _model_call(spec, lambda: registry.load(spec).segment(image))
    except matting.SegmentationError as exc:
        raise StageError("segmentation_failed", f"product asset {asset.id}: {exc}") from exc
    keys = _store_masks(ctx, image, result)
    ctx.state_patch["segment"] = {
        "adapter": spec.adapter,
        "model": spec.model or None,
        "method": result.method,
        "quality": result.quality,
        **keys,
        "product_asset_id": str(asset.id),
    }
    return {"adapter": spec.adapter, "method": result.method, "quality": result.quality}


def _model_call(spec: ModelSpec, call: Callable[[], T]) -> T:
    """A configured model that cannot be loaded fails the stage at once, naming it (no retries)."""
    from workers.models.runtime import ModelUnavailable

    try:
        return call()
    except ModelUnavailable as exc:
        raise StageError("model_unavailable", str(exc)) from None


def _store_masks(ctx: StageContext, image: Image.Image, result: Any) -> dict[str, str]:
    from workers.imaging import matting

    key = lambda name: campaign_key(ctx.tenant_id, ctx.campaign.id, f"segment/{name}")  # noqa: E731
    mask = Image.fromarray(result.mask)
    cutout = matting.cutout(image, result)
    return {
        "mask_key": save_png(key("mask.png"), mask),
        "antimask_key": save_png(key("antimask.png"), Image.eval(mask, lambda v: 255 - v)),
        "cutout_key": save_png(key("cutout.png"), cutout),
        "cutout_size": list(cutout.size),
    }


def _canvas_image(ctx: StageContext, canvas: tuple[int, int]) -> Image.Image:
    return _backgrounds(ctx, {canvas})[canvas]


def scale(ctx: StageContext) -> dict[str, Any]:
    from workers.language import scale as scaling

    sizes = ctx.campaign.sizes or [{"width": 1024, "height": 1024}]
    canvas = (int(sizes[0]["width"]), int(sizes[0]["height"]))
    with _llm_failures("scale"):
        result = scaling.scale(
            state(ctx, "caption")["caption"],
            state(ctx, "decompose"),
            load_image(state(ctx, "segment")["cutout_key"]).convert("RGBA"),
            _canvas_image(ctx, canvas),
            ctx.settings.for_stage("scale"),
        )
    ctx.state_patch["scale"] = result
    ctx.rows += llm_call_rows(ctx, result)
    return {"share": result["share"], "method": result["method"], "fallback_reason": result["fallback_reason"]}


RETRY_SHRINK = 0.85  # each extra attempt with the same caption places the product this much smaller


def plan(ctx: StageContext) -> dict[str, Any]:
    from workers.imaging import composition

    seg, settings = state(ctx, "segment"), ctx.settings
    attempt = int((ctx.campaign.state or {}).get("_loop", {}).get("attempt", 0))
    share = round(float(state(ctx, "scale")["share"]) * RETRY_SHRINK**attempt, 4)
    cutout = load_image(seg["cutout_key"]).convert("RGBA")  # lets the plan stand rotated products on the ground
    zones = tuple(composition.SafeZone(**z) for z in ctx.campaign.safe_zones or [])
    made = composition.plan(
        _canvases(ctx),
        cutout.size,
        settings.grid_rows,
        settings.grid_cols,
        tuple(settings.rotations),
        share,
        settings.max_upscale,
        cutout=cutout,
        min_share=settings.min_product_share,
        safe_zones=zones,
    )
    if not made.layouts:
        reasons = "; ".join(f"{c['canvas'][0]}x{c['canvas'][1]}: {c['reason']}" for c in made.skipped_canvases)
        raise StageError("no_layout_fits", f"no canvas can hold the product: {reasons}")
    batches = max(1, math.ceil(len(made.layouts) / settings.generate_batch_size))
    ctx.state_patch["plan"] = _plan_state(ctx, made, share, attempt, batches)
    return {"layouts": len(made.layouts), "batches": batches, "skipped_canvases": len(made.skipped_canvases)}


def _canvases(ctx: StageContext) -> list[tuple[int, int]]:
    return [(int(s["width"]), int(s["height"])) for s in (ctx.campaign.sizes or [{"width": 1024, "height": 1024}])]


def _plan_state(ctx: StageContext, made: Any, share: float, attempt: int, batches: int) -> dict[str, Any]:
    settings = ctx.settings
    return {
        "layouts": [asdict(layout) for layout in made.layouts],
        "batch_size": settings.generate_batch_size,
        "batches": batches,
        "grid": [settings.grid_rows, settings.grid_cols],
        "rotations": list(settings.rotations),
        "canvases": [list(c) for c in _canvases(ctx)],
        "skipped_canvases": made.skipped_canvases,
        "safe_zones": list(ctx.campaign.safe_zones or []),
        "safe_zone_exclusions": made.safe_zone_exclusions,
        "scale_share": share,
        "max_upscale": settings.max_upscale,
        "min_share": settings.min_product_share,
        "anchor": "bottom-centre on the row's ground line",
        "attempt": attempt,
    }


# --- generate (generate queue) ----------------------------------------------------------------


def _batch_layouts(ctx: StageContext) -> list[dict[str, Any]]:
    plan_state = state(ctx, "plan")
    size = plan_state["batch_size"]
    return plan_state["layouts"][ctx.item * size : (ctx.item + 1) * size]


def _backgrounds(ctx: StageContext, canvases: set[tuple[int, int]]) -> dict[tuple[int, int], Image.Image]:
    from workers.imaging import compositor

    retrieved, palette = state(ctx, "retrieve"), list(campaign_brand(ctx).palette or [])
    with session_scope() as session:
        bg = (
            tenant_asset(session, ctx.tenant_id, retrieved["background_asset_id"])
            if retrieved.get("background_asset_id")
            else None
        )
    source = load_image(bg.storage_key).convert("RGB") if bg else None
    return {c: compositor.cover_crop(source, c) if source else compositor.backdrop(c, palette) for c in canvases}


@dataclass
class _Made:
    """One generated candidate before it becomes a row: which layout, which variant, its pixels."""

    layout: Any
    layer: Image.Image
    image: Image.Image
    variant: int
    generation: dict[str, Any]


def generate(ctx: StageContext) -> dict[str, Any]:
    from workers.imaging import composition

    layouts = [composition.Layout(**d) for d in _batch_layouts(ctx)]
    cutout = load_image(state(ctx, "segment")["cutout_key"]).convert("RGBA")
    backgrounds = _backgrounds(ctx, {(lay.canvas_w, lay.canvas_h) for lay in layouts})
    layers = [composition.place(cutout, layout) for layout in layouts]
    spec = generate_spec(ctx.settings)
    make = _inpaint if spec.adapter == "sd-inpaint" else _composite
    made = _model_call(spec, lambda: make(ctx, spec, list(zip(layouts, layers, strict=True)), backgrounds))
    saved_layers: set[str] = set()
    for item in made:
        ctx.rows.append(_candidate_row(ctx, item, saved_layers))
        _observe_generation(item.generation)
    return {
        "candidates": len(made),
        "generator": spec.adapter,
        "gpu_seconds": round(sum(m.generation.get("gpu_seconds", 0.0) for m in made), 3),
    }


def _composite(
    ctx: StageContext,
    spec: ModelSpec,
    placed: list[tuple[Any, Image.Image]],
    backgrounds: dict[tuple[int, int], Image.Image],
) -> list[_Made]:
    from workers.imaging import compositor

    out = []
    for layout, layer in placed:
        started = time.perf_counter()
        image = compositor.compose(layer, backgrounds[(layout.canvas_w, layout.canvas_h)])
        seconds = round(time.perf_counter() - started, 4)
        out.append(
            _Made(
                layout,
                layer,
                image,
                0,
                {"adapter": "compositor", "device": "cpu", "seed": None, "cpu_seconds": seconds},
            )
        )
    return out


def _inpaint(
    ctx: StageContext,
    spec: ModelSpec,
    placed: list[tuple[Any, Image.Image]],
    backgrounds: dict[tuple[int, int], Image.Image],
) -> list[_Made]:
    """sd-inpaint: every layout x variant, batched by the adapter; the reference background (when one
    was retrieved) is the init image, otherwise the model paints the whole scene."""
    from workers.models import registry, sd_inpaint

    reference = bool(state(ctx, "retrieve").get("background_asset_id"))
    todo = [(layout, layer, v) for layout, layer in placed for v in range(ctx.settings.sd_variants)]
    jobs = [
        sd_inpaint.Job(
            layer, backgrounds[(lay.canvas_w, lay.canvas_h)] if reference else None, seed_for(ctx, lay.layout_key, v)
        )
        for lay, layer, v in todo
    ]
    caption_state, inpainter = state(ctx, "caption"), registry.load(spec)
    outputs = inpainter.generate(
        jobs,
        caption_state["caption"],
        caption_state.get("negative_prompt", ""),
        background_prompt=_background_prompt(ctx),
    )
    return [
        _Made(lay, layer, out.image, v, _generation(spec, out, reference, str(inpainter.device)))
        for (lay, layer, v), out in zip(todo, outputs, strict=True)
    ]


def _observe_generation(generation: dict[str, Any]) -> None:
    # The adapter's own timing of this candidate: gpu_seconds on an accelerator, cpu_seconds otherwise.
    seconds = generation.get("gpu_seconds", generation.get("cpu_seconds"))
    if seconds is not None:
        metrics.GPU_SECONDS_PER_CANDIDATE.labels(generation["adapter"], generation.get("device") or "cpu").observe(
            float(seconds)
        )


def _generation(spec: ModelSpec, out: Any, reference: bool, device: str) -> dict[str, Any]:
    return {
        "adapter": spec.adapter,
        "model": spec.model,
        "seed": out.seed,
        "device": device,
        "mode": spec.option("mode"),
        "passes": list(out.passes),
        "working_size": list(out.size),
        "steps": spec.option("steps"),
        "init": "reference background" if reference else "none",
        "gpu_seconds": round(out.gpu_seconds, 4),
    }


def _background_prompt(ctx: StageContext) -> str | None:
    backgrounds = state(ctx, "decompose").get("backgrounds") or []
    return ", ".join(backgrounds) or state(ctx, "retrieve").get("background_caption")


def seed_for(ctx: StageContext, layout_key: str, variant: int) -> int:
    """Deterministic per (campaign, round, layout, variant): a retried task paints the same pixels."""
    digest = hashlib.sha256(f"{ctx.campaign.id}:{ctx.round}:{layout_key}:{variant}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def _candidate_row(ctx: StageContext, item: _Made, saved_layers: set[str]) -> Candidate:
    from workers.imaging import composition

    layout = item.layout
    key = layout.layout_key if item.variant == 0 else f"{layout.layout_key}-v{item.variant}"
    prefix = campaign_key(ctx.tenant_id, ctx.campaign.id, f"r{ctx.round}/{layout.layout_key}")
    layer_key = f"{prefix}/layer.png"
    if layer_key not in saved_layers:  # variants of a layout share its product layer
        save_png(layer_key, item.layer)
        saved_layers.add(layer_key)
    suffix = "" if item.variant == 0 else f"-v{item.variant}"
    return Candidate(
        id=candidate_id(ctx.campaign.id, ctx.round, key),
        tenant_id=ctx.tenant_id,
        campaign_id=ctx.campaign.id,
        round=ctx.round,
        batch=ctx.item,
        layout_key=key,
        placement=placement(layout),
        generator=item.generation["adapter"],
        generation=item.generation,
        integrity={**composition.integrity(item.image, item.layer), "placement": placement(layout)},
        image_key=save_png(f"{prefix}/candidate{suffix}.png", item.image),
        layer_key=layer_key,
    )


def placement(layout: Any) -> dict[str, Any]:
    return {
        "x": layout.x,
        "y": layout.y,
        "scale": layout.scale,
        "rotation": layout.rotation,
        "row": layout.row,
        "col": layout.col,
        "canvas": {"width": layout.canvas_w, "height": layout.canvas_h},
    }


# --- qc (qc queue) and rank (scoring queue): workers/pipeline/quality.py ---------------------------------


def qc(ctx: StageContext) -> dict[str, Any]:
    from workers.pipeline import quality

    return quality.qc(ctx)


def rank(ctx: StageContext) -> dict[str, Any]:
    from workers.pipeline import quality

    return quality.rank(ctx)


def write_results(session: Session, campaign: Campaign, chosen: list[Candidate]) -> list[Task]:
    from workers.engine.runner import advance

    session.execute(delete(Result).where(Result.tenant_id == campaign.tenant_id, Result.campaign_id == campaign.id))
    for position, cand in enumerate(chosen, start=1):
        session.add(Result(tenant_id=campaign.tenant_id, campaign_id=campaign.id, candidate_id=cand.id, rank=position))
    session.flush()
    return advance(session, campaign, "rank", campaign.round)


# --- revise (llm queue) ----------------------------------------------------------------------------


def revise(ctx: StageContext) -> dict[str, Any]:
    from workers.language import revise as revising

    failures = revising.failure_summary(_failed_verdicts(ctx, ctx.round - 1))
    with _llm_failures("revise"):
        result = revising.revise(
            state(ctx, "caption"), failures, ctx.settings.for_stage("revise"), campaign_brand(ctx).forbidden_terms or []
        )
    history = list((ctx.campaign.state or {}).get("revisions") or [])
    entry = {k: result.get(k) for k in ("previous_caption", "caption", "change", "backend", "fallback_reason")}
    ctx.state_patch.update(caption=result, revisions=[*history, {"round": ctx.round, **entry}])
    ctx.rows += llm_call_rows(ctx, result)
    return {"change": result["change"], "backend": result["backend"], "failures": len(failures)}


def _failed_verdicts(ctx: StageContext, rnd: int) -> list[dict[str, Any]]:
    """Every failed check of a round's candidates: product, brand and guideline checks alike."""
    from workers.pipeline import quality

    with session_scope() as session:
        records = list(
            session.scalars(
                select(Candidate.qc).where(
                    Candidate.tenant_id == ctx.tenant_id,
                    Candidate.campaign_id == ctx.campaign.id,
                    Candidate.round == rnd,
                )
            )
        )
    return quality.failed_checks(records)


# --- deliver (scoring queue) -----------------------------------------------------------------------


def deliver(ctx: StageContext) -> dict[str, Any]:
    ctx.finalize = _complete
    return {"delivered": True}


def _complete(session: Session, campaign: Campaign) -> list[Task]:
    from workers.jobs import push  # the DAM pushes are written in this same transaction

    storage = get_storage()
    rows = session.execute(
        select(Result.rank, Candidate)
        .join(Candidate, Candidate.id == Result.candidate_id)
        .where(Result.tenant_id == campaign.tenant_id, Result.campaign_id == campaign.id)
        .order_by(Result.rank)
    ).all()
    results = [
        {
            "rank": r,
            "candidate_id": str(c.id),
            "image_url": storage.url(c.image_key),
            "layer_url": storage.url(c.layer_key),
            "placement": c.placement,
            "aesthetic": c.aesthetic,
        }
        for r, c in rows
    ]
    campaign.status = "completed" if len(results) >= campaign.top_k else "partial"
    campaign.completed_at, campaign.current_stage = now(), None
    campaign_finished(campaign)
    data: dict[str, Any] = {"status": campaign.status, "results": results}
    if campaign.status == "partial":
        campaign.error = _partial_error(session, campaign, len(results))
        data["error"] = campaign.error
    tasks = webhook_tasks(webhooks.emit(session, campaign, f"campaign.{campaign.status}", data))
    return tasks + push.queue_pushes(session, campaign)  # none without results


def _partial_error(session: Session, campaign: Campaign, found: int) -> dict[str, Any]:
    """Too few results once the loop's bounds ran out: say how far it got and which checks kept the rest out."""
    from shared import qc as qc_report

    loop = (campaign.state or {}).get("_loop") or {}
    rows = qc_report.candidate_rows(session, campaign.tenant_id, campaign.id)
    summary = qc_report.report(rows, campaign.qc_policy, campaign.top_k)
    blocking, duplicates = summary["blocking"], summary["outcomes"].get("duplicate", 0)
    kept_out = ", ".join(f"{b['check']} ({b['failed']})" for b in blocking[:6]) or "no check failed"
    return {
        "code": "too_few_passed",
        "blocking": blocking,
        "duplicates": duplicates,
        "message": f"{found} of {campaign.top_k} results passed QC after {campaign.round + 1} round(s) "
        f"({loop.get('revision', 0)} caption revision(s)); failed checks: {kept_out}; "
        f"{duplicates} passing candidate(s) were near-duplicates of better ones",
    }


def restart_stalled(older_than_s: int = 60) -> int:
    """Campaigns still queued with no stage run: the gateway's send after commit was lost."""
    from datetime import timedelta

    from shared.db.models import StageRun
    from shared.queue import send

    with session_scope() as session:
        ids = session.scalars(
            select(Campaign.id)
            .where(
                Campaign.status == "queued",
                Campaign.created_at < now() - timedelta(seconds=older_than_s),
                ~select(StageRun.id).where(StageRun.campaign_id == Campaign.id).exists(),
            )
            .limit(500)
        ).all()
    for campaign_id in ids:
        send("onbrand.decompose", campaign_id, 0, 0)
    return len(ids)


STAGES: dict[str, StageFn] = {
    "decompose": decompose,
    "retrieve": retrieve,
    "caption": caption,
    "segment": segment,
    "scale": scale,
    "plan": plan,
    "generate": generate,
    "qc": qc,
    "rank": rank,
    "revise": revise,
    "deliver": deliver,
}
