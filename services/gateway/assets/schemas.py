"""Asset request and response bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, HttpUrl, UrlConstraints

from services.gateway.guardrails.schemas import Screening
from shared.schemas import AssetKind, AssetMetadata

__all__ = ["AssetKind", "AssetMetadata"]  # re-exported: the gateway's asset module names them here

SearchMode = Literal["hybrid", "vector", "keyword"]


class AssetRead(BaseModel):
    id: uuid.UUID
    kind: AssetKind
    title: str
    description: str
    tags: list[str]
    brand_id: uuid.UUID | None
    attributes: dict[str, Any]
    kpis: dict[str, float]
    width: int
    height: int
    has_alpha: bool
    content_type: str
    sha256: str
    byte_size: int
    url: str = Field(description="Short-lived URL of the normalized PNG.")
    thumbnail_url: str = Field(description="Short-lived URL of the PNG thumbnail (max 256 px).")
    screening: Screening | None = Field(
        None, description="Which input guardrails screened the metadata and image (null: none)."
    )
    created_at: datetime


MAX_BATCH_FILES = 100
KPI_PATTERN = r"^[A-Za-z0-9_.\-]{1,100}$"


class AssetImport(AssetMetadata):
    """POST /v1/assets/import: the upload's metadata plus the image's URL (fetched by us)."""

    url: Annotated[HttpUrl, UrlConstraints(max_length=2000, allowed_schemes=["http", "https"])]


class BatchItemRead(BaseModel):
    index: int = Field(description="Position of the file in the request.")
    status: Literal["created", "existing", "failed"]
    asset: AssetRead | None = None
    problem: dict[str, Any] | None = Field(
        default=None, description="Why this item failed (status, code, title, detail)."
    )


class BatchRead(BaseModel):
    created: int
    existing: int
    failed: int
    items: list[BatchItemRead]


class SearchParams(BaseModel):
    q: str
    kind: AssetKind | None = None
    brand_id: uuid.UUID | None = None
    tags: tuple[str, ...] = ()
    k: int = 10
    boost: str | None = None
    mode: SearchMode = "hybrid"


class SearchHit(BaseModel):
    asset: AssetRead
    score: float = Field(description="Weighted sum of the parts the mode uses.")
    parts: dict[str, float | None] = Field(
        description="vector: text-embedding cosine; image: CLIP cosine; keyword: full-text rank (0-1); "
        "kpi: percentile of the boost KPI among the candidates. null = not available for this asset."
    )


class SearchResults(BaseModel):
    query: str
    mode: SearchMode
    k: int
    boost: str | None
    models: dict[str, str | None] = Field(description="Embedding models the query was compared in.")
    degraded: str | None = Field(default=None, description="Set when a part could not be used, and why.")
    items: list[SearchHit]
