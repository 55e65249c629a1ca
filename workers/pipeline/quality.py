"""QC and ranking: thousands of candidates down to the few a brand sees, every decision explained.

qc (gpu queue ``qc``, one batch of a round): per candidate, product fidelity (exact pixels, MS-SSIM
of edge maps, CIEDE2000 colour difference, DINOv2 similarity of the product crops when configured),
brand rules (palette, area, safe zones, exposure, contrast, framing), a perceptual hash and (with
DINOv2) an embedding for duplicates, then the guideline review of candidates whose product is intact,
and the campaign policy's verdict without relaxation.

rank (cpu queue ``scoring``, the whole campaign so far): near-duplicates clustered, the flexible
policy's relaxation when too few distinct candidates pass, aesthetic scores of the passing ones,
the best of each cluster, the diversity rule, and the top-K as results. Every candidate ends with
its rank or the reason it was left out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PIL import Image
from sqlalchemy import select
from sqlalchemy.orm import undefer

from shared.db.models import Candidate
from shared.db.session import session_scope
from shared.model_specs import aesthetic_spec, fidelity_spec
from shared.qc import QcThresholds, thresholds
from workers.checks import policy
from workers.engine.runner import StageContext
from workers.pipeline.stages import (
    _llm_failures,
    _model_call,
    campaign_brand,
    llm_call_rows,
    load_image,
    state,
)

# --- qc ------------------------------------------------------------------------------------------


def verdict(
    check: str, group: str, value: float | None, threshold: Any, passed: bool | None, reason: str
) -> dict[str, Any]:
    """One check's outcome; ``passed`` None = unchecked (the reason says why), never a made-up pass."""
    status = "unchecked" if passed is None else ("pass" if passed else "fail")
    return {
        "check": check,
        "group": group,
        "value": None if value is None else round(float(value), 4),
        "threshold": threshold,
        "passed": passed,
        "status": status,
        "reason": reason,
    }


def product_checks(metrics: dict[str, Any], limits: QcThresholds) -> list[dict[str, Any]]:
    """Is the product exactly the product: pixels, edges, colour and (with DINOv2) appearance."""
    exact, ssim, de, dino = (
        metrics["exact_fraction"],
        metrics["msssim_edges"],
        metrics["delta_e"],
        metrics.get("dino_cosine"),
    )
    return [
        verdict(
            "product_exact",
            "product",
            exact,
            limits.min_exact,
            exact >= limits.min_exact,
            f"{exact:.2%} of opaque product pixels are identical to the placed product",
        ),
        verdict(
            "product_edges_msssim",
            "product",
            ssim,
            limits.min_msssim,
            ssim >= limits.min_msssim,
            f"MS-SSIM of product edge maps {ssim:.3f}",
        ),
        verdict(
            "product_colour_delta_e",
            "product",
            de,
            limits.max_delta_e,
            de <= limits.max_delta_e,
            f"mean CIEDE2000 over the product {de:.2f} (2.3 is a just-noticeable difference)",
        ),
        verdict(
            "product_dino",
            "product",
            dino,
            limits.min_dino,
            None if dino is None else dino >= limits.min_dino,
            "DINOv2 is not configured (ONBRAND_DINOV2_MODEL)"
            if dino is None
            else f"DINOv2 cosine of the product crops {dino:.3f}",
        ),
    ]


def frame_check(layer: Image.Image) -> dict[str, Any]:
    """A product cut by the canvas edge reads as a mistake in an ad."""
    import numpy as np

    alpha = np.asarray(layer.getchannel("A"))
    ys, xs = np.nonzero(alpha)
    h, w = alpha.shape
    inside = bool(ys.min() > 0 and xs.min() > 0 and ys.max() < h - 1 and xs.max() < w - 1)
    return verdict(
        "product_in_frame",
        "brand",
        1.0 if inside else 0.0,
        1.0,
        inside,
        "product fully inside the canvas" if inside else "product touches the canvas edge",
    )


@dataclass
class Review:
    """What QC needs once per task: caption, product cut-out, the brand's rules and limits, DINOv2."""

    caption: str
    product: Image.Image
    guidelines: list[dict[str, Any]]
    palette: list[str]
    limits: QcThresholds
    embedder: Any  # workers.models.dinov2.Dinov2Embedder, or None when not configured

    @classmethod
    def load(cls, ctx: StageContext) -> Review:
        from workers.models import registry

        brand = campaign_brand(ctx)
        spec = fidelity_spec(ctx.settings)
        embedder = _model_call(spec, lambda: registry.load(spec)) if spec else None
        product = load_image(state(ctx, "segment")["cutout_key"]).convert("RGBA")
        return cls(
            state(ctx, "caption")["caption"],
            product,
            list(brand.guidelines or []),
            list(brand.palette or []),
            thresholds(ctx.settings, brand.qc_thresholds),
            embedder,
        )

    def guidelines_of(
        self, ctx: StageContext, cand: Candidate, image: Image.Image, layer: Image.Image
    ) -> dict[str, Any]:
        from workers.checks import guideline

        with _llm_failures("qc"):
            result = guideline.check(
                image,
                layer,
                self.product,
                self.caption,
                self.guidelines,
                ctx.campaign.qc_policy,
                ctx.settings.for_stage("guideline"),
            )
        ctx.rows += llm_call_rows(ctx, result, key=cand.layout_key)
        return {k: v for k, v in result.items() if k != "calls"}


def qc(ctx: StageContext) -> dict[str, Any]:
    review = Review.load(ctx)
    cands = _batch(ctx)
    pixels = [(load_image(c.image_key).convert("RGB"), load_image(c.layer_key).convert("RGBA")) for c in cands]
    seen = _embeddings(review.embedder, pixels)
    for cand, (image, layer), (cosine, embedding) in zip(cands, pixels, seen, strict=True):
        _check_one(ctx, review, cand, image, layer, cosine)
        cand.embedding = embedding
        ctx.rows.append(cand)
    return {"checked": len(cands), "passed": sum(bool(c.passed) for c in cands), "dinov2": review.embedder is not None}


def _batch(ctx: StageContext) -> list[Candidate]:
    with session_scope() as session:
        query = select(Candidate).where(
            Candidate.tenant_id == ctx.tenant_id,
            Candidate.campaign_id == ctx.campaign.id,
            Candidate.round == ctx.round,
            Candidate.batch == ctx.item,
        )
        return list(session.scalars(query.order_by(Candidate.layout_key)).all())


def _check_one(
    ctx: StageContext, review: Review, cand: Candidate, image: Image.Image, layer: Image.Image, cosine: float | None
) -> None:
    from workers.checks import brand_rules, duplicates, fidelity

    limits = review.limits
    metrics = {**fidelity.fidelity(image, layer), "dino_cosine": cosine, "phash": duplicates.phash(image)}
    rules = brand_rules.check(image, layer, review.palette, list(ctx.campaign.safe_zones or []), limits.model_dump())
    verdicts = [*product_checks(metrics, limits), frame_check(layer), *[{**v, "group": "brand"} for v in rules]]
    cand.qc = {"metrics": metrics, "verdicts": verdicts, "thresholds": limits.model_dump()}
    if not any(v["status"] == "fail" for v in verdicts if v["group"] == "product"):
        cand.qc["guidelines"] = review.guidelines_of(ctx, cand, image, layer)  # costly: intact products only
    else:
        cand.qc["guidelines_skipped"] = "the product is not exactly the product; guidelines were not reviewed"
    cand.qc["policy"] = policy.decide(policy.checks(cand.qc), ctx.campaign.qc_policy, limits.weighted_threshold)
    cand.passed = cand.qc["policy"]["passed"]


def _embeddings(embedder: Any, pixels: list[tuple[Image.Image, Image.Image]]) -> list[tuple[Any, Any]]:
    """(product-crop cosine, whole-candidate embedding) per candidate; (None, None) without DINOv2."""
    if embedder is None:
        return [(None, None)] * len(pixels)
    from workers.checks import fidelity

    crops = [fidelity.product_crops(image, layer) for image, layer in pixels]
    cosines = embedder.similarity([c for c, _ in crops], [r for _, r in crops])
    whole = embedder.embed([image for image, _ in pixels])
    return [(round(float(c), 6), [float(x) for x in e]) for c, e in zip(cosines, whole, strict=True)]


# --- rank ----------------------------------------------------------------------------------------


def rank(ctx: StageContext) -> dict[str, Any]:
    from workers.pipeline import stages as pipeline

    candidates = _pool(ctx)  # every round so far: a retry adds to the pool, never replaces it
    limits = thresholds(ctx.settings, campaign_brand(ctx).qc_thresholds)
    clusters = cluster_pool(candidates, limits)
    relaxed = apply_policy(candidates, clusters, ctx.campaign.qc_policy, ctx.campaign.top_k, limits)
    _score_passing(ctx, candidates)
    chosen = choose(best_of_clusters(candidates, clusters), ctx.campaign.top_k)
    for position, cand in enumerate(chosen, start=1):
        cand.rank = position
    ctx.rows.extend(candidates)
    ctx.state_patch["qc"] = _summary(ctx, candidates, clusters, relaxed, len(chosen))
    ctx.finalize = lambda session, campaign: pipeline.write_results(session, campaign, chosen)
    return {
        "candidates": len(candidates),
        "passed": sum(bool(c.passed) for c in candidates),
        "ranked": len(chosen),
        "clusters": len({c.id for c in clusters.values()}),
        "relaxed": [r["id"] for r in relaxed],
    }


def _pool(ctx: StageContext) -> list[Candidate]:
    with session_scope() as session:
        query = (
            select(Candidate)
            .options(undefer(Candidate.embedding))
            .where(Candidate.tenant_id == ctx.tenant_id, Candidate.campaign_id == ctx.campaign.id)
        )
        return list(session.scalars(query.order_by(Candidate.round, Candidate.layout_key)).all())


def _group(cand: Candidate) -> str:
    canvas = cand.placement["canvas"]
    return f"{canvas['width']}x{canvas['height']}"  # another ad size is another deliverable, not a duplicate


def cluster_pool(candidates: list[Candidate], limits: QcThresholds) -> dict[str, Any]:
    """candidate id -> its near-duplicate cluster (perceptual hash, and DINOv2 embeddings when stored)."""
    import numpy as np

    from workers.checks import duplicates

    items = [
        duplicates.Item(
            str(c.id),
            _group(c),
            c.qc["metrics"]["phash"],
            None if c.embedding is None else np.asarray(c.embedding, dtype=np.float32),
        )
        for c in candidates
    ]
    return duplicates.cluster(items, limits.dup_max_hamming, limits.dup_min_cosine)


def apply_policy(
    candidates: list[Candidate], clusters: dict[str, Any], name: str, top_k: int, limits: QcThresholds
) -> list[dict[str, Any]]:
    """Each candidate's final verdict under the campaign's policy; the flexible rules relaxed, if any."""
    pool = [policy.checks(c.qc) for c in candidates]
    if name == "flexible":

        def enough(flags: list[bool]) -> bool:
            return len({clusters[str(c.id)].id for c, ok in zip(candidates, flags, strict=True) if ok}) >= top_k

        decisions, relaxed = policy.relax(pool, enough, limits.weighted_threshold)
    else:
        decisions, relaxed = [policy.decide(found, name, limits.weighted_threshold) for found in pool], []
    for cand, decision in zip(candidates, decisions, strict=True):
        cand.qc = {**cand.qc, "policy": {**decision, "relaxed_for_campaign": [r["id"] for r in relaxed]}}
        cand.passed = decision["passed"]
        cand.rank, cand.excluded_reason = None, None if decision["passed"] else failure_reason(decision)
    return relaxed


def failure_reason(decision: dict[str, Any]) -> str:
    failed = ", ".join(decision["failed"]) or "none"
    if decision["name"] == "weighted":
        return (
            f"failed QC (weighted policy): {decision['weighted_share']:.0%} of the checked weight passed, "
            f"{decision['threshold']:.0%} needed, or a product check failed; failed: {failed}"
        )
    return f"failed QC ({decision['name']} policy): {failed}"


def _score_passing(ctx: StageContext, candidates: list[Candidate]) -> None:
    """Aesthetic scores of passing candidates; a score from an earlier rank with the same scorer is kept."""
    from workers.models import registry

    spec = aesthetic_spec(ctx.settings)
    scorer = None
    for cand in candidates:
        if not cand.passed:
            cand.aesthetic = None
            continue
        if cand.aesthetic is not None and (cand.qc.get("aesthetic") or {}).get("method") == spec.adapter:
            continue
        scorer = scorer or _model_call(spec, lambda: registry.load(spec))
        scored = scorer.score(load_image(cand.image_key).convert("RGB"), load_image(cand.layer_key).convert("RGBA"))
        scored = {"method": spec.adapter, **scored}
        cand.aesthetic, cand.qc = scored["score"], {**cand.qc, "aesthetic": scored}


def best_of_clusters(candidates: list[Candidate], clusters: dict[str, Any]) -> list[Candidate]:
    """The passing candidates that may be ranked: the best (by aesthetic) of each near-duplicate cluster."""
    by_id = {str(c.id): c for c in candidates}
    best: dict[str, Candidate] = {}
    for cand in sorted((c for c in candidates if c.passed), key=_order):
        best.setdefault(clusters[str(cand.id)].id, cand)
    for cand in candidates:
        found = clusters[str(cand.id)]
        top = best.get(found.id)
        cand.qc = {**cand.qc, "cluster": _cluster_record(found, by_id, top)}
        if cand.passed and top is not cand and top is not None:
            cand.excluded_reason = (
                f"near-duplicate of {top.layout_key} (cluster {found.id}, "
                f"{_link(found, cand, top)}): only the best of a cluster can be ranked"
            )
    return list(best.values())


def _order(cand: Candidate) -> tuple[float, str]:
    return -(cand.aesthetic or 0.0), cand.layout_key


def _cluster_record(found: Any, by_id: dict[str, Candidate], top: Candidate | None) -> dict[str, Any]:
    return {
        "id": found.id,
        "size": len(found.members),
        "members": sorted(by_id[m].layout_key for m in found.members),
        "best": top.layout_key if top is not None else None,
        "links": [{"a": by_id[a].layout_key, "b": by_id[b].layout_key, "how": how} for a, b, how in found.links],
    }


def _link(found: Any, cand: Candidate, top: Candidate) -> str:
    """How the two were found alike: the direct link when there is one, else 'linked through the cluster'."""
    ids = {str(cand.id), str(top.id)}
    direct = [how for a, b, how in found.links if {a, b} == ids]
    return direct[0] if direct else "linked through other members of the cluster"


def _cell(cand: Candidate) -> tuple[int, int, int, int]:
    canvas = cand.placement["canvas"]
    return canvas["width"], canvas["height"], cand.placement["row"], cand.placement["col"]


def choose(candidates: list[Candidate], top_k: int) -> list[Candidate]:
    """Best aesthetic first; a second result from the same layout cell (canvas, row, column: the same
    placement at another rotation or seed) only if there aren't enough distinct ones."""
    ordered = sorted((c for c in candidates if c.passed), key=_order)
    first: list[Candidate] = []
    repeats: list[Candidate] = []
    for cand in ordered:
        (repeats if any(_cell(cand) == _cell(f) for f in first) else first).append(cand)
    chosen = (first + repeats)[:top_k]
    for cand in ordered:
        if cand not in chosen:
            cand.excluded_reason = (
                "diversity: a better candidate already uses this layout cell"
                if cand in repeats
                else f"passed QC, ranked below the top {top_k} by aesthetic score"
            )
    return chosen


def _summary(
    ctx: StageContext, candidates: list[Candidate], clusters: dict[str, Any], relaxed: list[dict[str, Any]], ranked: int
) -> dict[str, Any]:
    """What the campaign resource shows of QC: the policy, what it relaxed, and the counts."""
    sizes = [len(c.members) for c in {c.id: c for c in clusters.values()}.values()]
    return {
        "policy": ctx.campaign.qc_policy,
        "relaxed": relaxed,
        "candidates": len(candidates),
        "passed": sum(bool(c.passed) for c in candidates),
        "clusters": len(sizes),
        "duplicates": sum(s - 1 for s in sizes),
        "ranked": ranked,
        "aesthetic": aesthetic_spec(ctx.settings).adapter,
        "dinov2": ctx.settings.dinov2_model or None,
    }


# --- revise's input ----------------------------------------------------------------------------------


def failed_checks(qc_records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every failed check of a round's candidates (product, brand and guideline alike), for the revise stage."""
    return [
        {"guideline": c["id"], "reason": c["reason"]}
        for record in qc_records
        for c in policy.checks(record or {})
        if c["status"] == "fail"
    ]
