"""``text_artefacts`` without a vision-language model: lettering in a candidate that is not the brand's.

Text on the product (its label: it is in the placed layer) and text in the background source (the
brand's approved library photo, or none in the studio backdrop drawn by code) belong to the brand.
Lettering anywhere else was generated or injected: that is the artefact. OCR (workers/models/ocr.py,
~0.3-0.9 s per 1024 px image on these CPUs) says whether there is any.

Reading every candidate whole would cost QC seconds per candidate, so what is read depends on what is
known about the pixels outside the product:

* ``Background(verbatim=True)`` - the compositor's candidates: outside the product's window the
  candidate *is* the background, and inside it the compositor only multiplies the background by a
  smooth shadow map (same factor in every channel, never brighter). Pixels that this does not
  explain are "changed"; with none there is nothing new to read and no OCR runs at all. Otherwise
  only the box around the changed pixels is read, with the product replaced by the background
  (its label cannot be read by mistake), and a line of text is foreign when it covers changed pixels.
* ``Background(verbatim=False)`` - a generator repainted a reference photo: the whole candidate is
  read with the product blanked; lines that the background itself has (read once per distinct
  background, cached) at about the same place are the brand's.
* no background - a generator painted the whole scene: every line outside the product is foreign.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import cv2
import numpy as np
from PIL import Image

NAME = "text_artefacts"
MIN_SCORE = 0.6  # recognition confidence of a line that counts as lettering: PP-OCR reads clean text
#   at 0.9-1.0 and reads shadows, wood grain or noise (when it reads them at all) at under ~0.5
MIN_CHARS = 2  # letters/digits: a lone glyph-like blob ("l", "1", "o") is what texture reads as
PRODUCT_PAD = 4  # px around the layer's alpha > 0: the compositor's edge harmonisation ring (RING 3 px)
SAME_TOL = 2  # grey levels: a pixel this close to the background in every channel is unchanged
SHADE_TOL = 4.0  # grey levels: a shaded pixel is the background times one factor within this
SMOOTH_SIGMA = 2.0  # px: the shadow map is smooth at this scale; lettering strokes are not
SMOOTH_TOL = 0.12  # shading factor deviation from its local mean that no compositor shadow reaches
BRIGHTEN_TOL = 1.03  # the compositor only darkens; a factor above this is something added
MIN_CHANGED_PX = 12  # fewer changed pixels than this cannot hold a legible glyph
READ_PAD = 24  # px of context around the changed pixels for the detector
MIN_WORD_CHANGED = 0.02  # a line is new when at least this share of its box is changed pixels
SAME_PLACE = 0.1  # a line matches a background line within this share of the canvas diagonal ...
SAME_TEXT = 0.8  # ... with at least this text similarity (difflib ratio, casefolded)
CACHE_SIZE = 16  # distinct backgrounds whose reading is kept (a task uses one per canvas size)


class Reader(Protocol):
    """What the check needs of an OCR model (workers/models/ocr.py's OcrReader)."""

    @property
    def name(self) -> str: ...

    def read(self, rgb: np.ndarray) -> list[Any]: ...  # Word: .text, .score, .box (x0, y0, x1, y1)


@dataclass(frozen=True)
class Background:
    """The background a candidate was made from, and how it was used."""

    image: Image.Image
    verbatim: bool  # True: composited (copied outside the product); False: a reference a generator repainted
    source: str  # for the reason, e.g. "the studio backdrop" or "brand photo 1b2c..."


@dataclass(frozen=True)
class Line:
    text: str
    score: float
    box: tuple[int, int, int, int]


_CACHE: OrderedDict[str, list[Line]] = OrderedDict()
_CACHE_LOCK = threading.Lock()


def check(
    candidate: Image.Image, layer: Image.Image, background: Background | None = None, reader: Reader | None = None
) -> dict[str, Any]:
    """-> {"guideline": "text_artefacts", "status": "pass"|"fail", "reason", "value": lines of foreign
    text found, "method": "ocr", "read": what was read}"""
    rgb, zone = _inputs(candidate, layer)
    bg = _background_array(background, rgb.shape)
    if reader is None:
        from workers.models import ocr

        reader = ocr.load()
    if background is not None and background.verbatim and bg is not None:
        return _check_composited(rgb, zone, bg, background.source, reader)
    return _check_generated(rgb, zone, bg, background, reader)


# --- inputs ----------------------------------------------------------------------------------------


def _inputs(candidate: Image.Image, layer: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(candidate RGB, product zone: the layer's alpha > 0 grown by PRODUCT_PAD px)."""
    if not isinstance(layer, Image.Image) or layer.mode != "RGBA":
        raise ValueError("layer: expected an RGBA PIL image (alpha = product mask)")
    if not isinstance(candidate, Image.Image) or candidate.size != layer.size:
        raise ValueError(f"candidate: expected a PIL image of size {layer.size} (the layer's)")
    alpha = np.asarray(layer.getchannel("A"))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * PRODUCT_PAD + 1, 2 * PRODUCT_PAD + 1))
    zone = cv2.dilate((alpha > 0).astype(np.uint8), kernel) > 0
    return np.asarray(candidate.convert("RGB")), zone


def _background_array(background: Background | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if background is None:
        return None
    if not isinstance(background, Background) or not isinstance(background.image, Image.Image):
        raise ValueError("background: expected a text_ocr.Background")
    arr = np.asarray(background.image.convert("RGB"))
    if arr.shape != shape:
        raise ValueError(f"background: expected size {shape[1]}x{shape[0]} (the candidate's), got {arr.shape}")
    return arr


# --- composited candidates --------------------------------------------------------------------------


def changed_pixels(rgb: np.ndarray, bg: np.ndarray, zone: np.ndarray) -> np.ndarray:
    """Outside the product zone: pixels that the background times a smooth darkening does not explain."""
    differs: np.ndarray = (_channel_max(cv2.absdiff(rgb, bg)) > SAME_TOL) & ~zone
    changed: np.ndarray = np.zeros_like(differs)
    if not differs.any():
        return changed
    # Only the box around the differing pixels (the product's window) needs the float work.
    x0, y0, x1, y1 = _box_of(differs, math.ceil(3 * SMOOTH_SIGMA))
    cand, base = rgb[y0:y1, x0:x1].astype(np.float32), bg[y0:y1, x0:x1].astype(np.float32)
    # One factor per pixel (the compositor's shadow map is one factor for all three channels).
    factor = (cand.sum(axis=2) + 1.5) / (base.sum(axis=2) + 1.5)
    off_colour = _channel_max(cv2.absdiff(cand, base * factor[:, :, None])) > SHADE_TOL
    rough = np.abs(factor - cv2.GaussianBlur(factor, (0, 0), SMOOTH_SIGMA)) > SMOOTH_TOL
    changed[y0:y1, x0:x1] = differs[y0:y1, x0:x1] & (off_colour | (factor > BRIGHTEN_TOL) | rough)
    return changed


def _channel_max(image: np.ndarray) -> np.ndarray:
    """Per-pixel maximum over the channels (numpy's max(axis=2) is ~10x slower on interleaved pixels)."""
    c0, c1, c2 = cv2.split(image)
    out: np.ndarray = cv2.max(cv2.max(c0, c1), c2)
    return out


def _check_composited(rgb: np.ndarray, zone: np.ndarray, bg: np.ndarray, source: str, reader: Reader) -> dict[str, Any]:
    changed = changed_pixels(rgb, bg, zone)
    n = int(changed.sum())
    if n < MIN_CHANGED_PX:
        return _verdict(
            "pass",
            f"outside the product the candidate is {source} up to the product's shadows ({n} px changed): "
            "no new lettering, nothing to read",
            0,
            "nothing (no changed pixels)",
        )
    x0, y0, x1, y1 = _box_of(changed, READ_PAD)
    crop = np.where(zone[..., None], bg, rgb)[y0:y1, x0:x1]  # the product replaced by what is behind it
    lines = [_shift(w, x0, y0) for w in _lines(reader.read(np.ascontiguousarray(crop)))]
    new = [ln for ln in lines if _changed_share(ln.box, changed) >= MIN_WORD_CHANGED]
    what = f"the {x1 - x0}x{y1 - y0} px box around {n} changed px ({reader.name})"
    return _lines_verdict(new, lines, what, f"outside the product where the candidate differs from {source}")


def _box_of(mask: np.ndarray, pad: int) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return (
        max(0, int(xs.min()) - pad),
        max(0, int(ys.min()) - pad),
        min(w, int(xs.max()) + 1 + pad),
        min(h, int(ys.max()) + 1 + pad),
    )


def _changed_share(box: tuple[int, int, int, int], changed: np.ndarray) -> float:
    x0, y0, x1, y1 = box
    area = max(1, (x1 - x0) * (y1 - y0))
    return float(changed[y0:y1, x0:x1].sum()) / area


# --- generated candidates ---------------------------------------------------------------------------


def _check_generated(
    rgb: np.ndarray, zone: np.ndarray, bg: np.ndarray | None, background: Background | None, reader: Reader
) -> dict[str, Any]:
    blanked = np.where(zone[..., None], bg if bg is not None else _fill(rgb, zone), rgb)
    lines = _lines(reader.read(np.ascontiguousarray(blanked)))
    theirs = background_lines(bg, reader) if bg is not None else []
    diagonal = math.hypot(rgb.shape[0], rgb.shape[1])
    new = [ln for ln in lines if not any(_same_line(ln, b, diagonal) for b in theirs)]
    what = f"the whole {rgb.shape[1]}x{rgb.shape[0]} px candidate, the product blanked ({reader.name})"
    if background is None:
        return _lines_verdict(new, lines, what, "outside the product (a generated scene has no brand text)")
    return _lines_verdict(
        new, lines, what, f"outside the product and not in {background.source} ({len(theirs)} line(s) there)"
    )


def _fill(rgb: np.ndarray, zone: np.ndarray) -> np.ndarray:
    """A flat stand-in for the product: the median colour of a ring around it (no edges to read)."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9))
    ring = (cv2.dilate(zone.astype(np.uint8), kernel) > 0) & ~zone
    colour = np.median(rgb[ring], axis=0) if ring.any() else np.median(rgb.reshape(-1, 3), axis=0)
    return np.broadcast_to(colour.astype(np.uint8), rgb.shape)


def background_lines(bg: np.ndarray, reader: Reader) -> list[Line]:
    """The background's own text, read once per distinct background (by content hash) per process."""
    key = hashlib.sha256(bg.tobytes()).hexdigest() + f":{bg.shape}"
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    lines = _lines(reader.read(np.ascontiguousarray(bg)), keep_all=True)
    with _CACHE_LOCK:
        _CACHE[key] = lines
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return lines


def _same_line(a: Line, b: Line, diagonal: float) -> bool:
    ca = ((a.box[0] + a.box[2]) / 2, (a.box[1] + a.box[3]) / 2)
    cb = ((b.box[0] + b.box[2]) / 2, (b.box[1] + b.box[3]) / 2)
    near = math.dist(ca, cb) <= SAME_PLACE * diagonal
    return near and difflib.SequenceMatcher(None, _norm(a.text), _norm(b.text)).ratio() >= SAME_TEXT


# --- lines and verdicts -----------------------------------------------------------------------------


def _norm(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFKC", text).casefold() if c.isalnum())


def _lines(words: list[Any], keep_all: bool = False) -> list[Line]:
    """Reader output as Lines; only confident lines with MIN_CHARS letters/digits unless keep_all
    (a background's own text is kept whole: anything it has may be matched)."""
    out = [Line(str(w.text), float(w.score), _box(w.box)) for w in words]
    if keep_all:
        return out
    return [ln for ln in out if ln.score >= MIN_SCORE and len(_norm(ln.text)) >= MIN_CHARS]


def _box(box: Any) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = (int(v) for v in box)
    return x0, y0, x1, y1


def _shift(line: Line, dx: int, dy: int) -> Line:
    x0, y0, x1, y1 = line.box
    return Line(line.text, line.score, (x0 + dx, y0 + dy, x1 + dx, y1 + dy))


def _lines_verdict(new: list[Line], read: list[Line], what: str, where: str) -> dict[str, Any]:
    if not new:
        seen = f"; it read {len(read)} line(s), none new" if read else "; it read no text"
        return _verdict("pass", f"no lettering {where}{seen}", 0, what)
    shown = ", ".join(f"'{ln.text[:40]}' ({ln.score:.2f}) at {ln.box[:2]}" for ln in new[:3])
    more = f" and {len(new) - 3} more" if len(new) > 3 else ""
    return _verdict("fail", f"{len(new)} line(s) of text {where}: {shown}{more}", len(new), what)


def _verdict(status: str, reason: str, value: int, read: str) -> dict[str, Any]:
    return {"guideline": NAME, "status": status, "reason": reason, "value": float(value), "method": "ocr", "read": read}
