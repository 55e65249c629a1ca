"""SQLAlchemy models. Every tenant-owned table carries tenant_id; every query filters by it."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    Computed,
    Date,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    and_,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.sql.elements import ColumnElement

# Keyword side of hybrid search: title and tags weigh most (A), attribute values B, description C.
# onbrand_join_tags is an IMMUTABLE wrapper of array_to_string created by migration 0002.
ASSET_SEARCH_TSV = (
    "setweight(to_tsvector('english', coalesce(title, '')), 'A') || "
    "setweight(to_tsvector('english', onbrand_join_tags(tags)), 'A') || "
    "setweight(jsonb_to_tsvector('english', coalesce(attributes, '{}'::jsonb), '[\"string\", \"numeric\"]'), 'B') || "
    "setweight(to_tsvector('english', coalesce(description, '')), 'C')"
)


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSONB, list[Any]: JSONB, uuid.UUID: UUID(as_uuid=True)}


def _id() -> Mapped[uuid.UUID]:
    return mapped_column(primary_key=True, default=uuid.uuid4)


def _tenant() -> Mapped[uuid.UUID]:
    return mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)


def _created() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now())


def _status(enum: type[StrEnum], default: StrEnum, index: bool = False) -> Any:
    """A status column: VARCHAR(20) in the database (no native enum to migrate), the StrEnum in Python."""
    column = Enum(enum, native_enum=False, length=20, values_callable=lambda e: [m.value for m in e])
    return mapped_column(column, default=default, index=index)


class CampaignStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    PARTIAL = "partial"  # the loop's bounds ran out with fewer than top_k results
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset(
    {CampaignStatus.COMPLETED, CampaignStatus.PARTIAL, CampaignStatus.FAILED, CampaignStatus.CANCELLED}
)


class CampaignPriority(StrEnum):
    """Orders GPU dispatch among one tenant's campaigns (workers.engine.dispatch); never across tenants, where the
    fair share decides (a tenant cannot jump the others' queue by calling everything interactive)."""

    INTERACTIVE = "interactive"  # someone is waiting for it
    STANDARD = "standard"
    BATCH = "batch"  # bulk runs: only when the tenant has nothing else waiting


class StageRunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class CandidateStatus(StrEnum):
    """Where a candidate ended up, derived from its QC verdict and rank (see Candidate.status)."""

    UNCHECKED = "unchecked"
    FAILED = "failed"
    DUPLICATE = "duplicate"  # passed, but a near-duplicate of a better candidate
    PASSED_NOT_RANKED = "passed_not_ranked"
    RANKED = "ranked"


class OutboxStatus(StrEnum):
    """A webhook delivery's or a DAM push's state."""

    PENDING = "pending"
    DELIVERED = "delivered"
    FAILED = "failed"


class ReviewState(StrEnum):
    """A campaign's human review (campaigns.review_state; None until it has delivered results)."""

    PENDING = "pending"  # results delivered, waiting for a reviewer
    APPROVED = "approved"  # every result of the review round decided, at least one approved
    CHANGES_REQUESTED = "changes_requested"  # feedback sent: a new review round regenerates
    REJECTED = "rejected"  # every result of the review round rejected, no feedback


class ResultDecision(StrEnum):
    APPROVED = "approved"
    REJECTED = "rejected"


class FeedbackStatus(StrEnum):
    ROUTING = "routing"  # accepted; the feedback router (llm queue) has not answered yet
    APPLIED = "applied"  # routed to a change; its review round is running or done
    NOT_UNDERSTOOD = "not_understood"  # nothing in it could be routed: no round started, the reviewer is told why
    FAILED = "failed"  # the router failed for good (error says why)


class DamPushPolicy(StrEnum):
    """When a brand's results go to its DAM targets (brands.dam_push)."""

    ON_COMPLETION = "on_completion"  # every delivered result, when the campaign completes
    ON_APPROVAL = "on_approval"  # only approved results, when the campaign is approved


class Tenant(Base):
    __tablename__ = "tenants"
    id: Mapped[uuid.UUID] = _id()
    name: Mapped[str] = mapped_column(String(200))
    # Input guardrails: terms refused in this tenant's briefs, brand text and asset metadata.
    blocked_terms: Mapped[list[Any]] = mapped_column(default=list, server_default="[]")
    created_at: Mapped[datetime] = _created()
    # Per-tenant overrides of the rate limits and quotas (shared.limits.LimitOverrides); null: the defaults.
    limits: Mapped[dict[str, Any] | None] = mapped_column(JSONB)


class ApiKey(Base):
    __tablename__ = "api_keys"
    id: Mapped[uuid.UUID] = _id()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the whole key
    created_at: Mapped[datetime] = _created()
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    name: Mapped[str] = mapped_column(String(100), default="default", server_default="default")
    # read | write | admin (shared.tenants.SCOPES); keys from before 0011 got all three
    scopes: Mapped[list[str]] = mapped_column(
        ARRAY(String(10)), default=lambda: ["read", "write", "admin"], server_default="{read,write,admin}"
    )
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # refreshed at most once a minute
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # set by a rotation's overlap


class Brand(Base):
    __tablename__ = "brands"
    id: Mapped[uuid.UUID] = _id()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    name: Mapped[str] = mapped_column(String(200))
    palette: Mapped[list[Any]] = mapped_column(default=list)  # ["#RRGGBB", ...]
    guidelines: Mapped[list[Any]] = mapped_column(default=list)  # [{text, flexible, weight}]
    forbidden_terms: Mapped[list[Any]] = mapped_column(default=list)  # never in a positive prompt
    qc_thresholds: Mapped[dict[str, Any]] = mapped_column(default=dict)  # overrides of shared.qc.QcThresholds
    # What an unchecked rule means for this brand's results: review | fail | pass (shared.qc.UNCHECKED_POLICIES)
    unchecked: Mapped[str] = mapped_column(String(10), default="review")
    dam_push: Mapped[DamPushPolicy] = _status(DamPushPolicy, DamPushPolicy.ON_COMPLETION)
    # Logos, fonts, text colours and layout rules for creatives (shared.brand_kit.BrandKit, migration 0017)
    kit: Mapped[dict[str, Any]] = mapped_column(default=dict, server_default="{}")
    created_at: Mapped[datetime] = _created()


class Asset(Base):
    __tablename__ = "assets"
    __table_args__ = (UniqueConstraint("tenant_id", "sha256"),)
    id: Mapped[uuid.UUID] = _id()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    brand_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("brands.id", ondelete="SET NULL"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # product | background | reference
    title: Mapped[str] = mapped_column(String(300), default="")
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[str]] = mapped_column(ARRAY(String(100)), default=list)
    attributes: Mapped[dict[str, Any]] = mapped_column(default=dict)
    kpis: Mapped[dict[str, Any]] = mapped_column(default=dict)
    sha256: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(50))
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    has_alpha: Mapped[bool] = mapped_column(Boolean, default=False)
    byte_size: Mapped[int] = mapped_column(BigInteger)
    storage_key: Mapped[str] = mapped_column(String(500))
    thumb_key: Mapped[str] = mapped_column(String(500))
    source_url: Mapped[str | None] = mapped_column(String(2000))
    screening: Mapped[dict[str, Any] | None] = mapped_column(JSONB)  # which input screens ran (guardrails)
    search_tsv: Mapped[Any] = mapped_column(TSVECTOR, Computed(ASSET_SEARCH_TSV, persisted=True), deferred=True)
    created_at: Mapped[datetime] = _created()


class AssetEmbedding(Base):
    """One row per (asset, model): two embedding spaces can coexist during a model change.

    The column has no fixed dimension; each space (model) has its own partial HNSW index over
    embedding::halfvec(dim), created by shared.search.ensure_space_index. kind, brand_id and
    tags copy the asset's so that filters run inside the index scan.
    """

    __tablename__ = "asset_embeddings"
    __table_args__ = (
        UniqueConstraint("asset_id", "model"),
        Index("ix_asset_embeddings_tenant_model", "tenant_id", "model"),
        Index("ix_asset_embeddings_filters", "tenant_id", "brand_id", "kind"),
    )
    id: Mapped[uuid.UUID] = _id()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    asset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("assets.id", ondelete="CASCADE"), index=True)
    model: Mapped[str] = mapped_column(String(200))
    modality: Mapped[str] = mapped_column(String(10), default="text", server_default="text")  # text | image
    dim: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[Any] = mapped_column(Vector())
    kind: Mapped[str] = mapped_column(String(20))
    brand_id: Mapped[uuid.UUID | None] = mapped_column()
    tags: Mapped[list[str] | None] = mapped_column(ARRAY(String(100)))
    created_at: Mapped[datetime] = _created()


class Campaign(Base):
    __tablename__ = "campaigns"
    id: Mapped[uuid.UUID] = _id()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    brand_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("brands.id", ondelete="CASCADE"), index=True)
    brief: Mapped[str] = mapped_column(Text)
    product_asset_ids: Mapped[list[Any]] = mapped_column(default=list)
    sizes: Mapped[list[Any]] = mapped_column(default=list)  # [{width, height, aspect?}]
    safe_zones: Mapped[list[Any]] = mapped_column(default=list)  # [{label, x, y, width, height}] canvas fractions
    top_k: Mapped[int] = mapped_column(Integer, default=3)
    qc_policy: Mapped[str] = mapped_column(String(20), default="strict")
    max_retry_attempts: Mapped[int] = mapped_column(Integer, default=1)
    max_prompt_revisions: Mapped[int] = mapped_column(Integer, default=1)
    webhook_url: Mapped[str | None] = mapped_column(String(2000))
    webhook_secret: Mapped[str | None] = mapped_column(String(200))
    event_sequence: Mapped[int] = mapped_column(Integer, default=0)  # last webhook event's sequence number
    # Presigned PUT URLs to push results to, per rank: [{image, sidecar}]; they are credentials, never echoed
    push_urls: Mapped[list[Any] | None] = mapped_column(JSONB)
    status: Mapped[CampaignStatus] = _status(CampaignStatus, CampaignStatus.QUEUED, index=True)
    priority: Mapped[CampaignPriority] = _status(CampaignPriority, CampaignPriority.STANDARD)
    current_stage: Mapped[str | None] = mapped_column(String(30))
    round: Mapped[int] = mapped_column(Integer, default=0)
    # Human review: the review round (0: the first delivery; each routed feedback starts the next one, whose
    # stage runs use new rounds) and its state (None until results are delivered).
    review_round: Mapped[int] = mapped_column(Integer, default=0)
    review_state: Mapped[ReviewState | None] = mapped_column(
        Enum(ReviewState, native_enum=False, length=20, values_callable=lambda e: [m.value for m in e]),
        nullable=True,
    )
    # Each stage's typed output (workers/pipeline/outputs.py) under its stage name, plus the revision history.
    state: Mapped[dict[str, Any]] = mapped_column(default=dict)
    # The retry/revise loop's bookkeeping and the events announced once (workers/engine/flow.py's LoopState).
    loop: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    screening: Mapped[dict[str, Any] | None] = mapped_column(JSONB)  # which input screens ran (guardrails)
    # Headline, CTA, legal for the creative version of each result (shared.brand_kit.CampaignCopy); null: none
    copy: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class StageRun(Base):
    """One row per (campaign, stage, round, item): the task's durable state and idempotency key."""

    __tablename__ = "stage_runs"
    __table_args__ = (
        UniqueConstraint("campaign_id", "stage", "round", "item"),
        # The dispatcher's reads (workers.engine.dispatch): runs waiting for a GPU slot, and runs holding one.
        Index(
            "ix_stage_runs_waiting", "tenant_id", postgresql_where=text("dispatched_at IS NULL AND status = 'pending'")
        ),
        Index(
            "ix_stage_runs_in_flight",
            "stage",
            postgresql_where=text("dispatched_at IS NOT NULL AND status IN ('pending', 'running')"),
        ),
    )
    id: Mapped[uuid.UUID] = _id()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    campaign_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    stage: Mapped[str] = mapped_column(String(30))
    round: Mapped[int] = mapped_column(Integer, default=0)
    item: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[StageRunStatus] = _status(StageRunStatus, StageRunStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    output: Mapped[dict[str, Any]] = mapped_column(default=dict)
    error: Mapped[str | None] = mapped_column(Text)
    queued_at: Mapped[datetime] = _created()
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Work in flight (migration 0012): a pending or running run past its lease is re-sent by the stalled sweep;
    # a running task renews it by heartbeats. claimed_by ("host:pid") lets a claim on the same host take over at
    # once from a process that is gone instead of waiting for the lease.
    lease_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    claimed_by: Mapped[str | None] = mapped_column(String(200))
    # When its task was sent (migration 0016). A GPU stage's run waits unsent (null) until the fair dispatcher
    # (workers.engine.dispatch) gives it a slot; runs of the other stages are sent as they are created.
    dispatched_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Candidate(Base):
    __tablename__ = "candidates"
    __table_args__ = (UniqueConstraint("campaign_id", "round", "layout_key"),)
    id: Mapped[uuid.UUID] = _id()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    campaign_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    round: Mapped[int] = mapped_column(Integer, default=0)
    batch: Mapped[int] = mapped_column(Integer, default=0)
    layout_key: Mapped[str] = mapped_column(String(100))  # e.g. "1024x1024-r1c2-p15"
    placement: Mapped[dict[str, Any]] = mapped_column(default=dict)  # x, y, scale, rotation, canvas {width, height}
    image_key: Mapped[str | None] = mapped_column(String(500))
    layer_key: Mapped[str | None] = mapped_column(String(500))
    generator: Mapped[str] = mapped_column(String(50), default="")
    integrity: Mapped[dict[str, Any]] = mapped_column(default=dict)  # exact fraction, sha256s, placement
    generation: Mapped[dict[str, Any]] = mapped_column(default=dict)  # adapter, model, seed, gpu_seconds, passes
    qc: Mapped[dict[str, Any]] = mapped_column(default=dict)  # metrics + verdicts with reasons
    passed: Mapped[bool | None] = mapped_column(Boolean)
    aesthetic: Mapped[float | None] = mapped_column(Float)
    rank: Mapped[int | None] = mapped_column(Integer)
    excluded_reason: Mapped[str | None] = mapped_column(Text)
    # DINOv2 embedding of the whole candidate (near-duplicates); deferred: only the rank stage reads it
    embedding: Mapped[Any] = mapped_column(Vector(), nullable=True, deferred=True)
    created_at: Mapped[datetime] = _created()

    @property
    def status(self) -> CandidateStatus:
        return candidate_status(self.passed, self.rank, self.excluded_reason)


def candidate_status(passed: bool | None, rank: int | None, excluded_reason: str | None) -> CandidateStatus:
    if rank is not None:
        return CandidateStatus.RANKED
    if passed is None:
        return CandidateStatus.UNCHECKED
    if not passed:
        return CandidateStatus.FAILED
    duplicate = (excluded_reason or "").startswith("near-duplicate")
    return CandidateStatus.DUPLICATE if duplicate else CandidateStatus.PASSED_NOT_RANKED


class LlmCall(Base):
    """One language-model completion made for a campaign's stage: what it cost and how long it took."""

    __tablename__ = "llm_calls"
    id: Mapped[uuid.UUID] = _id()  # uuid5 of (campaign, stage, round, index): a re-run overwrites, never doubles
    tenant_id: Mapped[uuid.UUID] = _tenant()
    campaign_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    stage: Mapped[str] = mapped_column(String(30))
    round: Mapped[int] = mapped_column(Integer, default=0)
    backend: Mapped[str] = mapped_column(String(20))  # local | openai | bedrock
    model: Mapped[str] = mapped_column(String(200))
    prompt_version: Mapped[str | None] = mapped_column(String(50))
    attempt: Mapped[str] = mapped_column(String(40), default="first")  # first | repair | ...-json-repair
    latency_ms: Mapped[float] = mapped_column(Float, default=0.0)
    tokens_in: Mapped[int] = mapped_column(Integer, default=0)
    tokens_out: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float | None] = mapped_column(Float)  # estimate; None when the model has no known price
    created_at: Mapped[datetime] = _created()


class Result(Base):
    __tablename__ = "results"
    __table_args__ = (UniqueConstraint("campaign_id", "review_round", "rank"),)
    id: Mapped[uuid.UUID] = _id()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    campaign_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    candidate_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("candidates.id", ondelete="CASCADE"))
    review_round: Mapped[int] = mapped_column(Integer, default=0)  # the campaign's review round that ranked it
    rank: Mapped[int] = mapped_column(Integer)
    # The latest human decision (the whole history: result_decisions)
    decision: Mapped[ResultDecision | None] = mapped_column(
        Enum(ResultDecision, native_enum=False, length=20, values_callable=lambda e: [m.value for m in e]),
        nullable=True,
    )
    decided_by: Mapped[str | None] = mapped_column(String(300))
    decided_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    @classmethod
    def of_current_round(cls, campaign: Campaign) -> ColumnElement[bool]:
        """The campaign's results of its current review round (tenant-scoped): "the results" everywhere but
        the history of earlier rounds."""
        return and_(
            cls.tenant_id == campaign.tenant_id,
            cls.campaign_id == campaign.id,
            cls.review_round == campaign.review_round,
        )

    # Every rule checked and passed; else why not: needs_review with review = {fallback, reasons: [{check,
    # kind (unchecked | advisory | flexible), reason}]} (workers.checks.policy)
    fully_checked: Mapped[bool] = mapped_column(Boolean, default=False)
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False)
    review: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = _created()


class ResultDecisionRecord(Base):
    """The review history: one row per approve or reject, never updated (results keep the latest)."""

    __tablename__ = "result_decisions"
    id: Mapped[uuid.UUID] = _id()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    campaign_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    result_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("results.id", ondelete="CASCADE"), index=True)
    review_round: Mapped[int] = mapped_column(Integer)
    decision: Mapped[ResultDecision] = _status(ResultDecision, ResultDecision.APPROVED)
    reasons: Mapped[list[Any]] = mapped_column(default=list)  # shared.review.REASONS
    comment: Mapped[str] = mapped_column(Text, default="")
    reviewer: Mapped[str] = mapped_column(String(300))  # "key:onb_abc…" or "link:<id> <name>", plus a name if given
    created_at: Mapped[datetime] = _created()


class Feedback(Base):
    """A reviewer's "none of these, I want X": routed to a typed change (shared.review.Change) that starts
    the campaign's next review round at the stage that must change."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("campaign_id", "review_round"),)
    id: Mapped[uuid.UUID] = _id()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    campaign_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    review_round: Mapped[int] = mapped_column(Integer)  # the review round it asks to start (previous + 1)
    text: Mapped[str] = mapped_column(Text, default="")
    reasons: Mapped[list[Any]] = mapped_column(default=list)
    reviewer: Mapped[str] = mapped_column(String(300))
    status: Mapped[FeedbackStatus] = _status(FeedbackStatus, FeedbackStatus.ROUTING)
    change: Mapped[dict[str, Any]] = mapped_column(default=dict)  # shared.review.Change as JSON
    not_understood: Mapped[list[Any]] = mapped_column(default=list)  # sentences/reasons the router could not route
    notes: Mapped[list[Any]] = mapped_column(default=list)  # per routed sentence/reason: what it became
    router: Mapped[str | None] = mapped_column(String(50))  # rules | openai | bedrock
    entry_stage: Mapped[str | None] = mapped_column(String(30))  # where the new round starts
    first_round: Mapped[int | None] = mapped_column(Integer)  # its first stage-run round
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    routed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class ReviewLink(Base):
    """A signed, expiring, revocable link to one campaign's review page (the token is never stored)."""

    __tablename__ = "review_links"
    id: Mapped[uuid.UUID] = _id()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    campaign_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    reviewer: Mapped[str] = mapped_column(String(200))  # who the link was made for (name or e-mail)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _created()


class BrandRanker(Base):
    """Per-brand ranking weights learned from reviewer decisions (workers/ranking): one row per brand,
    version bumped on every refit; the rank stage records which version ranked a campaign."""

    __tablename__ = "brand_rankers"
    brand_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("brands.id", ondelete="CASCADE"), primary_key=True)
    tenant_id: Mapped[uuid.UUID] = _tenant()
    version: Mapped[int] = mapped_column(Integer, default=0)
    weights: Mapped[dict[str, Any]] = mapped_column(default=dict)  # feature -> weight, plus scaling
    pairs: Mapped[int] = mapped_column(Integer, default=0)  # preference pairs it was fitted on
    decisions: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookEndpoint(Base):
    __tablename__ = "webhook_endpoints"
    id: Mapped[uuid.UUID] = _id()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    url: Mapped[str] = mapped_column(String(2000))
    secret: Mapped[str] = mapped_column(String(200))  # whsec_<base64>; needed in clear to sign
    event_types: Mapped[list[Any]] = mapped_column(default=list)  # empty = every event
    description: Mapped[str] = mapped_column(String(500), default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = _created()
    # Rotation: the old secret keeps signing (next to the new one) until it expires.
    previous_secret: Mapped[str | None] = mapped_column(String(200))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    signing_key: Mapped[str | None] = mapped_column(Text)  # v1a: encrypted ed25519 private key (shared.crypto)
    previous_signing_key: Mapped[str | None] = mapped_column(Text)
    failing_since: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))  # first failure since a success
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    disabled_reason: Mapped[str | None] = mapped_column(String(300))


class WebhookDelivery(Base):
    """The outbox: written in the same transaction as the state change it announces."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "status", "next_attempt_at"),)
    id: Mapped[uuid.UUID] = _id()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    endpoint_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True
    )
    campaign_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2000))
    event_id: Mapped[str] = mapped_column(String(64))  # msg_<...>: the same across retries
    event_type: Mapped[str] = mapped_column(String(100))
    payload: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status: Mapped[OutboxStatus] = _status(OutboxStatus, OutboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Set when sent (after commit or by the dispatcher): no second send until it lapses (a lost send).
    leased_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    replay_of: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))


class WebhookAttempt(Base):
    """The delivery log: one row per HTTP attempt (never the receiver's internals beyond 2 kB)."""

    __tablename__ = "webhook_attempts"
    id: Mapped[uuid.UUID] = _id()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    delivery_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(20))  # delivered | retry | failed
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    error: Mapped[str | None] = mapped_column(Text)  # stable code + client-safe sentence
    response_body: Mapped[str | None] = mapped_column(Text)  # first 2 kB
    retry_in_seconds: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = _created()


class DeliveryTarget(Base):
    """Where a brand's results are pushed: an S3-compatible bucket/prefix of the customer's."""

    __tablename__ = "delivery_targets"
    id: Mapped[uuid.UUID] = _id()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    brand_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("brands.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(20))  # s3
    name: Mapped[str] = mapped_column(String(200))
    config: Mapped[dict[str, Any]] = mapped_column(default=dict)  # bucket, prefix, region, endpoint_url
    credentials: Mapped[str | None] = mapped_column(Text)  # encrypted JSON (shared.crypto), never returned
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = _created()


class DamPush(Base):
    """The push outbox: one row per (completed campaign, target), written with the completion."""

    __tablename__ = "dam_pushes"
    __table_args__ = (Index("ix_dam_pushes_due", "status", "next_attempt_at"),)
    id: Mapped[uuid.UUID] = _id()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    campaign_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"), index=True)
    target_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("delivery_targets.id", ondelete="SET NULL"), index=True
    )  # None: push_urls, or target deleted
    kind: Mapped[str] = mapped_column(String(20))  # s3 | presigned
    status: Mapped[OutboxStatus] = _status(OutboxStatus, OutboxStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    leased_until: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    objects: Mapped[list[Any]] = mapped_column(default=list)  # [{name, url (no query), bytes, sha256}] uploaded
    created_at: Mapped[datetime] = _created()
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    campaign_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("campaigns.id", ondelete="CASCADE"))
    # Writes other than campaign creation (review decisions, feedback, review links): the resource created
    resource_id: Mapped[uuid.UUID | None] = mapped_column(UUID(as_uuid=True))
    created_at: Mapped[datetime] = _created()


class ImageUsage(Base):
    """The images quota's ledger (shared.limits): one row per accepted campaign, `reserved` from its expected
    candidates at creation, `used` the candidates it really made (settled whenever the tenant's usage is read).
    The row outlives a deleted campaign, so deleting work never gives quota back."""

    __tablename__ = "image_usage"
    __table_args__ = (Index("ix_image_usage_tenant_created", "tenant_id", "created_at"),)
    id: Mapped[uuid.UUID] = _id()
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    campaign_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("campaigns.id", ondelete="SET NULL"), index=True)
    reserved: Mapped[int] = mapped_column(Integer)
    used: Mapped[int | None] = mapped_column(Integer)
    # The limits the campaign was admitted under, checked at commit (migration 0018); null: limits were off.
    admitted_under: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = _created()


class TenantLive(Base):
    """A tenant's non-terminal campaigns, kept by the database as campaigns are written (migration 0018): what the
    concurrent-campaigns quota counts. Its row is also the lock that serialises the tenant's admissions."""

    __tablename__ = "tenant_live"
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    campaigns: Mapped[int] = mapped_column(BigInteger)


class ImageUsageDay(Base):
    """The images ledger rolled up per tenant and UTC day, kept by the database (migration 0018: the admission adds
    a row's amount, a settle its change): a month's usage is at most 31 rows."""

    __tablename__ = "image_usage_days"
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    images: Mapped[int] = mapped_column(BigInteger)


class StorageDeletion(Base):
    """The storage-deletion outbox: one row per deleted asset or campaign, written in the transaction that deletes
    its rows. The cleanup job removes every object under `prefix` after the commit, so no row ever points at a
    missing object; a campaign's row keeps a second pass (`passes_left`) for objects a task that was computing
    when it was deleted may still write."""

    __tablename__ = "storage_deletions"
    __table_args__ = (Index("ix_storage_deletions_due", "next_attempt_at"),)
    id: Mapped[uuid.UUID] = _id()
    tenant_id: Mapped[uuid.UUID] = _tenant()
    resource: Mapped[str] = mapped_column(String(20))  # asset | campaign
    resource_id: Mapped[uuid.UUID] = mapped_column()
    prefix: Mapped[str] = mapped_column(String(500))  # ends with "/"
    passes_left: Mapped[int] = mapped_column(Integer, default=1)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()
