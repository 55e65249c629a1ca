"""Line OCR for the scripts the PP-OCR reader (workers/models/ocr.py) cannot output: Tesseract's LSTM models.

Tesseract and its language data are Debian packages (`tesseract-ocr`, `tesseract-ocr-ara`, ...; Apache-2.0), not
Python wheels: the worker images and `make test` install them with apt. Run as a subprocess per line (about 0.1 s
for a CTA). A machine without the binary or without a script's language data reads nothing: the caller reports
that script "unchecked", never passed.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from functools import lru_cache

from PIL import Image

# Script (workers.creative.fonts.script_of) -> Tesseract language data, and the Debian package that ships it.
LANGUAGES: dict[str, str] = {
    "Arabic": "ara",
    "Hebrew": "heb",
    "Cyrillic": "rus",
    "Hangul": "kor",
    "Devanagari": "hin",
    "Thai": "tha",
}
TIMEOUT_S = 20.0


def package(script: str) -> str:
    return f"tesseract-ocr-{LANGUAGES.get(script, '?')}"


@lru_cache
def installed() -> frozenset[str]:
    """The language data Tesseract has here (empty without the binary)."""
    binary = shutil.which("tesseract")
    if binary is None:
        return frozenset()
    listed = subprocess.run([binary, "--list-langs"], capture_output=True, text=True, timeout=TIMEOUT_S)
    return frozenset(line.strip() for line in listed.stdout.splitlines()[1:] if line.strip())


def language_for(scripts: list[str]) -> str | None:
    """A Tesseract language string reading all of `scripts` (Latin digits and words come with each model), or None
    when one of them has no installed model."""
    wanted = [LANGUAGES.get(s) for s in scripts if s not in ("Latin", "Common")]
    if not wanted or any(lang is None or lang not in installed() for lang in wanted):
        return None
    return "+".join(dict.fromkeys(str(lang) for lang in wanted))


def version() -> str:
    binary = shutil.which("tesseract")
    if binary is None:
        return "tesseract (not installed)"
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=TIMEOUT_S)
    return (out.stdout or out.stderr).splitlines()[0].strip()


def read_block(image: Image.Image, language: str, lines: int = 1) -> list[str]:
    """Readings of a cropped text box, lines joined by spaces: as a block of text (--psm 6), then line by line as
    raw lines (--psm 13; the box cut into `lines` equal strips, as the renderer sets them), which reads small
    Arabic more reliably (at 15 px the block reading took the two dots of a ta for a nun and a quote mark)."""
    binary = shutil.which("tesseract")
    if binary is None:
        raise RuntimeError("tesseract is not installed")
    block = _run(binary, _png(image), language, 6)
    n = max(1, lines)
    strips = [image.crop((0, image.height * i // n, image.width, image.height * (i + 1) // n)) for i in range(n)]
    by_line = " ".join(_run(binary, _png(strip), language, 13) for strip in strips)
    return [block, by_line]


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def _run(binary: str, png: bytes, language: str, psm: int) -> str:
    out = subprocess.run(
        [binary, "stdin", "stdout", "-l", language, "--psm", str(psm)],
        input=png,
        capture_output=True,
        timeout=TIMEOUT_S,
        check=True,
    )
    return " ".join(line.strip() for line in out.stdout.decode("utf-8").splitlines() if line.strip())
