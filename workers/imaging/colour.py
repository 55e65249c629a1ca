"""Colour science for QC: sRGB -> CIE L*a*b*, CIEDE2000 colour difference, brand palettes.

Why CIEDE2000: brand colour and product colour questions are "would a person see a
difference?", and dE00 is the CIE's current answer to that. Plain Euclidean Lab (CIE76)
overstates differences between saturated colours by a factor of 2-3 and understates
those in the blues, so one threshold cannot mean the same thing across a palette.

* :func:`rgb_to_lab` uses OpenCV's float path (sRGB transfer curve, D65 white, L* 0-100).
* :func:`ciede2000` is written from Sharma, Wu & Dalal (2005), "The CIEDE2000 colour-difference
  formula: implementation notes, supplementary test data, and mathematical observations",
  Color Res. Appl. 30(1), with kL = kC = kH = 1, and reproduces their 34 test pairs.
"""

from __future__ import annotations

import re

import cv2
import numpy as np

__all__ = ["ciede2000", "mean_delta_e", "palette_rgb", "parse_palette", "rgb01_to_lab", "rgb_to_lab"]

_HEX = re.compile(r"#[0-9a-fA-F]{6}")
_POW25_7 = 25.0**7


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 sRGB (..., 3) -> float32 CIE L*a*b* (..., 3), D65 white, L* in 0-100.

    OpenCV's ``COLOR_RGB2Lab`` on float32 0-1 input applies the sRGB transfer curve and
    the D65 white point and returns L* 0-100, a*/b* unscaled (the uint8 path would scale
    and offset them into 0-255). It agrees with the exact CIE formula to ~0.01.
    """
    arr = np.asarray(rgb)
    if arr.dtype != np.uint8 or arr.ndim < 1 or arr.shape[-1] != 3:
        raise ValueError(f"rgb: expected a uint8 array of shape (..., 3), got {arr.dtype} {arr.shape}")
    return rgb01_to_lab(arr.astype(np.float32) / np.float32(255.0))


def rgb01_to_lab(rgb: np.ndarray) -> np.ndarray:
    """Float sRGB in 0-1 (..., 3) -> float32 Lab, as :func:`rgb_to_lab` (for colours between uint8 steps)."""
    arr = np.asarray(rgb, np.float32)
    if arr.ndim < 1 or arr.shape[-1] != 3:
        raise ValueError(f"rgb: expected an array of shape (..., 3), got {arr.shape}")
    flat = np.clip(arr.reshape(-1, 1, 3), 0.0, 1.0)
    if flat.shape[0] == 0:
        return np.zeros(arr.shape, np.float32)
    return cv2.cvtColor(flat, cv2.COLOR_RGB2Lab).reshape(arr.shape)


def ciede2000(lab1: np.ndarray, lab2: np.ndarray) -> np.ndarray:
    """CIEDE2000 colour difference dE00 (kL = kC = kH = 1) of broadcastable (..., 3) Lab arrays.

    Computed in float64 (the hue-angle branches of Sharma's test pairs turn on 1e-4
    differences in a*/b*). Symmetric in its arguments; exactly 0 for identical colours.
    """
    a, b = np.asarray(lab1, np.float64), np.asarray(lab2, np.float64)
    if a.shape[-1:] != (3,) or b.shape[-1:] != (3,):
        raise ValueError(f"lab1/lab2: expected arrays of shape (..., 3), got {a.shape} and {b.shape}")
    (l1, c1, h1), (l2, c2, h2) = _prime(a, b)
    dl, dc, dh_big, l_bar, c_bar, h_bar = _differences(l1, c1, h1, l2, c2, h2)
    t = (
        1
        - 0.17 * _cosd(h_bar - 30)
        + 0.24 * _cosd(2 * h_bar)
        + 0.32 * _cosd(3 * h_bar + 6)
        - 0.20 * _cosd(4 * h_bar - 63)
    )
    d_theta = 30 * np.exp(-(((h_bar - 275) / 25) ** 2))
    c7 = c_bar**7
    r_c = 2 * np.sqrt(c7 / (c7 + _POW25_7))
    s_l = 1 + 0.015 * (l_bar - 50) ** 2 / np.sqrt(20 + (l_bar - 50) ** 2)
    s_c = 1 + 0.045 * c_bar
    s_h = 1 + 0.015 * c_bar * t
    r_t = -np.sin(np.radians(2 * d_theta)) * r_c  # the blue-region rotation term
    tl, tc, th = dl / s_l, dc / s_c, dh_big / s_h
    delta: np.ndarray = np.sqrt(np.maximum(tl**2 + tc**2 + th**2 + r_t * tc * th, 0.0))
    return delta


def _prime(a: np.ndarray, b: np.ndarray) -> tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]:
    """(L, C', h' in degrees) of both colours: a* stretched by G near the neutral axis."""
    c_mean = (np.hypot(a[..., 1], a[..., 2]) + np.hypot(b[..., 1], b[..., 2])) / 2
    c7 = c_mean**7
    g = 0.5 * (1 - np.sqrt(c7 / (c7 + _POW25_7)))
    out = []
    for lab in (a, b):
        ap = (1 + g) * lab[..., 1]
        cp = np.hypot(ap, lab[..., 2])
        hp = np.degrees(np.arctan2(lab[..., 2], ap)) % 360.0
        out.append((lab[..., 0], cp, np.where(cp == 0, 0.0, hp)))  # hue of a neutral is 0 by definition
    return out[0], out[1]


def _differences(
    l1: np.ndarray, c1: np.ndarray, h1: np.ndarray, l2: np.ndarray, c2: np.ndarray, h2: np.ndarray
) -> tuple[np.ndarray, ...]:
    """dL', dC', dH' and the means L', C', h' (hue differences and means taken the short way round)."""
    neutral = (c1 * c2) == 0
    dh = h2 - h1
    dh = np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh))
    dh = np.where(neutral, 0.0, dh)
    dh_big = 2 * np.sqrt(c1 * c2) * np.sin(np.radians(dh / 2))
    hsum, far = h1 + h2, np.abs(h1 - h2) > 180
    h_bar = np.where(far, np.where(hsum < 360, hsum + 360, hsum - 360), hsum) / 2
    h_bar = np.where(neutral, hsum, h_bar)
    return l2 - l1, c2 - c1, dh_big, (l1 + l2) / 2, (c1 + c2) / 2, h_bar


def _cosd(deg: np.ndarray) -> np.ndarray:
    cos: np.ndarray = np.cos(np.radians(deg))
    return cos


def mean_delta_e(rgb_a: np.ndarray, rgb_b: np.ndarray, mask: np.ndarray) -> float:
    """Mean dE00 between two uint8 HxWx3 sRGB images over the pixels where ``mask`` (HxW bool) is set."""
    a, b, m = np.asarray(rgb_a), np.asarray(rgb_b), np.asarray(mask)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"rgb_a: expected a uint8 HxWx3 array, got {a.dtype} {a.shape}")
    if b.shape != a.shape or b.dtype != np.uint8:
        raise ValueError(f"rgb_b: expected a uint8 array of shape {a.shape}, got {b.dtype} {b.shape}")
    if m.shape != a.shape[:2] or m.dtype != np.bool_:
        raise ValueError(f"mask: expected a bool array of shape {a.shape[:2]}, got {m.dtype} {m.shape}")
    if not m.any():
        raise ValueError("mask: empty")
    pa, pb = a[m], b[m]
    # dE00 of identical colours is exactly 0: only differing pixels need the (costly) formula, and a
    # candidate whose product is intact, the usual case, costs one comparison.
    differ = (pa != pb).any(axis=1)
    if not differ.any():
        return 0.0
    return float(ciede2000(rgb_to_lab(pa[differ]), rgb_to_lab(pb[differ])).sum()) / len(pa)


def palette_rgb(palette: list[str]) -> np.ndarray:
    """uint8 (K, 3) sRGB of "#RRGGBB" strings; ValueError naming ``palette[i]`` on a bad entry."""
    if not isinstance(palette, list | tuple):
        raise ValueError(f"palette: expected a list of '#RRGGBB' strings, got {type(palette).__name__}")
    out = np.zeros((len(palette), 3), np.uint8)
    for i, value in enumerate(palette):
        if not isinstance(value, str) or not _HEX.fullmatch(value.strip()):
            raise ValueError(f"palette[{i}]: expected '#RRGGBB', got {value!r}")
        out[i] = [int(value.strip()[k : k + 2], 16) for k in (1, 3, 5)]
    return out


def parse_palette(palette: list[str]) -> np.ndarray:
    """float32 (K, 3) Lab of "#RRGGBB" strings (K may be 0); ValueError naming ``palette[i]``."""
    return rgb_to_lab(palette_rgb(palette))
