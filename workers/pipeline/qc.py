"""qc (qc queue, one batch of a round): every candidate checked, every decision explained.

Per candidate: product fidelity (exact pixels, MS-SSIM of edge maps, CIEDE2000 colour difference,
DINOv2 similarity of the product crops when configured), brand rules (palette, area, safe zones,
exposure, contrast, framing), a perceptual hash and (with DINOv2) an embedding for duplicates, then
the guideline review of candidates whose product is intact, and the campaign policy's verdict
without relaxation (rank relaxes, over the whole pool).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from sqlalchemy import select

from shared.brand_kit import BrandKit as StoredKit
from shared.brand_kit import CampaignCopy
from shared.db.models import Candidate
from shared.db.session import session_scope
from shared.model_specs import fidelity_spec
from shared.qc import DEFAULT_UNCHECKED, QcThresholds, thresholds
from workers.checks import policy, product
from workers.creative.schema import BrandKit as RenderKit
from workers.engine.context import StageContext
from workers.models.roles import ImageEmbedder
from workers.pipeline import overlay
from workers.pipeline.brief import creative_copy
from workers.pipeline.common import (
    ImageWriter,
    campaign_brand,
    llm_call_rows,
    llm_failures,
    load_image,
    model_call,
)
from workers.pipeline.generate import SourceLayers
from workers.pipeline.outputs import CaptionOutput, PlanOutput, SegmentOutput


@dataclass
class Review:
    """What QC needs once per task: caption, product cut-out, the brand's rules and limits, DINOv2."""

    caption: str
    product: Image.Image
    guidelines: list[dict[str, Any]]
    palette: list[str]
    limits: QcThresholds
    embedder: ImageEmbedder | None  # DINOv2, or None when not configured
    unchecked: str = DEFAULT_UNCHECKED  # the brand's unchecked policy (review | fail | pass)
    sources: SourceLayers = field(default_factory=SourceLayers)  # layers re-derived from the source: fidelity

    scenes: dict[tuple[int, int], Any] = field(default_factory=dict)  # canvas size -> text_ocr.Background
    # product asset id -> its cut-out, with several products (a candidate is reviewed against its own product)
    products: dict[str, Image.Image] = field(default_factory=dict)
    # The campaign's copy (None: no creative version), the brand kit as rendered, each canvas's zones ("WxH")
    copy: CampaignCopy | None = None
    kit: RenderKit = field(default_factory=RenderKit)
    zones: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    kit_files: list[dict[str, Any]] = field(default_factory=list)  # the logo and font by sha256 (C2PA ingredients)
    writer: ImageWriter = field(default_factory=ImageWriter)  # stores the creatives in the background

    def product_of(self, cand: Candidate) -> Image.Image:
        return self.products.get(product_id(cand) or "", self.product)

    def scene_of(self, ctx: StageContext, cand: Candidate, image: Image.Image) -> Any:
        """What the guideline check measures against: the candidate's background source (made once per canvas
        size per task, as generate made it; the compositor copied it verbatim, a generator repainted it),
        the brand's palette and radius."""
        from workers.checks import guideline, text_ocr
        from workers.pipeline.common import backgrounds
        from workers.pipeline.outputs import RetrieveOutput

        asset = ctx.output(RetrieveOutput).background_for(image.size)
        composited = cand.generator == "compositor"
        if image.size not in self.scenes and (composited or asset):
            source = f"brand photo {asset}" if asset else "the studio backdrop"
            self.scenes[image.size] = text_ocr.Background(
                backgrounds(ctx, {image.size})[image.size], verbatim=composited, source=source
            )
        background = self.scenes.get(image.size) if (composited or asset) else None
        return guideline.Scene(background, list(self.palette), self.limits.palette_radius)

    @classmethod
    def load(cls, ctx: StageContext) -> Review:
        from workers.models import registry

        brand = campaign_brand(ctx)
        spec = fidelity_spec(ctx.settings)
        embedder = model_call(spec, lambda: registry.image_embedder(spec)) if spec else None
        cuts = ctx.output(SegmentOutput).cuts()
        product = load_image(cuts[0].cutout_key).convert("RGBA")
        review = cls(
            ctx.output(CaptionOutput).caption,
            product,
            list(brand.guidelines or []),
            list(brand.palette or []),
            thresholds(ctx.settings, brand.qc_thresholds),
            embedder,
            brand.unchecked or DEFAULT_UNCHECKED,
        )
        if len(cuts) > 1:
            review.products = {c.product_asset_id: load_image(c.cutout_key).convert("RGBA") for c in cuts}
        # the campaign's copy, else the copy suggested with a brief inferred from the product (a creative from
        # the product alone); neither: no creative version
        review.copy = overlay.copy_of(creative_copy(ctx.campaign))
        if review.copy is not None:  # the logo and font are read from storage once per process
            stored = StoredKit.of(brand.kit)
            review.kit, review.kit_files = overlay.render_kit(stored), overlay.ingredients(stored)
            review.zones = ctx.output(PlanOutput).canvas_safe_zones
        return review

    def creative_of(self, cand: Candidate, image: Image.Image, layer: Image.Image) -> dict[str, Any] | None:
        """Render and store the candidate's creative (campaigns with copy); its overlay_layout verdict. The layout
        goes into qc["creative"] (set by the caller), the product proof of the stored creative into the
        integrity record."""
        if self.copy is None:
            return None
        w, h = image.size
        creative = overlay.render(image, layer, self.copy, self.kit, self.zones.get(f"{w}x{h}", []))
        record: dict[str, Any] = {
            "layout": creative.layout.model_dump(mode="json"),
            "key": None,
            "ingredients": self.kit_files,
        }
        if creative.layout.ok:  # its integrity entry once the writer stored it (before the stage returns)
            record["key"] = overlay.store(
                cand.image_key or "", creative, layer, self.writer, lambda entry: _with_creative(cand, entry)
            )
        else:  # a creative from an earlier run of this task is no longer this candidate's
            cand.integrity = {k: v for k, v in (cand.integrity or {}).items() if k != "creative"}
        return {"verdict": overlay.verdict(creative.layout), "record": record}

    def guidelines_of(
        self, ctx: StageContext, cand: Candidate, image: Image.Image, layer: Image.Image
    ) -> dict[str, Any]:
        from workers.checks import guideline

        with llm_failures("qc"):
            result = guideline.check(
                image,
                layer,
                self.product_of(cand),
                self.caption,
                self.guidelines,
                ctx.campaign.qc_policy,
                ctx.settings.for_stage("guideline"),
                scene=self.scene_of(ctx, cand, image),
            )
        ctx.rows += llm_call_rows(ctx, result, key=cand.layout_key)
        return {k: v for k, v in result.items() if k != "calls"}


def run(ctx: StageContext) -> dict[str, Any]:
    review = Review.load(ctx)
    cands = _batch(ctx)
    pixels = [(load_image(c.image_key).convert("RGB"), load_image(c.layer_key).convert("RGBA")) for c in cands]
    # DINOv2 compares each candidate's product with the source product, not with the layer pasted into it.
    sources = [(i, review.sources.layer(c) or lay) for c, (i, lay) in zip(cands, pixels, strict=True)]
    seen = embeddings(review.embedder, sources)
    with review.writer:  # creatives are stored in the background while the next candidate is checked
        for cand, (image, layer), (cosine, embedding) in zip(cands, pixels, seen, strict=True):
            check_one(ctx, review, cand, image, layer, cosine)
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


def check_one(
    ctx: StageContext, review: Review, cand: Candidate, image: Image.Image, layer: Image.Image, cosine: float | None
) -> None:
    from workers.checks import brand_rules, duplicates, expansion, fidelity, mask_quality

    limits = review.limits
    source = review.sources.layer(cand)  # the product re-derived from the source photo, not the pasted layer
    metrics = {**fidelity.fidelity(image, layer, source), "dino_cosine": cosine, "phash": duplicates.phash(image)}
    metrics |= expansion.measure(image, source or layer)  # did the generated pixels grow the product?
    rules = brand_rules.check(image, layer, review.palette, list(ctx.campaign.safe_zones or []), limits.model_dump())
    creative = review.creative_of(cand, image, layer)  # None without campaign copy
    verdicts = [
        *product.product_checks(metrics, limits),
        *expansion.check(metrics),
        product.frame_check(layer),
        # a fringe of the source photo's backdrop on the placed product's edge (advisory until measured)
        *mask_quality.halo_verdicts(ctx.output(SegmentOutput).cut(product_id(cand)).quality, image, layer),
        *[{**v, "group": "brand"} for v in rules],
        *([creative["verdict"]] if creative else []),
    ]
    cand.qc = {"metrics": metrics, "verdicts": verdicts, "thresholds": limits.model_dump()}
    if creative:
        cand.qc["creative"] = creative["record"]
    if not any(v["status"] == "fail" for v in verdicts if v["group"] == "product"):
        cand.qc["guidelines"] = review.guidelines_of(ctx, cand, image, layer)  # costly: intact products only
    else:
        cand.qc["guidelines_skipped"] = "the product is not exactly the product; guidelines were not reviewed"
    cand.qc["policy"] = policy.decide(
        policy.checks(cand.qc), ctx.campaign.qc_policy, limits.weighted_threshold, unchecked=review.unchecked
    )
    cand.passed = cand.qc["policy"]["passed"]


def _with_creative(cand: Candidate, entry: dict[str, Any]) -> None:
    cand.integrity = {**(cand.integrity or {}), "creative": entry}


def product_id(cand: Candidate) -> str | None:
    """The product asset the candidate shows (None: a candidate from before candidates named it: the first)."""
    found = (cand.placement or {}).get("product_asset_id")
    return str(found) if found else None


def embeddings(
    embedder: ImageEmbedder | None, pixels: list[tuple[Image.Image, Image.Image]]
) -> list[tuple[float | None, list[float] | None]]:
    """(product-crop cosine, whole-candidate embedding) per candidate; (None, None) without DINOv2."""
    if embedder is None:
        return [(None, None)] * len(pixels)
    from workers.checks import fidelity

    crops = [fidelity.product_crops(image, layer) for image, layer in pixels]
    cosines = embedder.similarity([c for c, _ in crops], [r for _, r in crops])
    whole = embedder.embed([image for image, _ in pixels])
    return [(round(float(c), 6), [float(x) for x in e]) for c, e in zip(cosines, whole, strict=True)]
