"""The demo's media library, painted here with numpy + Pillow: no downloads, no stock photos.

`build_library(dir)` writes eight PNGs (three RGBA product cut-outs with real alpha, one
opaque studio shot for the GrabCut path, four >= 1024 px backgrounds) and returns what
`POST /v1/assets` needs for each. Everything is a pure function of fixed seeds, so two
runs write byte-identical files and the demo's retrieval and scores are reproducible.

Painting model: shapes are drawn as coverage masks at SS x resolution and box-reduced
(antialiased edges); colour is computed at output resolution as float RGB and laid on
with premultiplied "over", so cut-outs have soft, fringe-free alpha edges.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

SS = 4  # supersampling of shape masks; 4x4 samples per pixel is plenty for 8-bit alpha
BG_SS = 2  # backgrounds are 6x larger: 2x2 keeps them fast and still smooth
BG_SIZE = (1536, 1024)  # landscape, >= 1024 on both sides so any 1024 canvas can be cropped

Point = tuple[float, float]
Array = np.ndarray
ColorLike = str | tuple[float, float, float] | Array


# --------------------------------------------------------------------------- colour & grids


def rgb(hex_color: str) -> Array:
    """'#RRGGBB' -> float32 RGB in 0..1."""
    h = hex_color.lstrip("#")
    return np.array([int(h[i : i + 2], 16) for i in (0, 2, 4)], np.float32) / 255.0


def _as_color(color: ColorLike, shape: tuple[int, int]) -> Array:
    if isinstance(color, str):
        color = rgb(color)
    arr = np.asarray(color, np.float32)
    return arr if arr.ndim == 3 else np.broadcast_to(arr, (*shape, 3))


def coords(w: int, h: int) -> tuple[Array, Array]:
    """Pixel-centre x and y grids (float32), the domain every gradient is computed on."""
    xs = np.arange(w, dtype=np.float32) + 0.5
    ys = np.arange(h, dtype=np.float32) + 0.5
    return np.meshgrid(xs, ys)


def ramp(t: Array, stops: Sequence[tuple[float, str]]) -> Array:
    """Multi-stop colour gradient: t (any shape) -> t.shape + (3,)."""
    pos = [p for p, _ in stops]
    cols = np.stack([rgb(c) for _, c in stops])
    return np.stack([np.interp(t, pos, cols[:, i]) for i in range(3)], axis=-1).astype(np.float32)


def mix(a: ColorLike, b: ColorLike, t: Array | float, shape: tuple[int, int]) -> Array:
    t_arr = np.asarray(t, np.float32)
    t_arr = t_arr[..., None] if t_arr.ndim == 2 else t_arr
    return _as_color(a, shape) * (1 - t_arr) + _as_color(b, shape) * t_arr


def smoothstep(e0: float | Array, e1: float | Array, x: Array) -> Array:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return np.asarray(t * t * (3 - 2 * t), np.float32)


# --------------------------------------------------------------------------- blur & noise


def _box(a: Array, r: int, axis: int) -> Array:
    """Running mean of width 2r+1 along one axis (edge-padded), via a cumulative sum."""
    pad = [(0, 0)] * a.ndim
    pad[axis] = (r + 1, r)
    c = np.cumsum(np.pad(a, pad, mode="edge"), axis=axis, dtype=np.float64)
    hi = np.take(c, np.arange(2 * r + 1, c.shape[axis]), axis=axis)
    lo = np.take(c, np.arange(0, c.shape[axis] - 2 * r - 1), axis=axis)
    return ((hi - lo) / (2 * r + 1)).astype(np.float32)


def blur(a: Array, sigma: float) -> Array:
    """Gaussian-like blur of a float array (three box passes per axis). Pillow's
    GaussianBlur does not take float images and 8-bit would band the gradients."""
    r = max(1, round(sigma * 0.9))
    out = a.astype(np.float32)
    for axis in (0, 1):
        for _ in range(3):
            out = _box(out, r, axis)
    return out


def noise(w: int, h: int, rng: np.random.Generator, cells: tuple[int, int], octaves: int = 4) -> Array:
    """Fractal value noise in 0..1: random grids upsampled bicubically and summed."""
    total, weight = np.zeros((h, w), np.float32), 0.0
    for octave in range(octaves):
        cw, ch = cells[0] * 2**octave + 3, cells[1] * 2**octave + 3
        small = Image.fromarray(rng.random((ch, cw), dtype=np.float32), "F")
        amp = 0.5**octave
        total += amp * np.asarray(small.resize((w, h), Image.Resampling.BICUBIC), np.float32)
        weight += amp
    total /= weight
    lo, hi = float(total.min()), float(total.max())
    return (total - lo) / max(hi - lo, 1e-6)


def noise_at(u: Array, v: Array, table: Array, octaves: int = 4) -> Array:
    """Fractal value noise sampled at arbitrary coordinates (for textures in perspective)."""
    n = table.shape[0]
    total, weight = np.zeros_like(u, np.float32), 0.0
    for octave in range(octaves):
        f, amp = 2.0**octave, 0.5**octave
        uu, vv = u * f + 17.3 * octave, v * f + 31.7 * octave  # decorrelate octaves
        i, j = np.floor(uu).astype(np.int64), np.floor(vv).astype(np.int64)
        fu, fv = smoothstep(0, 1, uu - i), smoothstep(0, 1, vv - j)
        a, b = table[j % n, i % n], table[j % n, (i + 1) % n]
        c, d = table[(j + 1) % n, i % n], table[(j + 1) % n, (i + 1) % n]
        total += amp * ((a * (1 - fu) + b * fu) * (1 - fv) + (c * (1 - fu) + d * fu) * fv)
        weight += amp
    return total / weight


# --------------------------------------------------------------------------- shapes


def spline(points: Sequence[Point], n: int = 14, closed: bool = False) -> list[Point]:
    """Catmull-Rom curve through the points: smooth outlines from a few key points."""
    pts = np.asarray(points, np.float64)
    ext = np.vstack([pts[-1:], pts, pts[:2]]) if closed else np.vstack([pts[:1], pts, pts[-1:]])
    out: list[Point] = []
    segments = len(pts) if closed else len(pts) - 1
    for i in range(segments):
        p0, p1, p2, p3 = ext[i : i + 4]
        for t in np.linspace(0, 1, n, endpoint=False):
            q = 0.5 * (
                2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t * t + (3 * p1 - p0 - 3 * p2 + p3) * t**3
            )
            out.append((float(q[0]), float(q[1])))
    if not closed:
        out.append((float(pts[-1][0]), float(pts[-1][1])))
    return out


class Pen:
    """ImageDraw on an SS x supersampled mask, taking coordinates in output pixels."""

    def __init__(self, size: tuple[int, int], ss: int = SS) -> None:
        self.size, self.ss = size, ss
        self.image = Image.new("L", (size[0] * ss, size[1] * ss), 0)
        self.draw = ImageDraw.Draw(self.image)

    def _pts(self, pts: Sequence[Point]) -> list[Point]:
        return [(x * self.ss, y * self.ss) for x, y in pts]

    def polygon(self, pts: Sequence[Point], fill: int = 255) -> Pen:
        self.draw.polygon(self._pts(pts), fill=fill)
        return self

    def ellipse(self, box: Sequence[float], fill: int = 255) -> Pen:
        self.draw.ellipse([v * self.ss for v in box], fill=fill)
        return self

    def rect(self, box: Sequence[float], fill: int = 255, radius: float = 0) -> Pen:
        self.draw.rounded_rectangle([v * self.ss for v in box], radius=radius * self.ss, fill=fill)
        return self

    def line(self, pts: Sequence[Point], width: float, fill: int = 255) -> Pen:
        self.draw.line(self._pts(pts), fill=fill, width=max(1, round(width * self.ss)), joint="curve")
        r = width * self.ss / 2  # round caps: ImageDraw lines end square
        for x, y in (self._pts(pts)[0], self._pts(pts)[-1]):
            self.draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
        return self

    def cover(self) -> Array:
        """Coverage 0..1 at output resolution (the box reduce is the antialiasing)."""
        return np.asarray(self.image.reduce(self.ss), np.float32) / 255.0


def shape(size: tuple[int, int], draw: Callable[[Pen], Any], ss: int = SS) -> Array:
    pen = Pen(size, ss)
    draw(pen)
    return pen.cover()


def dashes(pts: Sequence[Point], dash: float, gap: float) -> list[list[Point]]:
    """Split a polyline into dash segments of equal arc length (stitching)."""
    p = np.asarray(pts, np.float64)
    seg = np.hypot(*np.diff(p, axis=0).T)
    dist = np.concatenate([[0.0], np.cumsum(seg)])
    out: list[list[Point]] = []
    for start in np.arange(0.0, dist[-1] - dash, dash + gap):
        ts = np.linspace(start, start + dash, 4)
        out.append([(float(np.interp(t, dist, p[:, 0])), float(np.interp(t, dist, p[:, 1]))) for t in ts])
    return out


# --------------------------------------------------------------------------- canvas


class Canvas:
    """Premultiplied float RGBA: `paint` is Porter-Duff over, so soft edges stay fringe-free."""

    def __init__(self, w: int, h: int, base: Array | None = None) -> None:
        self.w, self.h = w, h
        self.prem: Array = np.zeros((h, w, 3), np.float32) if base is None else base.astype(np.float32).copy()
        self.alpha: Array = np.zeros((h, w), np.float32) if base is None else np.ones((h, w), np.float32)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.h, self.w)

    def paint(self, cover: Array, color: ColorLike, opacity: float = 1.0) -> Canvas:
        a = np.clip(cover * opacity, 0.0, 1.0)
        self.prem = _as_color(color, self.shape) * a[..., None] + self.prem * (1 - a[..., None])
        self.alpha = a + self.alpha * (1 - a)
        return self

    def glow(self, amount: Array, color: ColorLike) -> Canvas:
        """Additive light (sun, lamps, specular): brightens what is there, adds no coverage."""
        self.prem = self.prem + _as_color(color, self.shape) * (amount * self.alpha)[..., None]
        return self

    def shade(self, factor: Array, where: Array | None = None) -> Canvas:
        """Multiply colour by factor (1 = unchanged) where `where` covers."""
        f = factor if where is None else 1 + (factor - 1) * where
        self.prem = self.prem * (f[..., None] if f.ndim == 2 else f)
        return self

    def rgba(self) -> Image.Image:
        a = np.clip(self.alpha, 0, 1)
        col = np.where(a[..., None] > 1e-4, self.prem / np.maximum(a, 1e-4)[..., None], 0)
        out = np.dstack([np.clip(col, 0, 1), a]) * 255 + 0.5
        return Image.fromarray(out.astype(np.uint8), "RGBA")

    def rgb(self) -> Image.Image:
        return self.rgba().convert("RGB")


def roundness(cover: Array, sigma: float) -> Array:
    """0 at a shape's rim rising to 1 inside: blurred coverage reads as curvature."""
    return np.clip((blur(cover, sigma) - 0.5) * 2.2, 0, 1) * (cover > 0)


def fine_grain(canvas: Canvas, rng: np.random.Generator, amount: float) -> Canvas:
    """Film-like grain so flat fills do not look like vector art."""
    g = rng.normal(0.0, 1.0, canvas.shape).astype(np.float32)
    return canvas.shade(1 + amount * g)


# =========================================================================== products


def paint_shoe() -> Image.Image:
    """A red running shoe in side view, toe to the right, on a transparent background."""
    w, h = 600, 400
    cv = Canvas(w, h)
    xx, yy = coords(w, h)
    rng = np.random.default_rng(101)
    tab = shape((w, h), lambda p: p.rect((50, 104, 72, 170), radius=9))  # heel pull tab, behind the collar
    cv.paint(tab, "#FFC914")
    cv.shade(0.78 + 0.28 * roundness(tab, 4), tab)
    upper = _shoe_upper(cv, xx, yy)
    _shoe_details(cv, upper, xx, yy)
    _shoe_laces(cv)
    _shoe_sole(cv, xx, yy)
    return fine_grain(cv, rng, 0.012).rgba()


SHOE_UPPER = [
    (70, 292),
    (54, 250),
    (50, 200),
    (60, 156),
    (78, 128),
    (118, 140),
    (165, 152),
    (205, 150),
    (232, 118),
    (256, 96),
    (286, 100),
    (330, 148),
    (400, 194),
    (470, 226),
    (530, 248),
    (566, 270),
    (572, 292),
    (540, 298),
    (300, 300),
]


def _shoe_upper(cv: Canvas, xx: Array, yy: Array) -> Array:
    upper = shape((cv.w, cv.h), lambda p: p.polygon(spline(SHOE_UPPER, closed=True)))
    base = ramp(yy / cv.h, [(0.2, "#F0533A"), (0.55, "#D62F22"), (0.8, "#A81E18")])
    mesh = 1 + 0.05 * np.sin(xx * 1.3 + yy * 1.3) * np.sin(xx * 1.3 - yy * 1.3)  # knit texture
    cv.paint(upper, base * mesh[..., None])
    cv.shade(0.72 + 0.34 * roundness(upper, 16), upper)
    hi = np.exp(-(((xx - 330) / 150) ** 2 + ((yy - 170) / 40) ** 2))
    cv.glow(0.22 * hi * upper, "#FFE1D6")  # soft top light on the vamp
    return upper


def _shoe_details(cv: Canvas, upper: Array, xx: Array, yy: Array) -> None:
    size = (cv.w, cv.h)
    heel = (
        shape(
            size,
            lambda p: p.polygon(
                spline([(48, 170), (66, 136), (108, 142), (136, 200), (142, 292), (60, 292)], closed=True)
            ),
        )
        * upper
    )
    cv.paint(heel, "#8E1712", 0.85)
    cv.shade(0.8 + 0.25 * roundness(heel, 10), heel)
    stripe_pts = spline([(112, 262), (200, 222), (300, 200), (380, 214), (440, 246)]) + spline(
        [(418, 258), (360, 236), (300, 232), (210, 250), (124, 282)]
    )
    stripe = shape(size, lambda p: p.polygon(stripe_pts)) * upper
    cv.paint(stripe, ramp(xx / cv.w, [(0.15, "#0E8E8C"), (0.7, "#17BEBB"), (0.9, "#7FE3E0")]))
    cv.shade(0.85 + 0.2 * roundness(stripe, 4), stripe)
    _shoe_collar(cv, size)
    _stitches(cv, spline([(120, 146), (146, 205), (150, 286)]), "#F7C9BF", 0.7)
    _stitches(cv, spline([(118, 254), (204, 214), (300, 192), (384, 206), (446, 238)]), "#D9FFFD", 0.8)
    toe = (
        shape(
            size, lambda p: p.polygon(spline([(470, 236), (540, 252), (570, 280), (566, 296), (490, 296)], closed=True))
        )
        * upper
    )
    cv.paint(toe, "#C1261C", 0.55)


def _shoe_collar(cv: Canvas, size: tuple[int, int]) -> None:
    lining = spline([(62, 152), (80, 126), (120, 138), (168, 150), (206, 148), (236, 116)])
    cv.paint(shape(size, lambda p: p.line(lining, 9)), "#2A2426")
    cv.paint(shape(size, lambda p: p.line([(x, y + 7) for x, y in lining[2:-6]], 5)), "#5A4A4C", 0.6)
    tongue = spline([(238, 114), (256, 92), (290, 96), (300, 112)])
    cv.paint(shape(size, lambda p: p.line(tongue, 7)), "#F25A45")


def _stitches(cv: Canvas, pts: Sequence[Point], color: str, opacity: float) -> None:
    cover = shape((cv.w, cv.h), lambda p: [p.line(d, 1.6) for d in dashes(pts, 5, 4)])
    cv.paint(cover, color, opacity)


def _shoe_laces(cv: Canvas) -> None:
    """White laces crossing the throat, with dark eyelets beside them."""
    size = (cv.w, cv.h)
    a, b = np.array([262.0, 112.0]), np.array([392.0, 190.0])
    d = (b - a) / np.linalg.norm(b - a)
    n = np.array([d[1], -d[0]])  # points up-right, out of the throat
    eyelets, laces = Pen(size), Pen(size)
    for t in np.linspace(0, 1, 6):
        p = a + (b - a) * t
        q0, q1 = p - n * 17 + d * 3, p + n * 1 - d * 5  # from the eyelet over the throat edge
        eyelets.ellipse((q0[0] - 4.5, q0[1] - 4.5, q0[0] + 4.5, q0[1] + 4.5))
        laces.line([tuple(q0), tuple(q1)], 7)
    cv.paint(eyelets.cover(), "#3A2C2E")
    lace = laces.cover()
    cv.paint(lace, "#FAFAF7")
    cv.shade(0.78 + 0.25 * roundness(lace, 2), lace)


def _shoe_sole(cv: Canvas, xx: Array, yy: Array) -> None:
    size = (cv.w, cv.h)
    top = [(46, 278), (120, 290), (300, 296), (460, 292), (540, 280), (584, 272)]
    bottom = [(588, 286), (574, 314), (540, 326), (300, 334), (100, 334), (58, 324), (44, 300)]
    outsole_pts = [
        (50, 318),
        (120, 332),
        (300, 336),
        (540, 328),
        (580, 304),
        (588, 290),
        (584, 318),
        (548, 340),
        (300, 348),
        (100, 346),
        (54, 336),
    ]
    outsole = shape(size, lambda p: p.polygon(spline(outsole_pts, closed=True)))
    cv.paint(outsole, ramp(yy / cv.h, [(0.8, "#3C3A3F"), (0.87, "#1E1C20")]))
    treads = shape(size, lambda p: [p.line([(x, 338), (x + 5, 346)], 3) for x in range(80, 540, 14)]) * outsole
    cv.paint(treads, "#0E0D10", 0.8)
    mid = shape(size, lambda p: p.polygon(spline(top + bottom, closed=True)))
    cv.paint(mid, ramp(yy / cv.h, [(0.68, "#FFFFFF"), (0.8, "#E9E6E1"), (0.84, "#C9C5C0")]))
    cv.shade(0.85 + 0.15 * roundness(mid, 6), mid)
    wave = spline([(70, 310), (150, 300), (230, 314), (320, 304), (410, 316), (500, 304), (560, 296)])
    cv.paint(shape(size, lambda p: p.line(wave, 2.2)) * mid, "#B9B4AE", 0.8)


def paint_handbag() -> Image.Image:
    """A cognac leather tote, front view; the handle's opening is transparent."""
    w, h = 600, 440
    cv = Canvas(w, h)
    xx, yy = coords(w, h)
    rng = np.random.default_rng(202)
    grain = noise(w, h, rng, (60, 44), octaves=2)
    body = _bag_body(cv, xx, yy, grain)
    _bag_handle(cv, xx, yy, grain)
    _bag_flap(cv, body, xx, yy)
    return fine_grain(cv, rng, 0.01).rgba()


BAG_BODY = [
    (150, 168),
    (300, 162),
    (450, 168),
    (478, 290),
    (494, 392),
    (470, 412),
    (300, 416),
    (130, 412),
    (106, 392),
    (122, 290),
]


def _leather(xx: Array, yy: Array, grain: Array, shape_hw: tuple[int, int]) -> Array:
    base = ramp(yy / shape_hw[0], [(0.1, "#C9773F"), (0.5, "#A65A2A"), (0.95, "#7A3D1A")])
    return base * (0.94 + 0.12 * grain[..., None])  # pebbled grain


def _bag_body(cv: Canvas, xx: Array, yy: Array, grain: Array) -> Array:
    body = shape((cv.w, cv.h), lambda p: p.polygon(spline(BAG_BODY, closed=True)))
    cv.paint(body, _leather(xx, yy, grain, cv.shape))
    u = (xx - 300) / 200
    cv.shade(np.clip(1.08 - 0.35 * u**2, 0.6, 1.1) * (0.75 + 0.3 * roundness(body, 18)), body)
    cv.glow(0.18 * np.exp(-(((xx - 250) / 70) ** 2)) * body * smoothstep(420, 200, yy), "#FFD9B8")
    inset = [(x + (300 - x) * 0.035, y + (290 - y) * 0.05) for x, y in BAG_BODY]
    _stitches(cv, spline(inset, closed=True) + spline(inset[:1]), "#F2D2A6", 0.75)
    return body


def _bag_handle(cv: Canvas, xx: Array, yy: Array, grain: Array) -> None:
    size = (cv.w, cv.h)
    ring = shape(size, lambda p: p.ellipse((196, 30, 404, 320)).ellipse((220, 54, 380, 300), fill=0))
    handle = ring * (yy < 176)
    cv.paint(handle, _leather(xx, yy, grain, cv.shape) * 0.92)
    cv.shade(0.7 + 0.4 * roundness(handle, 6), handle)
    tabs, rivets = Pen(size), Pen(size)
    for x in (212, 388):  # tabs with brass rivets hold the handle
        tabs.rect((x - 18, 150, x + 18, 204), radius=6)
        rivets.ellipse((x - 6, 180, x + 6, 192))
    cv.paint(tabs.cover(), "#6E3716")
    cv.paint(rivets.cover(), _brass(xx, yy, cv.shape))


def _brass(xx: Array, yy: Array, shape_hw: tuple[int, int]) -> Array:
    return ramp((yy + xx * 0.3) % 60 / 60, [(0.0, "#8A6A22"), (0.35, "#F6D77A"), (0.6, "#C9A13A"), (1.0, "#8A6A22")])


def _bag_flap(cv: Canvas, body: Array, xx: Array, yy: Array) -> None:
    size = (cv.w, cv.h)
    flap = (
        shape(
            size,
            lambda p: p.polygon(
                spline([(148, 168), (300, 160), (452, 168), (440, 230), (300, 262), (160, 230)], closed=True)
            ),
        )
        * body
    )
    cv.paint(flap, "#6B3415", 0.55)
    cv.shade(0.85 + 0.2 * roundness(flap, 8), flap)
    edge = spline([(156, 226), (300, 258), (444, 226)])
    cv.paint(shape(size, lambda p: p.line(edge, 3)) * body, "#4A220C", 0.7)
    clasp = shape(size, lambda p: p.rect((272, 240, 328, 284), radius=10).rect((284, 252, 316, 272), 0, 5))
    cv.paint(clasp, _brass(xx, yy, cv.shape))
    cv.shade(0.85 + 0.3 * roundness(clasp, 3), clasp)


def paint_bottle() -> Image.Image:
    """A teal insulated water bottle with a loop cap (its loop is a real hole in the alpha)."""
    w, h = 360, 640
    cv = Canvas(w, h)
    xx, yy = coords(w, h)
    rng = np.random.default_rng(303)
    shoulder = spline([(92, 270), (96, 222), (126, 184), (132, 150)])  # left side, mirrored for the right
    outline = shoulder + [(360 - x, y) for x, y in reversed(shoulder)]
    body = shape((w, h), lambda p: p.rect((92, 240, 268, 624), radius=28).polygon(outline))
    cv.paint(body, _cylinder_color(xx, 180, 88, "#17BEBB", "#0B5E5C"))
    _bottle_label(cv, xx, yy, body)
    _bottle_cap(cv, xx)
    cv.glow(0.55 * np.exp(-(((xx - 138) / 9) ** 2)) * body * smoothstep(600, 560, yy), "#FFFFFF")
    return fine_grain(cv, rng, 0.008).rgba()


def _cylinder_color(xx: Array, cx: float, half: float, lit: str, dark: str) -> Array:
    """Colour across a vertical cylinder lit from the front-left."""
    u = np.clip((xx - cx) / half, -1, 1)
    light = np.clip(np.sqrt(1 - u**2) * 0.8 + 0.25 * (1 - (u + 0.4) ** 2), 0, 1)
    return mix(dark, lit, light, xx.shape)


def _bottle_label(cv: Canvas, xx: Array, yy: Array, body: Array) -> None:
    band = body * ((yy > 340) & (yy < 430))
    cv.paint(band, _cylinder_color(xx, 180, 88, "#FFC914", "#A87F05"))
    font = ImageFont.load_default(34)
    text = Image.new("L", (cv.w, cv.h), 0)
    ImageDraw.Draw(text).text(
        (180, 386), "STRIDE", font=font, fill=255, anchor="mm", stroke_width=1, stroke_fill=255
    )  # the default face is thin: a 1 px stroke makes it a wordmark
    cv.paint(np.asarray(text, np.float32) / 255 * body, "#1F2A44", 0.9)


def _bottle_cap(cv: Canvas, xx: Array) -> None:
    size = (cv.w, cv.h)
    ring = shape(size, lambda p: p.ellipse((148, 14, 212, 92)).ellipse((162, 28, 198, 78), fill=0))
    cap = shape(size, lambda p: p.rect((124, 66, 236, 146), radius=14))
    neck = shape(size, lambda p: p.rect((128, 140, 232, 156), radius=3))
    cv.paint(ring, _cylinder_color(xx, 180, 32, "#4A4D55", "#15161A"))
    cv.paint(cap, _cylinder_color(xx, 180, 56, "#55585F", "#111215"))
    cv.paint(neck, _cylinder_color(xx, 180, 52, "#D8DCDF", "#6D7276"))  # steel rim
    ridges = shape(size, lambda p: [p.line([(x, 76), (x, 136)], 1.2) for x in range(134, 230, 8)]) * cap
    cv.paint(ridges, "#000000", 0.35)


def paint_studio_mug() -> Image.Image:
    """An opaque studio shot: a navy ceramic mug on a near-white seamless backdrop."""
    w, h = 900, 700
    xx, yy = coords(w, h)
    rng = np.random.default_rng(404)
    backdrop = ramp(yy / h, [(0.0, "#F7F6F3"), (0.6, "#F1F0EC"), (1.0, "#E8E6E1")])
    cv = Canvas(w, h, backdrop)
    shadow = blur(shape((w, h), lambda p: p.ellipse((300, 555, 700, 605)), ss=2), 14)
    cv.shade(1 - 0.22 * shadow)  # soft contact shadow, light enough to stay "background"
    _mug_handle(cv, xx)
    _mug_body(cv, xx, yy)
    return fine_grain(cv, rng, 0.006).rgb()


def _mug_body(cv: Canvas, xx: Array, yy: Array) -> None:
    size = (cv.w, cv.h)
    body = shape(size, lambda p: p.rect((290, 200, 590, 530)).ellipse((290, 480, 590, 580)), ss=2)
    cv.paint(body, _cylinder_color(xx, 440, 150, "#2E4C8C", "#0F1A33"))
    cv.glow(
        0.5 * np.exp(-(((xx - 372) / 14) ** 2)) * body * smoothstep(560, 480, yy) * smoothstep(200, 260, yy), "#FFFFFF"
    )
    rim = shape(size, lambda p: p.ellipse((290, 170, 590, 232)), ss=2)
    cv.paint(rim, "#3A5BA0")
    inside = shape(size, lambda p: p.ellipse((302, 176, 578, 226)), ss=2)
    cv.paint(inside, ramp(yy / cv.h, [(0.25, "#0A1222"), (0.32, "#223867")]))
    stripe = body * ((yy > 300) & (yy < 326)) * (1 - rim)
    cv.paint(stripe, _cylinder_color(xx, 440, 150, "#FFC914", "#8F6F05"))


def _mug_handle(cv: Canvas, xx: Array) -> None:
    ring = shape((cv.w, cv.h), lambda p: p.ellipse((520, 270, 700, 470)).ellipse((560, 310, 660, 430), fill=0), ss=2)
    cv.paint(ring, _cylinder_color(xx, 610, 90, "#2A4580", "#0F1A33"))
    cv.shade(0.75 + 0.35 * roundness(ring, 8), ring)


# =========================================================================== backgrounds


def _bg() -> tuple[int, int, Array, Array]:
    w, h = BG_SIZE
    xx, yy = coords(w, h)
    return w, h, xx, yy


def _bg_shape(draw: Callable[[Pen], Any]) -> Array:
    return shape(BG_SIZE, draw, ss=BG_SS)


def _depth_s(z: float, z0: float = 1.0) -> float:
    """Screen fraction toward the vanishing point of a point at depth z (perspective 1/z)."""
    return z / (z + z0)


def _toward(p: Point, vp: Point, s: float) -> Point:
    return (p[0] + (vp[0] - p[0]) * s, p[1] + (vp[1] - p[1]) * s)


def _vignette(cv: Canvas, xx: Array, yy: Array, strength: float) -> None:
    d = ((xx / cv.w - 0.5) ** 2 + (yy / cv.h - 0.5) ** 2) / 0.5
    cv.shade(1 - strength * d)


def paint_street_sunset() -> Image.Image:
    """An empty city street at sunset: one-point perspective toward a low sun."""
    w, h, xx, yy = _bg()
    rng = np.random.default_rng(505)
    vp = (768.0, 560.0)
    cv = Canvas(w, h, _sunset_sky(xx, yy, vp, rng))
    _skyline(cv, vp, rng)
    _street(cv, xx, yy, vp)
    for side in (-1, 1):
        _facades(cv, xx, vp, side, rng)
    _street_lamps(cv, xx, yy, vp)
    haze = np.exp(-np.abs(yy - vp[1]) / 70) * np.exp(-(((xx - vp[0]) / 500) ** 2))
    cv.glow(0.35 * haze, "#FFB870")
    _vignette(cv, xx, yy, 0.28)
    return fine_grain(cv, rng, 0.015).rgb()


def _sunset_sky(xx: Array, yy: Array, vp: Point, rng: np.random.Generator) -> Array:
    t = yy / vp[1]
    sky = ramp(
        t,
        [(0.0, "#241F52"), (0.3, "#5B2F78"), (0.58, "#C2467A"), (0.8, "#F2804F"), (0.95, "#FFC46E"), (1.05, "#FFE2A0")],
    )
    d = np.hypot(xx - vp[0], (yy - vp[1] + 40) * 1.4)
    sky = sky + (0.55 * np.exp(-((d / 260) ** 2)))[..., None] * rgb("#FFB25E")
    sun = smoothstep(64, 58, d)
    sky = sky * (1 - sun[..., None]) + sun[..., None] * rgb("#FFF4D6")
    clouds = noise(xx.shape[1], xx.shape[0], rng, (3, 14), octaves=4)
    streak = smoothstep(0.55, 0.8, clouds) * smoothstep(120, 260, yy) * smoothstep(500, 380, yy)
    return np.asarray(sky * (1 - 0.6 * streak[..., None]) + (0.6 * streak)[..., None] * rgb("#FF9E8A"), np.float32)


def _skyline(cv: Canvas, vp: Point, rng: np.random.Generator) -> None:
    """Distant towers around the vanishing point, hazed toward the sky colour."""
    for layer, (color, opacity, hmax) in enumerate([("#9C4E7E", 0.55, 230), ("#6A3566", 0.8, 150)]):
        pen = Pen(BG_SIZE, BG_SS)
        x = 380.0 + layer * 30
        while x < 1160:
            bw = float(rng.uniform(26, 70))
            top = vp[1] - float(rng.uniform(30, hmax))
            pen.rect((x, top, x + bw, vp[1] + 2))
            if rng.random() < 0.3:  # antenna
                pen.rect((x + bw / 2 - 1.5, top - 30, x + bw / 2 + 1.5, top))
            x += bw + float(rng.uniform(-8, 10))
        cv.paint(pen.cover(), color, opacity)


def _street(cv: Canvas, xx: Array, yy: Array, vp: Point) -> None:
    ground = smoothstep(vp[1] - 1, vp[1] + 1, yy)
    depth = np.clip((yy - vp[1]) / (cv.h - vp[1]), 0, 1)
    asphalt = ramp(depth, [(0.0, "#B0707A"), (0.12, "#6A4A63"), (0.5, "#3A3248"), (1.0, "#26222F")])
    cv.paint(ground, asphalt)
    sheen = np.exp(-(((xx - vp[0]) / (60 + 420 * depth)) ** 2)) * (1 - depth) ** 1.5 * ground
    cv.glow(0.45 * sheen, "#FF9A5C")  # the sun's reflection on the road
    _road_markings(cv, vp)
    walks = Pen(BG_SIZE, BG_SS)
    for s in (-1, 1):  # sidewalks: wedges between the curb line and the facade line
        walks.polygon(
            [(vp[0] + s * 8, vp[1]), (vp[0] + s * 1400, cv.h + 400), (vp[0] + s * 2400, cv.h), (vp[0] + s * 60, vp[1])]
        )
    cv.paint(walks.cover() * ground, ramp(depth, [(0.0, "#9A6A78"), (0.4, "#5E4A5E"), (1.0, "#463C4E")]))


def _road_markings(cv: Canvas, vp: Point) -> None:
    pen = Pen(BG_SIZE, BG_SS)
    for z in np.arange(0.25, 14, 1.1):
        s0, s1 = 1 - _depth_s(z, 3.0), 1 - _depth_s(z + 0.5, 3.0)
        y0, y1 = vp[1] + (cv.h + 300 - vp[1]) * s0, vp[1] + (cv.h + 300 - vp[1]) * s1
        w0, w1 = 14 * s0, 14 * s1
        pen.polygon([(vp[0] - w0, y0), (vp[0] + w0, y0), (vp[0] + w1, y1), (vp[0] - w1, y1)])
    cv.paint(pen.cover(), "#F3C98A", 0.85)
    edges = _bg_shape(
        lambda p: [p.line([(vp[0] + s * 6, vp[1] + 1), (vp[0] + s * 1100, cv.h + 300)], 5) for s in (-1, 1)]
    )
    cv.paint(edges, "#E9D7C4", 0.55)


def _facades(cv: Canvas, xx: Array, vp: Point, side: int, rng: np.random.Generator) -> None:
    """Buildings along one side of the street: perspective quads with window grids, hazier
    toward the vanishing point. One pen per layer keeps this to a handful of mask renders."""
    walls, edges, lit, dark = (Pen(BG_SIZE, BG_SS) for _ in range(4))
    near_x, z = vp[0] + side * vp[0], 0.0
    while z < 9:
        depth, top = float(rng.uniform(1.2, 2.6)), float(rng.uniform(-260, 160))
        quad = _facade_quad(vp, near_x, top, z, z + depth)
        walls.polygon(quad)
        edges.line([quad[0], quad[1]], 2.5)  # backlit roof line
        _windows(lit, dark, quad, rng)
        z += depth + 0.15
    haze = np.clip(1 - np.abs(xx - vp[0]) / vp[0], 0, 1) ** 1.5
    cv.paint(walls.cover(), mix("#22162A", "#9A5676", 0.5 * haze, cv.shape))
    cv.paint(edges.cover(), "#F29A7A", 0.55)
    cv.paint(dark.cover(), mix("#35263F", "#A0607E", 0.5 * haze, cv.shape), 0.8)
    cv.paint(lit.cover(), mix("#FFC978", "#FFD9A6", haze, cv.shape), 0.92)


def _facade_quad(vp: Point, near_x: float, top: float, z0: float, z1: float) -> list[Point]:
    bottom = vp[1] + 420
    s0, s1 = _depth_s(z0, 3.0), _depth_s(z1, 3.0)
    return [
        _toward((near_x, top), vp, s0),
        _toward((near_x, top), vp, s1),
        _toward((near_x, bottom), vp, s1),
        _toward((near_x, bottom), vp, s0),
    ]


def _bilinear(quad: Sequence[Point], u: float, v: float) -> Point:
    (ax, ay), (bx, by), (cx, cy), (dx, dy) = quad
    top = (ax + (bx - ax) * u, ay + (by - ay) * u)
    bot = (dx + (cx - dx) * u, dy + (cy - dy) * u)
    return (top[0] + (bot[0] - top[0]) * v, top[1] + (bot[1] - top[1]) * v)


def _windows(lit: Pen, dark: Pen, quad: Sequence[Point], rng: np.random.Generator) -> None:
    cols, rows = int(rng.integers(3, 6)), int(rng.integers(6, 14))
    for i in range(cols):
        for j in range(rows - 1):
            u0, u1 = (i + 0.25) / cols, (i + 0.75) / cols
            v0, v1 = (j + 0.3) / rows, (j + 0.8) / rows
            corners = [_bilinear(quad, u, v) for u, v in ((u0, v0), (u1, v0), (u1, v1), (u0, v1))]
            (lit if rng.random() < 0.38 else dark).polygon(corners)


def _street_lamps(cv: Canvas, xx: Array, yy: Array, vp: Point) -> None:
    posts, heads = Pen(BG_SIZE, BG_SS), Pen(BG_SIZE, BG_SS)
    glow = np.zeros(cv.shape, np.float32)
    for side in (-1, 1):
        for z in (0.6, 2.0, 4.5):
            s = _depth_s(z, 3.0)
            base = _toward((vp[0] + side * 700, cv.h + 200), vp, s)
            head = (base[0], base[1] - 520 * (1 - s))
            r = 10 * (1 - s) + 2
            posts.line([base, head], 9 * (1 - s) + 1)
            heads.ellipse((head[0] - r, head[1] - r * 0.6, head[0] + r, head[1] + r * 0.6))
            glow += np.exp(-((np.hypot(xx - head[0], yy - head[1]) / (70 * (1 - s) + 8)) ** 2))
    cv.paint(posts.cover(), "#1C1424")
    cv.paint(heads.cover(), "#FFF1CC")
    cv.glow(0.9 * glow, "#FFD28A")


def paint_beach_noon() -> Image.Image:
    """A bright beach at noon: blue sky with cumulus, turquoise sea, foam line, warm sand."""
    w, h, xx, yy = _bg()
    rng = np.random.default_rng(606)
    horizon = 470.0
    sky = ramp(yy / horizon, [(0.0, "#2F77C8"), (0.6, "#74B4E8"), (1.0, "#D6ECF7")])
    cv = Canvas(w, h, sky)
    cv.glow(0.35 * np.exp(-((np.hypot(xx - 1300, yy + 100) / 600) ** 2)), "#FFFFFF")
    for cx, cy, scale in ((300, 190, 1.0), (980, 120, 0.75), (1300, 300, 0.55)):
        _cloud(cv, rng, cx, cy, scale)
    island = _bg_shape(
        lambda p: p.polygon(
            spline(
                [(80, horizon + 2), (170, horizon - 22), (300, horizon - 34), (420, horizon - 10), (480, horizon + 2)]
            )
        )
    )
    cv.paint(island, "#7C9BB0", 0.8)
    # the waterline wanders: two slow swells plus noise, shared by sea and sand
    wander = noise(w, 4, rng, (18, 1), octaves=3)[0]
    shore = 660 + 12 * np.sin(xx / 97) + 6 * np.sin(xx / 31 + 1.3) + 22 * (wander[None, :] - 0.5)
    _sea(cv, xx, yy, horizon, shore, rng)
    _sand(cv, xx, yy, shore, rng)
    return fine_grain(cv, rng, 0.012).rgb()


def _cloud(cv: Canvas, rng: np.random.Generator, cx: float, cy: float, scale: float) -> None:
    pen = Pen(BG_SIZE, BG_SS)
    for _ in range(14):
        r = float(rng.uniform(40, 95)) * scale
        x, y = cx + float(rng.normal(0, 120)) * scale, cy + float(rng.normal(0, 22)) * scale
        pen.ellipse((x - r * 1.2, y - r, x + r * 1.2, min(y + r, cy + 55 * scale)))
    puff = blur(pen.cover(), 3)
    _, yy = coords(*BG_SIZE)
    body = ramp((yy - cy) / (90 * scale), [(-1.0, "#FFFFFF"), (0.2, "#F6F9FC"), (0.9, "#C7D5E2")])
    cv.paint(puff, body, 0.95)


def _sea(cv: Canvas, xx: Array, yy: Array, horizon: float, shore: Array, rng: np.random.Generator) -> None:
    sea = smoothstep(horizon - 0.8, horizon + 0.8, yy) * smoothstep(shore + 2, shore - 2, yy)
    t = np.clip((yy - horizon) / (shore - horizon), 0, 1)
    cv.paint(sea, ramp(t, [(0.0, "#1D5E92"), (0.45, "#1C8FB0"), (0.85, "#2EC2C0"), (1.0, "#7FE0D0")]))
    swell = noise(cv.w, cv.h, rng, (6, 110), octaves=3)  # many rows, few columns: horizontal swell
    cv.shade(1 - 0.08 * (swell - 0.5) * t, sea)
    glints = noise(cv.w, cv.h, rng, (40, 160), octaves=2)
    cv.glow(0.8 * smoothstep(0.78, 0.95, glints) * sea * (0.25 + 0.75 * t), "#FFFFFF")
    foam_noise = noise(cv.w, cv.h, rng, (50, 24), octaves=3)
    foam = np.exp(-(((yy - shore + 5) / 7) ** 2)) * smoothstep(0.25, 0.55, foam_noise)
    lace = np.exp(-(((yy - shore + 26) / 4) ** 2)) * smoothstep(0.55, 0.75, foam_noise)  # last wave's edge
    cv.paint(np.clip(foam * 1.5 + lace * 0.8, 0, 1), "#FBFEFF")


def _sand(cv: Canvas, xx: Array, yy: Array, shore: Array, rng: np.random.Generator) -> None:
    land = smoothstep(shore - 2, shore + 2, yy)
    t = np.clip((yy - shore) / (cv.h - shore), 0, 1)
    sand = ramp(t, [(0.0, "#B99A70"), (0.06, "#D2B487"), (0.3, "#E8CFA0"), (1.0, "#F0DBAF")])
    wet = np.exp(-np.maximum(yy - shore, 0) / 26)  # darker, glossier sand the wave just left
    sand = mix(sand, "#A58760", 0.7 * wet, cv.shape)
    grains = 0.95 + 0.07 * noise(cv.w, cv.h, rng, (700, 460), octaves=1)
    drifts = 0.95 + 0.08 * noise(cv.w, cv.h, rng, (12, 30), octaves=3)
    ripples = 1 - 0.03 * np.sin(yy / (6 + 10 * t) + 3 * np.sin(xx / 160)) * t
    cv.paint(land, sand * (grains * drifts * ripples)[..., None])


def paint_marble_kitchen() -> Image.Image:
    """A white marble counter in perspective against a softly blurred tiled kitchen wall."""
    w, h, xx, yy = _bg()
    rng = np.random.default_rng(707)
    back = 560.0
    wall = _tile_wall(xx, yy, back, rng)
    cv = Canvas(w, h, wall)
    _blurred_props(cv, xx, yy, back)
    counter = smoothstep(back - 0.8, back + 0.8, yy)
    cv.paint(counter, _marble(xx, yy, back, rng))
    _counter_reflection(cv, yy, back, counter)
    cv.shade(1 - 0.22 * np.exp(-(yy - back) / 12) * counter)  # contact shadow under the wall
    cv.glow(0.12 * np.exp(-((xx / 700) ** 2)) * counter, "#FFF3E0")  # window light from the left
    cv.paint(_bg_shape(lambda p: p.line([(0, back + 1), (w, back + 1)], 2)), "#FFFFFF", 0.5)
    _vignette(cv, xx, yy, 0.18)
    return fine_grain(cv, rng, 0.01).rgb()


def _tile_wall(xx: Array, yy: Array, back: float, rng: np.random.Generator) -> Array:
    """Offset subway tiles, rendered then blurred: the camera focuses on the counter."""
    tw, th = 120.0, 60.0
    row = np.floor(yy / th)
    u = (xx + (row % 2) * tw / 2) / tw
    grout = np.minimum(np.minimum(u % 1, 1 - u % 1) * tw, np.minimum(yy % th, th - yy % th))
    tone = rng.uniform(0.96, 1.02, (64, 64)).astype(np.float32)[row.astype(int) % 64, np.floor(u).astype(int) % 64]
    light = 1.03 - 0.22 * (xx / xx.shape[1]) - 0.1 * (1 - yy / back)
    wall = rgb("#EEEAE4") * (tone * light)[..., None]
    wall = wall * (1 - 0.14 * smoothstep(3, 0.5, grout))[..., None]
    return np.stack([blur(wall[..., i], 3) for i in range(3)], axis=-1)


def _blurred_props(cv: Canvas, xx: Array, yy: Array, back: float) -> None:
    """An out-of-focus plant and jar at the back right: depth and a hint of 'kitchen'."""
    pot = _bg_shape(lambda p: p.polygon([(1228, back - 150), (1372, back - 150), (1356, back + 3), (1244, back + 3)]))
    cv.paint(blur(pot, 5), ramp(xx / cv.w, [(0.8, "#E2D2BE"), (0.9, "#A88F76")]))
    pen = Pen(BG_SIZE, BG_SS)
    leaves = np.random.default_rng(708)
    for _ in range(120):
        angle = float(leaves.uniform(-2.6, -0.5))  # fan upward out of the pot
        reach = float(leaves.uniform(40, 240))
        x, y = 1300 + reach * math.cos(angle) * 1.2, back - 150 + reach * math.sin(angle)
        pen.ellipse((x - 20, y - 9, x + 20, y + 9))
    foliage = blur(pen.cover(), 7)
    cv.paint(
        foliage,
        ramp(yy / cv.h, [(0.1, "#78A85C"), (0.45, "#2F5A2E")]) * (0.8 + 0.3 * blur(pen.cover(), 2))[..., None],
        0.95,
    )
    jar = _bg_shape(lambda p: p.rect((1080, back - 120, 1170, back + 2), radius=16))
    cv.paint(blur(jar, 5), ramp(xx / cv.w, [(0.7, "#DCE6EA"), (0.76, "#A9BCC4")]), 0.85)


def _counter_reflection(cv: Canvas, yy: Array, back: float, counter: Array) -> None:
    """Polished stone mirrors the wall faintly: flip the rows above the back edge, blur, fade."""
    rows = np.clip((2 * back - yy[:, 0]).astype(int), 0, cv.h - 1)
    mirrored = cv.prem[rows, :, :]
    soft = np.stack([blur(mirrored[..., i], 6) for i in range(3)], axis=-1)
    fade = 0.22 * np.exp(-(yy - back) / 90) * counter
    cv.paint(fade, soft)


def _marble(xx: Array, yy: Array, back: float, rng: np.random.Generator) -> Array:
    """Veined marble evaluated on the ground plane, so veins foreshorten with distance."""
    horizon = back - 380.0
    z = (yy.shape[0] - horizon) / np.maximum(yy - horizon, 1.0)  # depth: 1 at the bottom edge
    gx = (xx - xx.shape[1] / 2) * z / 800.0
    table = rng.random((256, 256)).astype(np.float32)
    turb = noise_at(gx * 1.6, z * 1.6, table, 5)
    t = gx * 1.1 - z * 1.6 + 1.6 * turb
    soft = np.exp(-(np.sin(t * math.pi) ** 2) / 0.02) * (0.25 + 0.45 * noise_at(gx * 2 + 9, z * 2, table, 3))
    thin = np.exp(-(np.sin((gx * 2.3 + z * 1.2 + 2.2 * turb) * math.pi) ** 2) / 0.0015) * 0.3
    cloud = noise_at(gx * 1.2 + 50, z * 1.2, table, 4)
    base = mix("#F6F4F0", "#DEDBD5", cloud * 0.7, xx.shape)
    dark = np.clip(soft + thin, 0, 0.85)[..., None]
    return np.asarray(base * (1 - dark) + dark * rgb("#9A9BA0"), np.float32)


def paint_forest_autumn() -> Image.Image:
    """A trail winding into an autumn forest, soft light from behind the trees."""
    w, h, xx, yy = _bg()
    rng = np.random.default_rng(808)
    vp = (800.0, 600.0)
    glow = np.exp(-((np.hypot(xx - vp[0], (yy - 440) * 1.3) / 560) ** 2))
    base = mix("#A8663C", "#FFE9B8", glow, xx.shape)
    cv = Canvas(w, h, base)
    _trunks(cv, rng, list(rng.uniform(-40, w + 40, 40)), (4, 10), vp[1] + 4, "#C08E70", 0.55)
    _canopy(cv, yy, rng, (10, 6), 520, 0.45)
    _forest_floor(cv, xx, yy, vp, base[int(vp[1])], rng)
    mid = [float(x) for x in rng.uniform(-40, w + 40, 16) if abs(x - vp[0]) > 90]  # keep the trail clear
    _trunks(cv, rng, mid, (14, 30), vp[1] + 50, "#5E3726", 0.92)
    _canopy(cv, yy, rng, (7, 4), 330, 0.15)
    _trunks(cv, rng, [40.0, 205.0, 1330.0, 1500.0], (70, 120), h + 40, "#2E1C14", 1.0)
    _canopy(cv, yy, rng, (5, 3), 170, 0.0)
    _light_rays(cv, xx, yy, vp)
    _vignette(cv, xx, yy, 0.3)
    return fine_grain(cv, rng, 0.015).rgb()


FOLIAGE = ("#B8401F", "#D9622B", "#E89A2F", "#F2C14E", "#C7772A", "#9C5A1E")


def _trunks(
    cv: Canvas,
    rng: np.random.Generator,
    xs: list[float],
    widths: tuple[int, int],
    ground: float,
    color: str,
    opacity: float,
) -> None:
    """One depth layer of tapering trunks with a few branches, bark as vertical streaks."""
    pen = Pen(BG_SIZE, BG_SS)
    for x in xs:
        wd = float(rng.uniform(*widths))
        lean = float(rng.normal(0, wd * 0.4))
        pen.polygon(
            [(x - wd / 2, ground), (x + lean - wd * 0.3, -10), (x + lean + wd * 0.3, -10), (x + wd / 2, ground)]
        )
        for _ in range(2 if wd < 40 else 0):  # near trunks rise out of frame: no branches
            y0, d = float(rng.uniform(0.15, 0.5)) * ground, float(rng.choice([-1, 1]))
            pen.line([(x + lean * 0.5, y0), (x + d * wd * 2.5, y0 - wd * 3)], wd * 0.15)
    bark = 0.75 + 0.4 * noise(cv.w, cv.h, rng, (260, 4), octaves=2)
    cv.paint(pen.cover(), rgb(color) * bark[..., None], opacity)


def _canopy(
    cv: Canvas, yy: Array, rng: np.random.Generator, cells: tuple[int, int], bottom: float, haze: float
) -> None:
    """Foliage as thresholded fractal noise: dense at the top, thinning out toward `bottom`."""
    n = noise(cv.w, cv.h, rng, cells, octaves=6)
    bias = smoothstep(bottom, bottom * 0.15, yy)
    cover = smoothstep(0.64, 0.7, n * 0.6 + bias * 0.55)
    hue = noise(cv.w, cv.h, rng, (5, 3), octaves=2)
    color = ramp(hue, [(i / (len(FOLIAGE) - 1), c) for i, c in enumerate(FOLIAGE)])
    leafy = 0.7 + 0.5 * noise(cv.w, cv.h, rng, (160, 110), octaves=2)
    color = color * (leafy * (0.75 + 0.3 * n))[..., None]
    cv.paint(cover, mix(color, "#F6C994", haze, cv.shape))


def _forest_floor(cv: Canvas, xx: Array, yy: Array, vp: Point, mist: Array, rng: np.random.Generator) -> None:
    floor = smoothstep(vp[1] - 3, vp[1] + 3, yy)
    depth = np.clip((yy - vp[1]) / (cv.h - vp[1]), 0, 1)
    litter = noise(cv.w, cv.h, rng, (48, 110), octaves=3)  # wider than tall: leaves lie flat
    ground = ramp(litter, [(0.0, "#4A2614"), (0.35, "#7E3B18"), (0.7, "#B5622A"), (1.0, "#DB9C48")])
    near = smoothstep(0, 0.5, depth)[..., None]
    cv.paint(floor, mist[None, :, :] * (1 - near) + ground * near)  # far ground fades into the mist
    centre = vp[0] + 160 * np.sin(depth * 2.6) * depth  # the trail bends as it comes near
    half = 14 + 360 * depth**1.3
    trail = smoothstep(half + 8, half - 8, np.abs(xx - centre)) * floor
    dirt = ramp(depth, [(0.0, "#F0CFA0"), (0.5, "#C8945E"), (1.0, "#A87648")]) * (0.9 + 0.2 * litter[..., None])
    cv.paint(trail, dirt)
    _fallen_leaves(cv, rng, vp)


def _fallen_leaves(cv: Canvas, rng: np.random.Generator, vp: Point) -> None:
    for color in FOLIAGE:
        pen = Pen(BG_SIZE, BG_SS)
        for _ in range(90):
            depth = float(rng.uniform(0.05, 1.0)) ** 0.7
            y = vp[1] + depth * (cv.h - vp[1])
            x, size = float(rng.uniform(0, cv.w)), 2 + 12 * depth
            pen.polygon(_leaf(x, y, size, float(rng.uniform(0, math.pi))))
        cv.paint(pen.cover(), color, 0.9)


def _leaf(x: float, y: float, size: float, angle: float) -> list[Point]:
    """A pointed leaf outline lying on the ground (squashed vertically by perspective)."""
    pts = []
    for a in np.linspace(0, 2 * math.pi, 12, endpoint=False):
        u, v = math.cos(a), 0.42 * math.sin(a) * abs(math.sin(a)) ** 0.4  # pointed at both ends
        pts.append(
            (
                x + size * (u * math.cos(angle) - v * math.sin(angle)),
                y + 0.55 * size * (u * math.sin(angle) + v * math.cos(angle)),
            )
        )
    return pts


def _light_rays(cv: Canvas, xx: Array, yy: Array, vp: Point) -> None:
    src = (vp[0] + 250, -200.0)
    angle = np.arctan2(yy - src[1], xx - src[0])
    beams = 0.5 + 0.5 * np.sin(angle * 60) * np.sin(angle * 23 + 1)
    fade = smoothstep(cv.h, 0, yy) * np.exp(-(((angle - math.pi / 2 - 0.15) / 0.45) ** 2))
    cv.glow(0.22 * smoothstep(0.55, 1.0, beams) * fade, "#FFE9B0")


# =========================================================================== library


LIBRARY: list[dict[str, Any]] = [
    {
        "file": "product-running-shoe-red.png",
        "paint": paint_shoe,
        "metadata": {
            "kind": "product",
            "title": "Stride Velocity running shoe, red",
            "description": "Red lightweight running shoe with a white cushioned foam sole, white laces, teal side "
            "stripe and yellow heel tab. Side view, transparent background (cut-out PNG).",
            "tags": ["running shoe", "shoe", "sneaker", "trainer", "footwear", "sport", "running", "red"],
            "attributes": {
                "category": "footwear",
                "color": "red",
                "sku": "STR-VEL-RED",
                "material": "knit mesh",
                "view": "side",
            },
            "kpis": {"ctr": 0.034, "conversion_rate": 0.021, "impressions": 182000},
        },
    },
    {
        "file": "product-tote-bag-cognac.png",
        "paint": paint_handbag,
        "metadata": {
            "kind": "product",
            "title": "Stride City tote handbag, cognac leather",
            "description": "Cognac brown leather tote bag with a top handle, front flap and brass clasp. "
            "Front view, transparent background.",
            "tags": ["handbag", "bag", "tote", "leather", "accessory", "fashion", "brown"],
            "attributes": {"category": "bags", "color": "cognac", "sku": "STR-TOTE-CGN", "material": "leather"},
            "kpis": {"ctr": 0.018, "conversion_rate": 0.009, "impressions": 96000},
        },
    },
    {
        "file": "product-water-bottle-teal.png",
        "paint": paint_bottle,
        "metadata": {
            "kind": "product",
            "title": "Stride insulated water bottle, teal",
            "description": "Teal stainless steel insulated water bottle with a yellow STRIDE label band and a black "
            "loop cap. Upright, transparent background.",
            "tags": ["water bottle", "bottle", "drinkware", "hydration", "sport", "teal"],
            "attributes": {"category": "drinkware", "color": "teal", "sku": "STR-BTL-TEAL", "volume_ml": 750},
            "kpis": {"ctr": 0.022, "conversion_rate": 0.014, "impressions": 120500},
        },
    },
    {
        "file": "product-mug-studio.png",
        "paint": paint_studio_mug,
        "metadata": {
            "kind": "product",
            "title": "Stride team mug, navy ceramic (studio shot)",
            "description": "Navy blue ceramic coffee mug with a yellow stripe, photographed on a seamless white "
            "studio backdrop (no transparency).",
            "tags": ["mug", "coffee mug", "cup", "ceramic", "kitchen", "navy", "studio"],
            "attributes": {"category": "kitchenware", "color": "navy", "sku": "STR-MUG-NVY", "backdrop": "white"},
            "kpis": {"ctr": 0.012, "conversion_rate": 0.006, "impressions": 54000},
        },
    },
    {
        "file": "background-urban-street-sunset.png",
        "paint": paint_street_sunset,
        "metadata": {
            "kind": "background",
            "title": "Urban street at sunset",
            "description": "Empty city street at golden hour: warm sunset sky over downtown buildings with lit "
            "windows, street lamps, and the asphalt road running to the horizon.",
            "tags": ["urban", "street", "city", "sunset", "golden hour", "evening", "buildings", "road", "outdoor"],
            "attributes": {
                "scene": "urban street",
                "time_of_day": "sunset",
                "lighting": "warm backlight",
                "orientation": "landscape",
            },
            "kpis": {"ctr": 0.031, "impressions": 240000},
        },
    },
    {
        "file": "background-beach-noon.png",
        "paint": paint_beach_noon,
        "metadata": {
            "kind": "background",
            "title": "Beach at noon",
            "description": "Sunny tropical beach at midday: bright blue sky with white clouds, turquoise sea, "
            "gentle surf and warm golden sand.",
            "tags": ["beach", "sea", "ocean", "sand", "summer", "noon", "sunny", "coast", "outdoor"],
            "attributes": {
                "scene": "beach",
                "time_of_day": "noon",
                "lighting": "bright daylight",
                "orientation": "landscape",
            },
            "kpis": {"ctr": 0.027, "impressions": 210000},
        },
    },
    {
        "file": "background-marble-kitchen-counter.png",
        "paint": paint_marble_kitchen,
        "metadata": {
            "kind": "background",
            "title": "Marble kitchen counter",
            "description": "White marble kitchen countertop with grey veins in front of a softly blurred white "
            "subway-tile wall, a potted plant and a jar; bright, clean home interior.",
            "tags": ["kitchen", "marble", "counter", "countertop", "interior", "home", "indoor", "white"],
            "attributes": {
                "scene": "kitchen",
                "time_of_day": "day",
                "lighting": "soft window light",
                "orientation": "landscape",
            },
            "kpis": {"ctr": 0.024, "impressions": 150000},
        },
    },
    {
        "file": "background-forest-trail-autumn.png",
        "paint": paint_forest_autumn,
        "metadata": {
            "kind": "background",
            "title": "Forest trail in autumn",
            "description": "Dirt trail winding through an autumn forest with orange, red and yellow foliage, "
            "fallen leaves and soft light rays between the trees.",
            "tags": ["forest", "trail", "autumn", "fall", "woods", "nature", "path", "leaves", "outdoor"],
            "attributes": {
                "scene": "forest trail",
                "time_of_day": "afternoon",
                "lighting": "soft backlight",
                "season": "autumn",
                "orientation": "landscape",
            },
            "kpis": {"ctr": 0.026, "impressions": 175000},
        },
    },
]


def build_library(dir: Path) -> list[dict[str, Any]]:  # noqa: A002 - the public name the demo uses
    """Paint every library image into `dir` and return [{path, metadata}] ready for POST /v1/assets."""
    folder = Path(dir)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for entry in LIBRARY:
        path = folder / entry["file"]
        entry["paint"]().save(path, format="PNG", compress_level=3)  # speed over a few % of size
        items.append({"path": path, "metadata": dict(entry["metadata"])})
    return items


def preview(items: list[dict[str, Any]], dest: Path, cell: int = 360) -> Path:
    """A contact grid of the library on a checkerboard (so the products' alpha shows)."""
    cols = 4
    rows = math.ceil(len(items) / cols)
    sheet = Image.new("RGB", (cols * cell, rows * cell), "#FFFFFF")
    for i, item in enumerate(items):
        image = Image.open(item["path"]).convert("RGBA")
        image.thumbnail((cell - 16, cell - 16), Image.Resampling.LANCZOS)
        tile = _checker(image.size)
        tile.alpha_composite(image)
        x, y = (i % cols) * cell, (i // cols) * cell
        sheet.paste(tile.convert("RGB"), (x + (cell - image.width) // 2, y + (cell - image.height) // 2))
    sheet.save(dest)
    return dest


def _checker(size: tuple[int, int], square: int = 12) -> Image.Image:
    xx, yy = np.meshgrid(np.arange(size[0]) // square, np.arange(size[1]) // square)
    grey = np.where((xx + yy) % 2 == 0, 236, 210).astype(np.uint8)
    return Image.fromarray(np.dstack([grey, grey, grey, np.full_like(grey, 255)]), "RGBA")


if __name__ == "__main__":
    import sys
    import tempfile

    out = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="onbrand-library-"))
    print(preview(build_library(out), Path(sys.argv[2] if len(sys.argv) > 2 else "/tmp/library-preview.png")))
