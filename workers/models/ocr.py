"""Text reading (OCR) for QC: RapidOCR's PP-OCRv6 small detector and recogniser on onnxruntime.

The weights ship inside the ``rapidocr`` wheel (Apache-2.0, no download at run time: rapidocr only
verifies the files' hashes), so this runs offline on the CPU defaults. rapidocr and onnxruntime are
imported inside :func:`load` only; one reader per process (it holds three onnxruntime sessions, ~0.3 s
to load, and is reused by every QC task of the worker).

Detection is limited by the image's *longest* side (rapidocr's default limits the shortest side and
so upscales every small crop to 736 px): QC reads whole candidates (down to DET_MAX_SIDE) and small
crops of them (at their own size, cheap).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np

DET_MAX_SIDE = 1024  # px: a 1024 px canvas is read at full size; larger ones are downscaled to this
MODEL = "PP-OCRv6 small (det + rec) + PP-OCRv4 mobile cls"

_READER: OcrReader | None = None
_LOCK = threading.Lock()  # Celery thread pools may load concurrently; load once


@dataclass(frozen=True)
class Word:
    """One line of text the reader found: its text, recognition confidence (0-1) and pixel box."""

    text: str
    score: float
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in the image that was read


@dataclass
class OcrReader:
    engine: Any  # rapidocr.RapidOCR
    version: str  # "rapidocr 3.10.0 / onnxruntime 1.32.0"

    @property
    def name(self) -> str:
        return f"{MODEL} ({self.version})"

    def read(self, rgb: np.ndarray) -> list[Word]:
        """Every text line in an (H, W, 3) uint8 RGB image, in the reader's order (top to bottom)."""
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError("rgb: expected an (H, W, 3) uint8 array")
        # rapidocr takes arrays as OpenCV's BGR.
        out = self.engine(np.ascontiguousarray(rgb[:, :, ::-1]))
        if out.txts is None or out.boxes is None:
            return []
        return [_word(t, s, b, rgb.shape) for t, s, b in zip(out.txts, out.scores, out.boxes, strict=True)]

    def characters(self) -> frozenset[str]:
        """Every character the recogniser can output (its dictionary: CJK, Latin, Greek; no Arabic, Hangul or
        Cyrillic in PP-OCRv6 small), so callers can tell text it cannot read from text it misread."""
        rec = self.engine.text_rec or self.engine._load_rec_model()  # rapidocr loads the recogniser lazily
        return frozenset(rec.postprocess_op.character)


def _word(text: str, score: float, quad: np.ndarray, shape: tuple[int, ...]) -> Word:
    xs, ys = quad[:, 0], quad[:, 1]
    h, w = shape[:2]
    box = (
        max(0, int(np.floor(xs.min()))),
        max(0, int(np.floor(ys.min()))),
        min(w, int(np.ceil(xs.max()))),
        min(h, int(np.ceil(ys.max()))),
    )
    return Word(str(text), round(float(score), 4), box)


def load() -> OcrReader:
    """The process's reader, loaded on first use."""
    global _READER
    with _LOCK:
        if _READER is None:
            _READER = _build()
        return _READER


def _build() -> OcrReader:
    from rapidocr import RapidOCR

    params = {
        "Global.log_level": "error",  # rapidocr logs a warning for every image without text
        "Det.limit_type": "max",
        "Det.limit_side_len": DET_MAX_SIDE,
    }
    engine = RapidOCR(params=params)
    version = f"rapidocr {metadata.version('rapidocr')} / onnxruntime {metadata.version('onnxruntime')}"
    return OcrReader(engine, version)
