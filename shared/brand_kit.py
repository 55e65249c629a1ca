"""A brand's kit (logos, fonts, text colours, layout rules) and a campaign's copy, as stored (`brands.kit`,
`campaigns.copy`, migration 0017). The gateway validates and stores them; the workers' creative stage reads them
and renders the overlay (workers/creative). Logo and font bytes live in object storage under the keys named here.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

HexColor = Annotated[str, StringConstraints(pattern=r"^#[0-9A-Fa-f]{6}$")]
Corner = Literal["top-left", "top-right", "bottom-left", "bottom-right"]
FontRole = Literal["headline", "body"]

MAX_LOGOS = 5
MAX_FONTS = 4


class KitLogo(BaseModel):
    """An uploaded logo: a PNG with alpha as stored (an SVG upload is rasterised on upload, its source kept)."""

    model_config = ConfigDict(extra="forbid")

    id: uuid.UUID
    name: str
    key: str  # the RGBA PNG in object storage
    source_key: str | None = None  # the uploaded SVG, when the PNG was rasterised from one
    width: int
    height: int
    sha256: str  # of the stored PNG


class KitFont(BaseModel):
    """An uploaded TTF/OTF font (validated on upload), for the headline or the body text (CTA and legal)."""

    model_config = ConfigDict(extra="forbid")

    id: uuid.UUID
    name: str
    key: str
    role: FontRole
    family: str
    style: str
    sha256: str


class KitRules(BaseModel):
    """Layout rules, as workers.creative.schema.LayoutRules takes them (sizes in canvas pixels or fractions)."""

    model_config = ConfigDict(extra="forbid")

    logo_corner: Corner = "top-left"
    min_logo_px: int = Field(24, ge=8, le=512)
    logo_height_frac: float = Field(0.08, gt=0, le=0.3)
    clear_space: float = Field(0.25, ge=0, le=2.0)  # around the logo, of its height
    margin_frac: float = Field(0.04, ge=0, le=0.2)  # of the canvas's shorter side
    min_font_px: int = Field(12, ge=8, le=64)


class BrandKit(BaseModel):
    """brands.kit. An empty kit is valid: the creative then uses the vendored Noto Sans and neutral colours."""

    model_config = ConfigDict(extra="forbid")

    logos: list[KitLogo] = Field(default_factory=list, max_length=MAX_LOGOS)  # the first is the primary logo
    fonts: list[KitFont] = Field(default_factory=list, max_length=MAX_FONTS)
    text_colors: list[HexColor] = Field(default_factory=list, max_length=6)  # in order of preference
    button_color: HexColor | None = None
    rules: KitRules = Field(default_factory=KitRules)

    @classmethod
    def of(cls, stored: object) -> BrandKit:
        return cls.model_validate(stored or {})

    def font(self, role: FontRole) -> KitFont | None:
        return next((f for f in self.fonts if f.role == role), None)


Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]


class CampaignCopy(BaseModel):
    """campaigns.copy: the text the creative carries, in any language and script. None: no creative version."""

    model_config = ConfigDict(extra="forbid")

    headline: Annotated[Text, StringConstraints(max_length=90)]
    cta: Annotated[Text, StringConstraints(max_length=30)]
    legal: Annotated[Text, StringConstraints(max_length=300)] | None = None
