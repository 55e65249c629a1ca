"""Asset request and response bodies."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

AssetKind = Literal["product", "background", "reference"]
Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
KpiName = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class AssetMetadata(BaseModel):
    """The JSON `metadata` part of the multipart upload."""

    model_config = ConfigDict(extra="forbid")

    kind: AssetKind
    title: str = Field("", max_length=300)
    description: str = Field("", max_length=5000)
    tags: list[Tag] = Field(default_factory=list, max_length=50)
    brand_id: uuid.UUID | None = None
    attributes: dict[str, Any] = Field(default_factory=dict, max_length=100)
    kpis: dict[KpiName, Annotated[float, Field(allow_inf_nan=False)]] = Field(default_factory=dict, max_length=100)


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
    created_at: datetime
