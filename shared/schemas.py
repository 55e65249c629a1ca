"""Schemas both sides use: the gateway validates requests with them, the import CLI validates
sidecar metadata with the same rules before sending it."""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

AssetKind = Literal["product", "background", "reference"]
ASSET_KINDS: tuple[str, ...] = ("product", "background", "reference")
Tag = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
KpiName = Annotated[str, StringConstraints(min_length=1, max_length=100)]


class AssetMetadata(BaseModel):
    """An asset's metadata: the JSON `metadata` of an upload, one item of a batch, a sidecar file."""

    model_config = ConfigDict(extra="forbid")

    kind: AssetKind
    title: str = Field(default="", max_length=300)
    description: str = Field(default="", max_length=5000)
    tags: list[Tag] = Field(default_factory=list, max_length=50)
    brand_id: uuid.UUID | None = None
    attributes: dict[str, Any] = Field(default_factory=dict, max_length=100)
    kpis: dict[KpiName, Annotated[float, Field(allow_inf_nan=False, strict=True)]] = Field(
        default_factory=dict, max_length=100
    )
