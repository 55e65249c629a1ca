"""Uploaded-font validation, shared by the gateway (brand-kit uploads) and the creative renderer (workers/creative).

Only TTF and OTF files that fontTools parses (name, cmap, glyph tables) and FreeType loads are accepted:
WOFF/WOFF2 (compressed web fonts), collections (TTC) and anything else are refused with the reason.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass

from fontTools.ttLib import TTFont, TTLibError
from PIL import ImageFont

MAX_FONT_BYTES = 32 * 1024 * 1024
# sfnt version tags: TrueType outlines (0x00010000, Apple's "true") and CFF outlines ("OTTO").
FONT_MAGIC = (b"\x00\x01\x00\x00", b"OTTO", b"true")


class FontError(ValueError):
    """An uploaded font that cannot be used, with the reason."""


@dataclass(frozen=True)
class FontInfo:
    family: str
    style: str
    glyphs: int
    format: str  # "TrueType" or "OpenType (CFF)"


def validate_font(data: bytes) -> FontInfo:
    """Check uploaded TTF/OTF bytes: parsed by fontTools (name, cmap, glyph tables) and loaded by FreeType.

    Raises :class:`FontError` saying why for anything else (WOFF, collections, truncated or random bytes)."""
    if not isinstance(data, bytes | bytearray) or not data:
        raise FontError("font: expected the bytes of a TTF or OTF file, got nothing")
    if len(data) > MAX_FONT_BYTES:
        raise FontError(f"font: {len(data)} bytes, over the {MAX_FONT_BYTES} byte limit")
    magic = bytes(data[:4])
    if magic not in FONT_MAGIC:
        kind = {b"wOFF": "WOFF", b"wOF2": "WOFF2", b"ttcf": "a font collection (TTC)"}.get(magic, "not a font")
        raise FontError(f"font: expected a TTF or OTF file, got {kind} (first bytes {magic!r})")
    try:
        font = TTFont(io.BytesIO(data), lazy=False)
        names = font["name"]
        cmap = font.getBestCmap()
        glyphs = font["maxp"].numGlyphs
        ImageFont.truetype(io.BytesIO(bytes(data)), 16).getbbox("Ag")
    except (TTLibError, KeyError, OSError, AssertionError, ValueError, struct.error) as exc:
        raise FontError(f"font: the file does not parse as a font ({type(exc).__name__}: {exc})") from exc
    if not cmap:
        raise FontError("font: it maps no Unicode characters (no usable cmap table)")
    family = str(names.getDebugName(1) or "unknown")
    style = str(names.getDebugName(2) or "Regular")
    return FontInfo(family, style, int(glyphs), "OpenType (CFF)" if magic == b"OTTO" else "TrueType")
