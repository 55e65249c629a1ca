"""Fonts: the vendored open defaults, uploaded-font validation (shared.fonts), and which font can draw a text.

The defaults are Noto Sans and Noto Sans Arabic (SIL OFL 1.1, static Regular and Bold instances in
``fonts/``, see ``fonts/OFL.txt``). No CJK font is vendored: a subset big enough for Chinese and
Japanese copy is ~2 MB and a full Noto Sans CJK face 16 MB, so CJK copy is drawn with the brand's own
font or a system Noto CJK face (Debian ``fonts-noto-cjk``, found under :data:`SYSTEM_FONT_DIRS`) when
one covers it; when no font covers every character the layout fails with "no font covers ..." instead
of drawing missing-glyph boxes.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache
from pathlib import Path

from fontTools.ttLib import TTFont
from PIL import ImageFont, features

# Validation lives in shared/ (the gateway checks uploads with it); re-exported for the renderer and its tests.
from shared.fonts import FontError as FontError
from shared.fonts import FontInfo as FontInfo
from shared.fonts import validate_font as validate_font

FONT_DIR = Path(__file__).parent / "fonts"
DEFAULTS = {
    "regular": ("NotoSans-Regular.ttf", "NotoSansArabic-Regular.ttf"),
    "bold": ("NotoSans-Bold.ttf", "NotoSansArabic-Bold.ttf"),
}
SYSTEM_FONT_DIRS = (Path("/usr/share/fonts/opentype/noto"), Path("/usr/share/fonts/truetype/noto"))
SYSTEM_CJK = ("NotoSansCJK-Bold.ttc", "NotoSansCJK-Regular.ttc")
RTL_SCRIPTS = {"Arabic", "Hebrew", "Syriac", "Thaana", "Nko"}
CJK_SCRIPTS = {"Han", "Hiragana", "Katakana", "Hangul"}


SHAPING_MISSING = (
    "text shaping unavailable: Pillow's wheel bundles libraqm and HarfBuzz but loads FriBiDi from the system "
    "(Debian/Ubuntu: apt-get install libfribidi0)"
)


def shaping_available() -> bool:
    """Whether Pillow can shape text (libraqm with FriBiDi): without it Arabic would be drawn unjoined, LTR."""
    return bool(features.check("raqm"))


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
