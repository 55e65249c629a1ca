"""WCAG 2.x relative luminance and contrast ratio, measured against real pixels.

The contrast of a text is its colour against the *worst* background pixel behind it: every pixel of the
glyphs' bounding box (ink box) in the image before the text is drawn (scene, scrim or button), the one
whose relative luminance gives the lowest ratio. This is stricter than an average or a percentile: one
bright pixel behind white text lowers the figure, which is what a reader of a busy photo experiences.
"""

from __future__ import annotations

import numpy as np

from workers.creative.schema import Box, Rgb

WEIGHTS = np.array([0.2126, 0.7152, 0.0722])


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Relative luminance (WCAG 2.x, sRGB) of uint8 RGB values, shape (..., 3) -> (...)."""
    c = rgb.astype(np.float64) / 255.0
    # WCAG 2.x writes 0.03928; the sRGB standard's 0.04045 differs only for values no 8-bit channel takes.
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    return np.asarray(linear @ WEIGHTS)


def ratio(l1: float, l2: float) -> float:
    hi, lo = max(l1, l2), min(l1, l2)
    return (hi + 0.05) / (lo + 0.05)


def worst(color: Rgb, background: np.ndarray, box: Box) -> float:
    """The lowest contrast ratio of ``color`` against any pixel of ``background`` (H, W, 3) inside ``box``."""
    x0, y0, x1, y1 = box
    patch = background[y0:y1, x0:x1].reshape(-1, 3)
    if patch.size == 0:
        raise ValueError(f"box {box}: empty")
    lum = luminance(patch)
    text = float(luminance(np.array(color, np.uint8)))
    ratios = (np.maximum(lum, text) + 0.05) / (np.minimum(lum, text) + 0.05)
    return float(ratios.min())
