"""Preset bodies: the named ad sizes with their platform safe zones (shared.presets)."""

from __future__ import annotations

from pydantic import BaseModel, Field


class PresetZone(BaseModel):
    label: str
    x: float = Field(description="Left edge, a fraction of the canvas width.")
    y: float = Field(description="Top edge, a fraction of the canvas height.")
    width: float
    height: float


class PresetRead(BaseModel):
    name: str = Field(description='Use it as a campaign size: {"preset": name}.')
    width: int
    height: int
    platform: str
    description: str
    safe_zones: list[PresetZone] = Field(
        description="Where the platform's UI (or an ad badge) covers the creative: the plan keeps the product out."
    )


class PresetList(BaseModel):
    items: list[PresetRead]
