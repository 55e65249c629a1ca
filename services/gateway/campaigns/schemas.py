"""Campaign request and response bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    WithJsonSchema,
    model_serializer,
    model_validator,
)
from pydantic_core import PydanticCustomError

from services.gateway.campaigns.brief import BriefInferred
from services.gateway.errors import UNKNOWN_PRESET
from services.gateway.guardrails.schemas import Screening
from services.gateway.webhook_targets import WebhookUrl
from shared.brand_kit import CampaignCopy
from shared.db.models import CampaignPriority, CampaignStatus, FeedbackStatus, OutboxStatus, ResultDecision, ReviewState
from shared.presets import PRESET_NAMES, PRESETS

QcPolicy = Literal["strict", "flexible", "weighted"]
StageStatus = Literal["pending", "running", "succeeded", "failed", "skipped"]
Dimension = Annotated[int, Field(ge=256, le=4096, strict=True)]


def _unique(ids: list[uuid.UUID]) -> list[uuid.UUID]:
    return list(dict.fromkeys(ids))  # repeated ids mean the same product once; keep the order


# One scene set per product: every named product is segmented, planned, generated, checked and ranked on its
# own, and gets up to top_k results.
MAX_PRODUCTS = 20


Aspect = Literal["1:1", "4:5", "9:16", "16:9", "1.91:1"]
# The ad platforms' recommended pixel sizes for each named aspect ratio (feed, portrait, story, video, link).
AD_SIZES: dict[str, tuple[int, int]] = {
    "1:1": (1080, 1080),
    "4:5": (1080, 1350),
    "9:16": (1080, 1920),
    "16:9": (1920, 1080),
    "1.91:1": (1200, 628),
}
Fraction = Annotated[float, Field(ge=0.0, le=1.0, strict=True)]


def _known_preset(name: str) -> str:
    if name not in PRESETS:
        # The name is not echoed (it may be anything): the error type is the stable code clients branch on.
        raise PydanticCustomError(UNKNOWN_PRESET, "unknown preset: GET /v1/presets lists the preset names")
    return name


PresetName = Annotated[
    str,
    AfterValidator(_known_preset),
    WithJsonSchema({"type": "string", "enum": list(PRESET_NAMES)}),
]


class Size(BaseModel):
    """An ad size: a named preset (its pixel size and platform safe zones, GET /v1/presets), a named aspect
    ratio (resolved to its standard pixel size) or explicit width and height."""

    model_config = ConfigDict(extra="forbid")

    preset: PresetName | None = Field(
        None,
        description="A named placement (GET /v1/presets): its pixel size, and its platform safe zones the "
        "product is kept out of. Unknown names are a 422 `unknown_preset`.",
    )
    aspect: Aspect | None = None
    width: Dimension | None = None
    height: Dimension | None = None

    @model_validator(mode="after")
    def _resolve(self) -> Size:
        if self.preset is not None:
            return self._resolve_preset(self.preset)
        if self.aspect is None:
            if self.width is None or self.height is None:
                raise ValueError("give a preset, an aspect (1:1, 4:5, 9:16, 16:9, 1.91:1) or both width and height")
            return self
        standard = AD_SIZES[self.aspect]
        if (self.width, self.height) not in ((None, None), standard):
            raise ValueError(
                f"aspect {self.aspect} is {standard[0]}x{standard[1]}; give the aspect or a size, not both"
            )
        self.width, self.height = standard
        return self

    def _resolve_preset(self, name: str) -> Size:
        preset = PRESETS[name]
        if self.aspect is not None or (self.width, self.height) not in ((None, None), (preset.width, preset.height)):
            raise ValueError(f"preset {name} is {preset.width}x{preset.height}; give the preset alone")
        # Assigned after validation: IAB presets are smaller than the 256 px an explicit size must have.
        self.width, self.height = preset.width, preset.height
        return self

    @model_serializer(mode="wrap")
    def _without_unset_names(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        return {k: v for k, v in data.items() if not (k in ("aspect", "preset") and v is None)}


def _unique_sizes(sizes: list[Size]) -> list[Size]:
    """One deliverable per canvas: a size repeated (story and reels are both 1080x1920) counts once, the first."""
    kept: dict[tuple[int | None, int | None], Size] = {}
    for size in sizes:
        kept.setdefault((size.width, size.height), size)
    return list(kept.values())


class SizeRead(BaseModel):
    """A requested size as stored: its pixel size, and the preset or aspect it was named by."""

    preset: str | None = Field(None, exclude_if=lambda value: value is None)
    aspect: Aspect | None = Field(None, exclude_if=lambda value: value is None)
    width: int
    height: int


class ResultSize(BaseModel):
    """The size a result was made for (results are ranked top_k per product and size)."""

    width: int
    height: int
    label: str = Field(description="WIDTHxHEIGHT")
    preset: str | None = Field(None, exclude_if=lambda value: value is None)
    aspect: Aspect | None = Field(None, exclude_if=lambda value: value is None)


class SafeZone(BaseModel):
    """A region of every canvas the product must not cover (text, logo), in fractions of the canvas."""

    model_config = ConfigDict(extra="forbid")

    label: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=50)] = "text"
    x: Fraction
    y: Fraction
    width: Annotated[float, Field(gt=0.0, le=1.0, strict=True)]
    height: Annotated[float, Field(gt=0.0, le=1.0, strict=True)]

    @model_validator(mode="after")
    def _inside(self) -> SafeZone:
        if self.x + self.width > 1.0 + 1e-9 or self.y + self.height > 1.0 + 1e-9:
            raise ValueError("the zone reaches past the canvas (x + width and y + height must be <= 1)")
        return self


class PushUrls(BaseModel):
    """Presigned PUT URLs for one rank's image and JSON sidecar. They are credentials: never echoed."""

    model_config = ConfigDict(extra="forbid")

    image: WebhookUrl
    sidecar: WebhookUrl
    # left out of dumps when None: a request without it hashes as before (stored Idempotency-Keys still replay)
    creative: WebhookUrl | None = Field(
        None, description="The creative version's PUT URL (campaigns with copy).", exclude_if=lambda v: v is None
    )


class CampaignCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    brand_id: uuid.UUID
    brief: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)] | None = Field(
        None,
        exclude_if=lambda value: value is None,  # a request with a brief hashes as before (Idempotency-Key)
        description="Optional: without one, the brief is inferred from the named products (at least one, else 422 "
        "brief_or_product_required) and the brand's best past campaigns by reviewer approval rate; "
        "the campaign shows it as brief_inferred.",
    )
    product_asset_ids: Annotated[list[uuid.UUID], AfterValidator(_unique)] = Field(
        default_factory=list,
        max_length=MAX_PRODUCTS,
        description="One scene set per product: every named product asset (up to 20, repeated ids count once) "
        "is segmented, planned, generated and checked on its own and gets up to top_k results, each result "
        "naming its product_asset_id. A product that cannot be segmented fails only its own scenes (the "
        "campaign ends partial, naming it and why; failed only if no product got results). Empty: one product "
        "is retrieved by the brief.",
    )
    sizes: Annotated[list[Size], AfterValidator(_unique_sizes)] = Field(
        default_factory=lambda: [Size(width=1024, height=1024)],
        min_length=1,
        max_length=6,
        description="Every size is its own deliverable: planned on its own canvas (with its preset's safe zones) "
        "and ranked on its own, top_k results per product and size. A size given twice (story and reels are both "
        "1080x1920) counts once, the first.",
    )
    safe_zones: list[SafeZone] = Field(
        default_factory=list,
        max_length=8,
        description="Regions the product must not cover on any canvas (headline, logo), in canvas fractions; "
        "a preset's own platform zones apply to its size besides these.",
    )
    top_k: int = Field(3, ge=1, le=10, strict=True, description="Results per product and per size.")
    copy_: CampaignCopy | None = Field(
        None,
        alias="copy",
        exclude_if=lambda value: value is None,  # a request without copy hashes as before (Idempotency-Key)
        description="Headline, call to action and optional legal line, in any language and script: every result "
        "then also gets a creative version (the brand kit's logo and this copy drawn outside the product, "
        "contrast >= 4.5, read back by OCR). Screened by the input guardrails like the brief.",
    )
    qc_policy: QcPolicy = "strict"
    max_retry_attempts: int = Field(1, ge=0, le=5, strict=True)
    max_prompt_revisions: int = Field(1, ge=0, le=5, strict=True)
    priority: CampaignPriority = Field(
        CampaignPriority.STANDARD,
        description="Orders GPU work among this tenant's own campaigns (interactive first, batch last); between "
        "tenants the fair share decides.",
    )
    webhook_url: WebhookUrl | None = Field(None, description="Receives this campaign's events (Standard Webhooks).")
    push_urls: list[PushUrls] | None = Field(
        None,
        min_length=1,
        max_length=10,
        description="Presigned PUT URLs, one entry per rank (rank 1 first): the "
        "results and their sidecars are uploaded there on completion. Never shown again.",
    )


class PushSummary(BaseModel):
    presigned_urls: int = Field(description="How many ranks have presigned PUT URLs (the URLs are not shown).")


class CampaignRequest(BaseModel):
    """The accepted request, echoed back as stored."""

    model_config = ConfigDict(serialize_by_alias=True)

    product_asset_ids: list[uuid.UUID]
    sizes: list[SizeRead]
    safe_zones: list[SafeZone] = Field(default_factory=list)
    top_k: int
    qc_policy: QcPolicy
    max_retry_attempts: int
    max_prompt_revisions: int
    priority: CampaignPriority
    webhook_url: str | None
    # Left out when the campaign has no push URLs (the request is echoed as it was sent).
    push: PushSummary | None = Field(None, exclude_if=lambda value: value is None)
    copy_: CampaignCopy | None = Field(None, alias="copy", exclude_if=lambda value: value is None)


class StageRead(BaseModel):
    stage: str
    status: StageStatus
    done: int = Field(description="Items finished (succeeded, failed or skipped) over every round.")
    total: int
    started_at: datetime | None
    finished_at: datetime | None


class ReviewReason(BaseModel):
    check: str
    kind: Literal["unchecked", "advisory", "flexible"] = Field(
        description="unchecked: QC could not judge the rule; advisory: a check not (yet) measured to gate, "
        "failed; flexible: a flexible brand guideline, failed."
    )
    reason: str


class ResultReview(BaseModel):
    fallback: bool = Field(
        default=False,
        description="Did not pass QC: failed only advisory or flexible checks, and stands in because fewer than "
        "top_k candidates passed once the loop was over.",
    )
    reasons: list[ReviewReason] = Field(default_factory=list)


class CreativeText(BaseModel):
    element: Literal["headline", "cta", "legal"]
    text: str
    contrast: float = Field(description="WCAG 2.x contrast against the pixels behind it (after a scrim), worst case.")
    font_px: int
    backing: Literal["none", "scrim", "button"]
    script: str
    direction: Literal["ltr", "rtl"]


class CreativeOcr(BaseModel):
    status: Literal["passed", "failed", "unchecked"] = Field(
        description="failed: an element read back differently (the result needs review); unchecked: a script the "
        'OCR model cannot read ("unchecked: no OCR model for Arabic"), never counted as passed.'
    )
    checks: list[dict[str, Any]] = Field(default_factory=list, description="Per element: expected, read, reason.")
    model: str = ""
    seconds: float = 0.0


class CreativeRead(BaseModel):
    """The creative version's layout (the overlay's record) and, once delivered, its OCR read-back."""

    ok: bool = Field(description="The layout met every rule; false: see reasons (the overlay_layout check failed).")
    reasons: list[str] = Field(default_factory=list)
    texts: list[CreativeText] = Field(default_factory=list)
    ocr: CreativeOcr | None = Field(None, description="The OCR read-back at delivery (null before).")


class ResultRead(BaseModel):
    id: uuid.UUID = Field(description="The result id: approve or reject it at /results/{id}/approve|reject.")
    review_round: int = Field(0, description="The review round that ranked it (0: the first delivery).")
    rank: int
    candidate_id: uuid.UUID
    product_asset_id: uuid.UUID | None = Field(
        None, description="The product asset this result shows (each named product gets its own results)."
    )
    image_url: str | None
    layer_url: str | None
    placement: dict[str, Any]
    aesthetic: float | None
    fully_checked: bool = Field(description="Every rule was checked and passed. Unchecked is never a pass.")
    needs_review: bool = Field(description="Needs a human look before use; review.reasons says why.")
    review: ResultReview
    qc: dict[str, Any]
    decision: ResultDecision | None = Field(None, description="A reviewer's latest decision (history: /decisions).")
    decided_by: str | None = None
    decided_at: datetime | None = None
    size: ResultSize | None = Field(None, description="The size (canvas) this result was made for.")
    size_rank: int | None = Field(
        None, description="Its rank among the results of its product and size (each gets up to top_k)."
    )
    creative_url: str | None = Field(
        None, description="The creative version (brand-kit overlay), C2PA-signed; null without campaign copy."
    )
    creative: CreativeRead | None = Field(None, description="The creative's layout and OCR verdict.")


class SizeResults(BaseModel):
    """One deliverable: a requested size (of one product, with several), and its results in rank order."""

    size: ResultSize
    product_asset_id: uuid.UUID | None = None
    top_k: int
    delivered: int
    result_ids: list[uuid.UUID]


class CampaignLinks(BaseModel):
    self: str
    candidates: str
    report: str
    pushes: str
    decisions: str
    feedback: str
    review_links: str


class RoundFeedback(BaseModel):
    """The feedback that started a review round and what the router made of it."""

    id: uuid.UUID
    text: str
    reasons: list[str]
    status: FeedbackStatus
    change: dict[str, Any] = Field(description="The routed change (shared.review.Change); empty until routed.")
    not_understood: list[Any]
    notes: list[Any] = Field(description="What each routed sentence or reason became.")
    router: str | None
    entry_stage: str | None
    first_round: int | None
    reviewer: str
    created_at: datetime


class ReviewRound(BaseModel):
    review_round: int
    feedback: RoundFeedback | None = Field(description="What started it; null for the first delivery (0).")
    results: int
    approved: int
    rejected: int


class PushRead(BaseModel):
    """One push of the campaign's results: to a brand's delivery target (s3) or its own URLs (presigned)."""

    id: uuid.UUID
    kind: str = Field(description="s3 | presigned")
    target_id: uuid.UUID | None
    status: OutboxStatus
    attempts: int
    last_error: str | None
    objects: list[dict[str, Any]] = Field(description="Uploaded so far: name, url (without query), bytes, sha256.")
    next_attempt_at: datetime
    delivered_at: datetime | None
    created_at: datetime


class CheckRate(BaseModel):
    pass_: int = Field(alias="pass")
    fail: int
    unchecked: int
    pass_rate: float | None = Field(description="pass / (pass + fail); null when never checked.")

    model_config = ConfigDict(populate_by_name=True, serialize_by_alias=True)


class BlockingCheck(BaseModel):
    check: str
    failed: int


class CampaignCostRead(BaseModel):
    """What the campaign cost in GPU time (shared.costs): its GPU-queue stage runs, claim to finish, per delivered
    image, and dollars at the deployment's GPU price (ONBRAND_GPU_PRICE_USD_PER_HOUR)."""

    gpu_seconds: float
    delivered: int = Field(description="Results, every review round.")
    gpu_seconds_per_image: float | None = Field(description="None until something was delivered.")
    usd_per_image: float | None
    gpu_price_usd_per_hour: float
    gpu_seconds_by_stage: dict[str, float]
    generation_seconds: float = Field(description="The generator's own time, from the generation records.")
    devices: list[str] = Field(description="Where the generator ran (cpu on the embedded defaults).")


class CampaignReport(BaseModel):
    """QC over a campaign's candidates so far: pass rates per check, outcomes, what kept candidates out."""

    campaign_id: uuid.UUID
    status: str
    policy: QcPolicy
    top_k: int
    candidates: int
    outcomes: dict[str, int] = Field(description="ranked | passed_not_ranked | duplicate | failed | unchecked")
    rounds: dict[str, dict[str, int]] = Field(description="Outcomes per round.")
    checks: dict[str, CheckRate] = Field(description="Per check (product, brand and guideline alike).")
    blocking: list[BlockingCheck] = Field(description="Checks that failed at least once, most failures first.")
    relaxed: list[dict[str, Any]] = Field(description="flexible policy: guidelines relaxed, in order, with weight.")
    clusters: int | None = Field(None, description="Near-duplicate clusters among the candidates at the last rank.")
    revisions: list[dict[str, Any]] = Field(default_factory=list, description="Caption revisions of the loop.")
    cost: CampaignCostRead | None = Field(None, description="GPU-seconds and dollars per delivered image.")


class LlmUsage(BaseModel):
    """Totals of the campaign's language-model calls (the per-call log is in Postgres, llm_calls)."""

    calls: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = Field(0.0, description="Estimate; calls to models without a known price count 0.")
    latency_ms: float = Field(0.0, description="Sum over the calls.")


class ResultsChecked(BaseModel):
    """How many of the campaign's results were fully checked and how many need review, and why."""

    results: int = 0
    fully_checked: int = Field(0, description="Every rule checked and passed.")
    needs_review: int = Field(0, description="Flagged: unchecked rules, or a fallback (see fallback).")
    fallback: int = Field(0, description="Failed only advisory or flexible checks; stand in for missing results.")
    reasons: dict[str, int] = Field(
        default_factory=dict, description='"kind: check" (kind unchecked | advisory | flexible) -> results.'
    )
    message: str = "0 of 0 result(s) fully checked (every rule checked and passed)"


class CampaignRead(BaseModel):
    id: uuid.UUID
    brand_id: uuid.UUID
    brief: str = Field(description='The request\'s brief; "" when it was inferred (brief_inferred).')
    brief_inferred: BriefInferred | None = Field(None, description="Null when the request had a brief.")
    status: CampaignStatus
    current_stage: str | None
    round: int
    review_state: ReviewState | None = Field(
        None, description="pending | approved | changes_requested | rejected; null until results are delivered."
    )
    review_round: int = Field(0, description="The current review round; `results` are this round's.")
    review_rounds: list[ReviewRound] = Field(default_factory=list)
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None
    request: CampaignRequest
    progress: float = Field(ge=0, le=1, description="Share of pipeline stages finished; 1 once terminal.")
    stages: list[StageRead]
    state: dict[str, Any]
    results: list[ResultRead]
    results_by_size: list[SizeResults] = Field(
        default_factory=list,
        description="The results grouped per requested size (and product, with several): every size is its own "
        "deliverable of up to top_k results.",
    )
    checked: ResultsChecked = Field(default_factory=ResultsChecked)
    llm: LlmUsage = Field(default_factory=LlmUsage)
    error: dict[str, Any] | None
    links: CampaignLinks
    screening: Screening | None = Field(
        None, description="Which input guardrails screened the request (null: made before they existed)."
    )


class CampaignCreated(CampaignRead):
    status_url: str
    webhook_secret: str | None = Field(
        None, description="Signs the events sent to webhook_url; returned only by create (and its replays)."
    )


class CandidateRead(BaseModel):
    id: uuid.UUID
    round: int
    layout_key: str
    placement: dict[str, Any]
    image_url: str | None
    layer_url: str | None
    generator: str
    integrity: dict[str, Any] = Field(
        description="Exact-pixel fraction and sha256 of the product region (as placed "
        "and in the candidate), and the placement."
    )
    generation: dict[str, Any] = Field(
        default_factory=dict, description="Adapter, model, seed, device, passes and GPU-seconds of this candidate."
    )
    qc: dict[str, Any]
    passed: bool | None
    aesthetic: float | None
    rank: int | None
    excluded_reason: str | None
