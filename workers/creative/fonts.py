"""Fonts: the vendored open defaults, uploaded-font validation, and which font can draw a text.

The defaults are Noto Sans and Noto Sans Arabic (SIL OFL 1.1, static Regular and Bold instances in
``fonts/``, see ``fonts/OFL.txt``). No CJK font is vendored: a subset big enough for Chinese and
Japanese copy is ~2 MB and a full Noto Sans CJK face 16 MB, so CJK copy is drawn with the brand's own
font or a system Noto CJK face (Debian ``fonts-noto-cjk``, found under :data:`SYSTEM_FONT_DIRS`) when
one covers it; when no font covers every character the layout fails with "no font covers ..." instead
of drawing missing-glyph boxes.
"""

from __future__ import annotations

import io
import struct
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from fontTools.ttLib import TTFont, TTLibError
from PIL import ImageFont, features

FONT_DIR = Path(__file__).parent / "fonts"
DEFAULTS = {
    "regular": ("NotoSans-Regular.ttf", "NotoSansArabic-Regular.ttf"),
    "bold": ("NotoSans-Bold.ttf", "NotoSansArabic-Bold.ttf"),
}
SYSTEM_FONT_DIRS = (Path("/usr/share/fonts/opentype/noto"), Path("/usr/share/fonts/truetype/noto"))
SYSTEM_CJK = ("NotoSansCJK-Bold.ttc", "NotoSansCJK-Regular.ttc")
MAX_FONT_BYTES = 32 * 1024 * 1024
RTL_SCRIPTS = {"Arabic", "Hebrew", "Syriac", "Thaana", "Nko"}
CJK_SCRIPTS = {"Han", "Hiragana", "Katakana", "Hangul"}


SHAPING_MISSING = (
    "text shaping unavailable: Pillow's wheel bundles libraqm and HarfBuzz but loads FriBiDi from the system "
    "(Debian/Ubuntu: apt-get install libfribidi0)"
)


def shaping_available() -> bool:
    """Whether Pillow can shape text (libraqm with FriBiDi): without it Arabic would be drawn unjoined, LTR."""
    return bool(features.check("raqm"))


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
    if magic not in (b"\x00\x01\x00\x00", b"OTTO", b"true"):
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


@lru_cache(maxsize=32)
def coverage(path: str) -> frozenset[int]:
    """The code points a font file (or the first face of a collection) maps to glyphs."""
    font = TTFont(path, fontNumber=0, lazy=True)
    return frozenset(font.getBestCmap() or {})


def candidates(weight: str, brand_font: str | None) -> list[Path]:
    """Fonts to try, in order: the brand's, the vendored defaults, then system CJK faces."""
    found = [Path(brand_font)] if brand_font else []
    found += [FONT_DIR / name for name in DEFAULTS[weight]]
    cjk = SYSTEM_CJK if weight == "bold" else SYSTEM_CJK[::-1]
    found += [d / name for name in cjk for d in SYSTEM_FONT_DIRS if (d / name).is_file()]
    return found


def pick(text: str, weight: str, brand_font: str | None) -> Path | None:
    """The first candidate font with a glyph for every character of ``text`` (None: no font covers it)."""
    needed = {ord(c) for c in text if not c.isspace() and unicodedata.category(c)[0] != "C"}
    for path in candidates(weight, brand_font):
        if needed <= coverage(str(path)):
            return path
    return None


@lru_cache(maxsize=256)
def load(path: str, size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(path, size, layout_engine=ImageFont.Layout.RAQM)


def script_of(char: str) -> str:
    """The Unicode script of a letter, from its character name ("ARABIC LETTER ALEF" -> "Arabic")."""
    name = unicodedata.name(char, "")
    if name.startswith(("CJK", "FULLWIDTH", "IDEOGRAPHIC")):
        return "Han"
    first = name.split(" ")[0].title() if name else "Unknown"
    return {"Hangul": "Hangul", "Hiragana": "Hiragana", "Katakana": "Katakana"}.get(first, first)


def dominant_script(text: str) -> str:
    """The script most of the text's letters are in ("Latin" for a text without letters)."""
    counts: dict[str, int] = {}
    for c in text:
        if unicodedata.category(c)[0] == "L":
            script = script_of(c)
            counts[script] = counts.get(script, 0) + 1
    return max(counts, key=lambda s: counts[s]) if counts else "Latin"
