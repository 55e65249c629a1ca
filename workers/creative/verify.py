"""OCR read-back of a rendered creative: does each text box read as the requested copy?

Each text element's box is cut from the creative (scaled so its font is ``READ_PX`` high: the recogniser
reads 48 px high lines) and read with the worker's OCR reader (workers/models/ocr.py). The
compared strings are both sides after :func:`normalise`: Unicode NFKC, case folded, with every
whitespace and punctuation character (Unicode categories Z* and P*) removed, and Arabic's optional vowel
marks (harakat) and tatweel, which readers drop — so "Jetzt kaufen!" matches a read of "JETZT KAUFEN" but not
"Jetzt kaufe". Letters outside the recogniser's dictionary (PP-OCRv6 small reads CJK, Latin and Greek; not
Arabic, Hebrew, Hangul, Cyrillic, Devanagari...) are read by Tesseract when its language data is installed
(workers/models/tesseract.py: Debian's tesseract-ocr-ara for Arabic), else the element is
"unchecked: no OCR model for <script>" — never "passed".
"""

from __future__ import annotations

import time
import unicodedata
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict

from workers.creative import fonts
from workers.creative.schema import Creative, Element
from workers.models import ocr, tesseract

READ_PX = 40  # crops are scaled so the font is this size: the recogniser reads 48 px lines, and big crops cost
Status = Literal["passed", "failed", "unchecked"]


class TextCheck(BaseModel):
    model_config = ConfigDict(frozen=True)

    element: Element
    expected: str
    read: str  # the reader's lines in the box, top to bottom, joined by spaces ("" when unchecked)
    compared: tuple[str, str]  # (expected, read) after normalise()
    status: Status
    reason: str
    reader: Literal["pp-ocr", "tesseract", "none"] = "pp-ocr"


class Verification(BaseModel):
    model_config = ConfigDict(frozen=True)

    status: Status  # failed if any element failed, else unchecked if any was unchecked, else passed
    checks: list[TextCheck]
    ocr_ms: float
    model: str


# Arabic harakat (fathatan..sukun, superscript alef...) and tatweel: optional in writing, not read by OCR.
ARABIC_MARKS = frozenset({*map(chr, range(0x064B, 0x0660)), "\u0670", "\u0640"})


def normalise(text: str) -> str:
    folded = unicodedata.normalize("NFKC", text).casefold()
    return "".join(
        c for c in folded if not c.isspace() and unicodedata.category(c)[0] not in "PZ" and c not in ARABIC_MARKS
    )


def verify(creative: Creative) -> Verification:
    """Read every text element of a rendered creative back and compare it with its copy."""
    if not creative.layout.ok:
        raise ValueError("creative: its layout failed; there is no overlay to read")
    reader = ocr.load()
    known = reader.characters()
    started = time.perf_counter()
    rgb = np.asarray(creative.image.convert("RGB"))
    checks = [
        _check(reader, known, rgb, t.element, t.text, t.box, t.font_px, len(t.lines)) for t in creative.layout.texts
    ]
    elapsed = round((time.perf_counter() - started) * 1000, 1)
    statuses = {c.status for c in checks}
    status: Status = "failed" if "failed" in statuses else "unchecked" if "unchecked" in statuses else "passed"
    model = reader.name
    if any(c.reader == "tesseract" for c in checks):
        model += f" + {tesseract.version()}"
    return Verification(status=status, checks=checks, ocr_ms=elapsed, model=model)


def unreadable_scripts(text: str, known: frozenset[str]) -> list[str]:
    """The scripts of the letters in ``text`` that the recogniser cannot output (in order of appearance)."""
    found: list[str] = []
    for c in unicodedata.normalize("NFKC", text):
        if unicodedata.category(c)[0] == "L" and c not in known and c.casefold() not in known:
            script = fonts.script_of(c)
            if script not in found:
                found.append(script)
    return found


def _check(
    reader: ocr.OcrReader,
    known: frozenset[str],
    rgb: np.ndarray,
    element: Element,
    expected: str,
    box: tuple[int, int, int, int],
    font_px: int,
    lines: int = 1,
) -> TextCheck:
    missing = unreadable_scripts(expected, known)
    language = tesseract.language_for(missing) if missing else None
    if missing and language is None:
        packages = ", ".join(tesseract.package(s) for s in missing)
        reason = f"unchecked: no OCR model for {', '.join(missing)} (Tesseract with {packages} reads it)"
        return TextCheck(
            element=element,
            expected=expected,
            read="",
            compared=(normalise(expected), ""),
            status="unchecked",
            reason=reason,
            reader="none",
        )
    crop = _crop(rgb, box, font_px)
    want = normalise(expected)
    if language:  # the first exact reading, else the block reading: each is a reading of the same pixels
        reads = tesseract.read_block(crop, language, lines)
        read = next((r for r in reads if normalise(r) == want), reads[0])
    else:
        read = _read(reader, crop)
    got = normalise(read)
    ok = want == got
    reason = "read back exactly" if ok else f"read {read!r}, expected {expected!r}"
    return TextCheck(
        element=element,
        expected=expected,
        read=read,
        compared=(want, got),
        status="passed" if ok else "failed",
        reason=reason,
        reader="tesseract" if language else "pp-ocr",
    )


def _crop(rgb: np.ndarray, box: tuple[int, int, int, int], font_px: int) -> Image.Image:
    """The text box, scaled so its font is READ_PX high."""
    x0, y0, x1, y1 = box
    crop = Image.fromarray(rgb[y0:y1, x0:x1])
    scale = READ_PX / font_px
    if abs(scale - 1) > 0.1:
        crop = crop.resize((round(crop.width * scale), round(crop.height * scale)), Image.Resampling.LANCZOS)
    return crop


def _read(reader: ocr.OcrReader, crop: Image.Image) -> str:
    words = reader.read(np.asarray(crop))
    # Lines top to bottom; pieces of one line (centres within half a line of each other) left to right.
    words.sort(key=lambda wd: (wd.box[1] + wd.box[3]) / 2)
    lines: list[list[ocr.Word]] = []
    for word in words:
        centre = (word.box[1] + word.box[3]) / 2
        last = lines[-1][-1] if lines else None
        if last and abs(centre - (last.box[1] + last.box[3]) / 2) < (last.box[3] - last.box[1]) / 2:
            lines[-1].append(word)
        else:
            lines.append([word])
    return " ".join(" ".join(w.text for w in sorted(line, key=lambda wd: wd.box[0])) for line in lines)
