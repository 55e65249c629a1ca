"""The overlay renderer's inputs and its layout record (typed; pydantic where the record is stored as JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict

Corner = Literal["top-left", "top-right", "bottom-left", "bottom-right"]
Rgb = tuple[int, int, int]
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in canvas pixels

MIN_BODY_CONTRAST = 4.5  # WCAG 2.x AA for body text (1.4.3)


class Element(StrEnum):
    HEADLINE = "headline"
    CTA = "cta"
    LEGAL = "legal"
    LOGO = "logo"


@dataclass(frozen=True)
class Zone:
    """A safe zone in canvas fractions, as ``Brand.safe_zones`` stores it ({label, x, y, width, height}).

    The label says what the zone is for: "headline", "cta", "legal", "logo", or "text" (any text)."""

    label: str
    x: float
    y: float
    width: float
    height: float

    def box(self, w: int, h: int) -> Box:
        return (
            round(self.x * w),
            round(self.y * h),
            round((self.x + self.width) * w),
            round((self.y + self.height) * h),
        )


@dataclass(frozen=True)
class LayoutRules:
    """The brand's layout rules. Sizes in px of the canvas; ``clear_space`` is a fraction of the logo height."""

    logo_corner: Corner = "top-left"
    min_logo_px: int = 24  # the logo's height may not go below this
    logo_height_frac: float = 0.08  # target logo height, of the canvas's shorter side
    clear_space: float = 0.25  # free space around the logo, of its height
    margin_frac: float = 0.04  # the canvas margin, of the shorter side
    min_font_px: int = 12  # auto-fit shrinks headline and CTA down to this, legal to 3/4 of it


@dataclass(frozen=True)
class BrandKit:
    """Logo (RGBA, optional), a font file (optional: the vendored Noto Sans is the default) and text colours
    in order of preference (black and white are tried after them when none reaches the contrast)."""

    text_colors: tuple[Rgb, ...] = ((255, 255, 255), (17, 17, 17))
    button_color: Rgb = (20, 20, 20)
    logo: Image.Image | None = None
    font_path: str | None = None
    rules: LayoutRules = field(default_factory=LayoutRules)


@dataclass(frozen=True)
class Copy:
    headline: str
    cta: str
    legal: str | None = None


@dataclass(frozen=True)
class OverlayRequest:
    """A scene and what may not be covered: ``product`` is a boolean (H, W) mask, or a bounding box."""

    scene: Image.Image
    product: np.ndarray | Box
    copy: Copy
    kit: BrandKit = field(default_factory=BrandKit)
    safe_zones: tuple[Zone, ...] = ()


# --- the layout record -----------------------------------------------------------------------------


class TextLayout(BaseModel):
    model_config = ConfigDict(frozen=True)

    element: Element
    text: str
    lines: list[str]
    box: Box  # the text block with its padding (the scrim's extent when there is one)
    ink_box: Box  # the glyphs' bounding box
    font: str  # file name of the font used
    font_px: int
    script: str  # the dominant script: "Latin", "Arabic", "Han", ...
    direction: Literal["ltr", "rtl"]
    color: Rgb
    color_source: Literal["kit", "neutral"]  # "neutral": black/white, no kit colour reached the contrast
    # WCAG 2.x contrast of the text colour against the pixels behind the text box (scene, scrim or button):
    # the worst case, i.e. against the background pixel of the box whose relative luminance is furthest
    # towards the text colour's (measured before the glyphs are drawn).
    contrast: float
    backing: Literal["none", "scrim", "button"]
    scrim_alpha: float = 0.0


class LogoLayout(BaseModel):
    model_config = ConfigDict(frozen=True)

    box: Box
    corner: Corner
    moved: bool  # the rule's corner was blocked by the product, another corner was used


class Layout(BaseModel):
    """What the renderer did, or why it could not: ``ok`` False lists every rule no layout could meet."""

    model_config = ConfigDict(frozen=True)

    ok: bool
    reasons: list[str]
    template: Literal["wide", "tall", "square"]
    size: tuple[int, int]
    texts: list[TextLayout]
    logo: LogoLayout | None
    scrim: bool  # a scrim was added behind at least one text
    render_ms: float


@dataclass(frozen=True)
class Creative:
    image: Image.Image  # RGB, the scene's size; the scene itself when the layout failed
    layout: Layout
