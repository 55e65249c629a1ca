"""Line breaking and measuring of shaped text (Pillow with libraqm: HarfBuzz shaping, FriBiDi order).

CJK text breaks between any two characters (with the basic kinsoku rules: no line starts with closing
punctuation, none ends with opening punctuation); every other script breaks at spaces only.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import ImageFont

from workers.creative import fonts

LINE_SPACING = 1.15  # of the font's ascent + descent
NO_LINE_START = set("、。，．,.!?！？：；:;）)」』】〕〉》〗〙〛”’ー・々ゝゞぁぃぅぇぉっゃゅょゎァィゥェォッャュョヮ")
NO_LINE_END = set("（(「『【〔〈《〖〘〚“‘")


@dataclass(frozen=True)
class Block:
    """A text wrapped and measured at one font size: its lines and the block's ink extent."""

    lines: tuple[str, ...]
    font_px: int
    width: int
    height: int
    line_height: int
    direction: str  # "ltr" | "rtl"


def units(text: str, script: str) -> tuple[list[str], str]:
    """The unbreakable pieces of ``text`` and the string that joins two of them on one line."""
    words = text.split()
    if script not in fonts.CJK_SCRIPTS:
        return words, " "
    out: list[str] = []
    for word in words:
        if out:
            out[-1] += " "  # keep the space between words that were separated in the copy
        for char in word:
            glue = out and (char in NO_LINE_START or out[-1][-1] in NO_LINE_END or _latin_run(out[-1], char))
            if glue:
                out[-1] += char
            else:
                out.append(char)
    return [u for u in out if u.strip()], ""


def _latin_run(prev: str, char: str) -> bool:
    # Latin words and numbers inside CJK copy ("iPhone 16", "50%") stay whole.
    return char.isascii() and char.isalnum() and prev[-1].isascii() and prev[-1].isalnum()


def wrap(
    text: str, script: str, font: ImageFont.FreeTypeFont, max_width: float, max_lines: int, direction: str
) -> tuple[str, ...] | None:
    """Greedy line breaking into at most ``max_lines`` lines no wider than ``max_width`` (None: it does not fit)."""
    pieces, joiner = units(text, script)
    lines: list[str] = []
    for piece in pieces:
        trial = (lines[-1] + joiner + piece).rstrip() if lines else piece.rstrip()
        if lines and width(trial, font, direction) <= max_width:
            lines[-1] = trial
            continue
        if width(piece.rstrip(), font, direction) > max_width or len(lines) == max_lines:
            return None
        lines.append(piece.rstrip())
    return tuple(line.strip() for line in lines) or None


def width(line: str, font: ImageFont.FreeTypeFont, direction: str) -> float:
    return float(font.getlength(line, direction=direction))


def block(text: str, script: str, path: str, size: int, max_width: float, max_lines: int) -> Block | None:
    """The text at ``size`` px wrapped into ``max_width`` (None: it needs more lines or a word is too wide)."""
    font = fonts.load(path, size)
    direction = "rtl" if script in fonts.RTL_SCRIPTS else "ltr"
    lines = wrap(text, script, font, max_width, max_lines, direction)
    if lines is None:
        return None
    ascent, descent = font.getmetrics()
    line_h = round((ascent + descent) * LINE_SPACING)
    w = max(width(line, font, direction) for line in lines)
    h = line_h * (len(lines) - 1) + ascent + descent
    return Block(lines, size, int(w) + 1, h, line_h, direction)
