"""The typed outputs the stages publish for the stages after them (stored per stage in campaign.state).

Language stages keep their backend's record (which backend and model answered, the fallback and why,
each call) beside what they decided, so a campaign shows how every text was made.
"""

from __future__ import annotations

from typing import Any

from workers.engine.context import StageError, StageOutput


class LanguageRecord(StageOutput):
    backend: str
    model: str
    fallback_reason: str | None = None
    prompt_version: str | None = None
    calls: list[dict[str, Any]] = []
    guards: dict[str, Any] = {}


class DecomposeOutput(LanguageRecord):
    stage = "decompose"
    brief: str
    # request | inferred (from the products, workers.pipeline.brief) | review (a reviewer's replacement)
    brief_source: str = "request"
    english: str | None = None  # the brief in English when a hosted backend translated it
    products: list[str]
    backgrounds: list[str]
    themes: list[str]
    mood: str | None = None
    season: str | None = None
    audience: str | None = None
    negatives: list[str] = []
    validation_error: str | None = None


class Match(StageOutput):
    asset_id: str
    title: str
    score: float
    parts: dict[str, Any]


class Entity(StageOutput):
    text: str
    kind: str  # product | background | reference
    boost: str | None  # the KPI past campaigns are ranked by, for references
    matches: list[Match]


class RetrieveOutput(StageOutput):
    stage = "retrieve"
    product_asset_id: str  # the first product (every product when the campaign names several: product_asset_ids)
    product_title: str
    product_source: str  # named | retrieved
    product_score: float | None
    background_asset_id: str | None
    background_caption: str | None
    background_score: float | None
    background_reason: str | None
    references: list[Match]
    reference_kpi: str
    entities: list[Entity]
    model: str
    min_score: float
    # Every product the campaign places, one scene set each, in the request's order (older state: the one above).
    product_asset_ids: list[str] = []
    # What the review round's change (shared.review.Change, workers.engine.review) made this stage do; None outside one
    review: dict[str, Any] | None = None
    # Per canvas ("WxH"), the background whose aspect suits it best among those about as relevant as the best one
    # (workers.pipeline.retrieve.fit_backgrounds); a canvas not named here uses background_asset_id.
    backgrounds_by_size: dict[str, str] = {}

    def products(self) -> list[str]:
        return self.product_asset_ids or [self.product_asset_id]

    def background_for(self, canvas: tuple[int, int]) -> str | None:
        return self.backgrounds_by_size.get(f"{canvas[0]}x{canvas[1]}", self.background_asset_id)

    def background_ids(self) -> list[str]:
        """Every background the campaign's canvases were composed on, the primary one first."""
        found = [self.background_asset_id, *self.backgrounds_by_size.values()]
        return list(dict.fromkeys(b for b in found if b))


class CaptionOutput(LanguageRecord):
    stage = "caption"
    caption: str
    negative_prompt: str = ""
    parts: dict[str, Any] = {}
    # After a revision (the revise stage publishes a new caption): what it replaced and why.
    previous_caption: str | None = None
    change: str | None = None
    failures: list[dict[str, Any]] = []
    # What the review round's change (shared.review.Change, workers.engine.review) made this stage do; None outside one
    review: dict[str, Any] | None = None


class ProductCut(StageOutput):
    """One product's mask and cut-out (segment publishes one per product of the campaign)."""

    product_asset_id: str
    adapter: str
    model: str | None
    method: str
    quality: dict[str, Any]
    mask_key: str
    antimask_key: str
    cutout_key: str
    cutout_size: list[int]
    attempts: list[dict[str, Any]] = []
    alpha_key: str | None = None
    # "" with one product; "p<n>-" (n: the product's place in product_asset_ids) with several, so layout keys
    # and stored images of different products never collide
    key_prefix: str = ""


class SegmentOutput(StageOutput):
    """The first segmented product at the top level (what single-product readers use) and, with several
    products, every one in `products`; a product that could not be segmented is in `failed_products`."""

    stage = "segment"
    adapter: str
    model: str | None
    method: str
    quality: dict[str, Any]
    mask_key: str
    antimask_key: str
    cutout_key: str
    cutout_size: list[int]
    product_asset_id: str
    # the default chooser's record: which method made the mask and why earlier ones were passed over
    attempts: list[dict[str, Any]] = []
    # The soft alpha at the source photo's size (PNG, L): the mask integrity records name and re-derive from.
    alpha_key: str | None = None
    products: list[ProductCut] = []
    failed_products: list[dict[str, Any]] = []  # {product_asset_id, code, reason}

    def cuts(self) -> list[ProductCut]:
        """Every segmented product (older single-product state: the top-level one)."""
        if self.products:
            return self.products
        fields = self.model_dump(exclude={"products", "failed_products"})
        return [ProductCut.model_validate(fields)]

    def cut(self, product_asset_id: str | None) -> ProductCut:
        """The named product's cut (None: the first product, as single-product state has it)."""
        cuts = self.cuts()
        if product_asset_id is None:
            return cuts[0]
        for cut in cuts:
            if cut.product_asset_id == product_asset_id:
                return cut
        raise StageError("product_missing", f"product asset {product_asset_id} was not segmented for this campaign")


class ScaleOutput(LanguageRecord):
    stage = "scale"
    share: float
    reason: str
    method: str  # vision | classical
    clamped: bool = False


class PlanOutput(StageOutput):
    stage = "plan"
    layouts: list[dict[str, Any]]
    batch_size: int
    batches: int
    grid: list[int]
    rotations: list[float]
    canvases: list[list[int]]
    skipped_canvases: list[dict[str, Any]]
    safe_zones: list[dict[str, Any]]
    safe_zone_exclusions: dict[str, int]  # "WxH" -> layouts dropped because they cover a safe zone
    # "WxH" -> every zone kept free on that canvas: the campaign's safe_zones plus its size's preset zones
    canvas_safe_zones: dict[str, list[dict[str, Any]]] = {}
    scale_share: float
    max_upscale: float
    min_share: float
    anchor: str
    attempt: int
    # What the review round's change (shared.review.Change, workers.engine.review) made this stage do; None outside one
    review: dict[str, Any] | None = None


class QcSummary(StageOutput):
    """What the campaign resource shows of QC (published by rank): the policy, what it relaxed, the counts."""

    stage = "qc"
    policy: str
    relaxed: list[dict[str, Any]]
    candidates: int
    passed: int
    clusters: int
    duplicates: int
    ranked: int
    aesthetic: str
    dinov2: str | None
    # Of the ranked: every rule checked and passed; flagged needs_review (unchecked rules, or a fallback);
    # fallbacks (failed only advisory or flexible checks, ranked because too few passed in the last round)
    fully_checked: int = 0
    needs_review: int = 0
    fallback: int = 0
    # The brand's learned weights that ordered the candidates ({version, pairs, decisions} of its BrandRanker,
    # workers.ranking); None: aesthetic order only (no ranker yet, or too few reviewed pairs)
    ranker: dict[str, int] | None = None


class Revision(StageOutput):
    """One caption revision; campaign.state["revisions"] lists them in order (the API shows the history)."""

    round: int
    previous_caption: str | None
    caption: str
    change: str | None
    backend: str
    fallback_reason: str | None
