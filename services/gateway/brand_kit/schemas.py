"""Brand-kit request and response bodies (the stored form is shared.brand_kit.BrandKit)."""

from __future__ import annotations

import uuid

from pydantic import BaseModel, ConfigDict, Field

from services.gateway.brands.schemas import HexColor
from shared.brand_kit import FontRole, KitRules


class KitLogoRead(BaseModel):
    id: uuid.UUID
    name: str
    width: int
    height: int
    sha256: str = Field(description="Of the stored RGBA PNG.")
    from_svg: bool = Field(description="Rasterised on upload from an SVG (the source is kept, not served).")
    url: str = Field(description="Short-lived URL of the RGBA PNG.")


class KitFontRead(BaseModel):
    id: uuid.UUID
    name: str
    role: FontRole = Field(description="headline, or body (the CTA and legal text).")
    family: str
    style: str
    sha256: str
    url: str = Field(description="Short-lived URL of the TTF/OTF file.")


class KitRead(BaseModel):
    brand_id: uuid.UUID
    logos: list[KitLogoRead] = Field(description="The first is the primary logo.")
    fonts: list[KitFontRead] = Field(description="At most one per role; without one, Noto Sans is used.")
    text_colors: list[str]
    button_color: str | None
    rules: KitRules


class KitRulesPatch(KitRules):
    """The layout rules to change (the others keep their values); numbers strictly typed."""

    model_config = ConfigDict(extra="forbid", strict=True)


class KitUpdate(BaseModel):
    """PATCH: only the fields given change. button_color null removes it; rules are merged key by key."""

    model_config = ConfigDict(extra="forbid")

    text_colors: list[HexColor] | None = Field(
        default=None, max_length=6, description='["#RRGGBB", ...] in order of preference; [] clears them.'
    )
    button_color: HexColor | None = Field(default=None, description="The CTA button's colour; null removes it.")
    rules: KitRulesPatch | None = None
