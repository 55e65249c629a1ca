"""Named ad sizes (presets) with their platforms' safe zones, and the size a result is delivered in.

A preset is a placement's pixel size plus the regions of it the platform covers with its own UI (a story's
profile header and reply bar) or a badge (the IAB AdChoices icon): the plan keeps the product out of them,
and later overlays (headline, logo, CTA) lay out around them. Zones are fractions of the canvas, as a
campaign's own `safe_zones`, so they hold at any render size.

Both sides use this module: the gateway validates and lists presets (GET /v1/presets), the plan stage
reads a stored size's preset zones, and results, the completion event and DAM sidecars name the size
(and preset) each result was made for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Zone:
    """A region of the canvas the product must not cover, in canvas fractions (top-left x, y; width, height)."""

    label: str
    x: float
    y: float
    width: float
    height: float


@dataclass(frozen=True)
class Preset:
    name: str
    width: int
    height: int
    platform: str
    description: str
    safe_zones: tuple[Zone, ...] = ()

    def record(self) -> dict[str, Any]:
        """As GET /v1/presets lists it."""
        return {**asdict(self), "safe_zones": [asdict(z) for z in self.safe_zones]}


def _adchoices(width: int, height: int) -> tuple[Zone, ...]:
    """The IAB AdChoices icon's corner (top right, 77x15 px expanded; ad servers overlay it on display ads)."""
    x = round(1.0 - min(1.0, 77 / width), 4)
    return (Zone("adchoices", x, 0.0, round(1.0 - x, 4), round(min(1.0, 15 / height), 4)),)  # ends on the edge


# Meta: keep the top ~14 % (profile, progress bar) and the bottom ~20 % (reply bar, CTA sticker) of a
# 9:16 story or reel free of key content.
_VERTICAL_UI = (Zone("platform-header", 0.0, 0.0, 1.0, 0.14), Zone("platform-footer", 0.0, 0.8, 1.0, 0.2))


def _iab(width: int, height: int, name: str) -> Preset:
    return Preset(f"iab-{width}x{height}", width, height, "iab", name, _adchoices(width, height))


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("meta-feed", 1080, 1080, "meta", "Facebook / Instagram feed, square 1:1"),
        Preset("meta-feed-portrait", 1080, 1350, "meta", "Facebook / Instagram feed, portrait 4:5"),
        Preset("story", 1080, 1920, "meta", "Facebook / Instagram story, 9:16", _VERTICAL_UI),
        Preset("reels", 1080, 1920, "meta", "Instagram / Facebook reels, 9:16", _VERTICAL_UI),
        Preset("link", 1200, 628, "meta", "Link ad, 1.91:1"),
        _iab(300, 250, "IAB medium rectangle"),
        _iab(728, 90, "IAB leaderboard"),
        _iab(160, 600, "IAB wide skyscraper"),
        _iab(300, 600, "IAB half page"),
        _iab(320, 50, "IAB mobile banner"),
    )
}
PRESET_NAMES: tuple[str, ...] = tuple(PRESETS)


def zones_of(size: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A stored size entry's preset safe zones (none for a size given by width and height)."""
    preset = PRESETS.get(str(size.get("preset") or ""))
    return [asdict(z) for z in preset.safe_zones] if preset is not None else []


def size_label(width: int, height: int) -> str:
    return f"{width}x{height}"


def result_size(sizes: Iterable[Mapping[str, Any]], placement: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The size a result was made for: its canvas, and the requested entry's preset or aspect when it named one
    (None for a placement that names no canvas)."""
    canvas = (placement or {}).get("canvas") or {}
    if not canvas.get("width") or not canvas.get("height"):
        return None
    width, height = int(canvas["width"]), int(canvas["height"])
    found: dict[str, Any] = {"width": width, "height": height, "label": size_label(width, height)}
    for entry in sizes:
        if (entry.get("width"), entry.get("height")) == (width, height):
            found |= {k: entry[k] for k in ("preset", "aspect") if entry.get(k)}
            break
    return found


def size_ranks(groups: Iterable[tuple[Any, Any]]) -> list[int]:
    """1-based rank of each item within its (product, size) group, for items in rank order."""
    seen: dict[tuple[Any, Any], int] = {}
    ranks = []
    for group in groups:
        seen[group] = seen.get(group, 0) + 1
        ranks.append(seen[group])
    return ranks
