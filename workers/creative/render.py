"""Render a brand-kit overlay (logo, headline, CTA, legal) onto a scene: laid out, drawn, measured.

The overlay is drawn, never diffused: text is shaped by Pillow/libraqm into an alpha mask and
composited in the chosen colour, the logo pasted with its alpha. No overlay pixel lands on the
product: every box is placed outside the product mask dilated by a gap, and the result is checked
(the product's pixels of the creative equal the scene's, else the layout fails).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from workers.creative import contrast, fonts, layout, text
from workers.creative.schema import (
    MIN_BODY_CONTRAST,
    Box,
    BrandKit,
    Corner,
    Creative,
    Element,
    Layout,
    LogoLayout,
    OverlayRequest,
    Rgb,
    TextLayout,
)
from workers.creative.text import Block

NEUTRAL: tuple[Rgb, ...] = ((255, 255, 255), (0, 0, 0))
BAND_TOLERANCE = 0.75  # a less preferred place is used only for a font more than 1/0.75 times larger
SCRIM_ALPHAS = (0.35, 0.5, 0.65, 0.8, 0.9)
CORNERS: tuple[Corner, ...] = ("top-left", "top-right", "bottom-left", "bottom-right")


@dataclass(frozen=True)
class Placed:
    """A text element's place before it is drawn."""

    element: Element
    text: str
    block: Block
    box: Box
    pad: tuple[int, int]
    font: str  # the font file's path
    script: str
    align: str


def render(request: OverlayRequest) -> Creative:
    """Lay out and draw the overlay; a layout that breaks a rule returns the scene untouched and ``ok`` False."""
    started = time.perf_counter()
    scene = np.asarray(request.scene.convert("RGB"))
    h, w = scene.shape[:2]
    rules = request.kit.rules
    tmpl = layout.template(w, h, rules)
    product = layout.product_mask(request.product, w, h)
    short = min(w, h)
    gap = max(2, round(0.01 * short))
    space = layout.FreeSpace(layout.dilate(product, gap))
    reasons: list[str] = []
    if not fonts.shaping_available():
        return _result(request.scene.convert("RGB"), False, [fonts.SHAPING_MISSING], tmpl.name, [], None, started)
    logo = _place_logo(request, tmpl, space, reasons)
    placed: list[Placed] = []
    cap = max(w, h)  # each element is no larger than the one before: headline >= CTA >= legal
    for element in _elements(request):
        found = _place_text(request, tmpl, element, space, gap, reasons, cap)
        if found:
            placed.append(found)
            cap = found.block.font_px
    if reasons:
        return _result(request.scene.convert("RGB"), False, reasons, tmpl.name, [], logo, started)
    canvas = scene.copy()
    if logo and request.kit.logo is not None:
        _paste_logo(canvas, request.kit.logo, logo.box)
    texts = [_draw(canvas, p, request.kit) for p in placed]
    reasons += [f"{t.element}: contrast {t.contrast} < {MIN_BODY_CONTRAST}" for t in texts if t.contrast < 4.5]
    if not np.array_equal(canvas[product], scene[product]):  # never: every box avoids the product
        reasons.append("overlay: product pixels changed")
    image = Image.fromarray(canvas) if not reasons else request.scene.convert("RGB")
    return _result(image, not reasons, reasons, tmpl.name, texts, logo, started)


def _elements(request: OverlayRequest) -> list[Element]:
    legal = [Element.LEGAL] if request.copy.legal and request.copy.legal.strip() else []
    return [Element.HEADLINE, Element.CTA, *legal]


def _result(
    image: Image.Image,
    ok: bool,
    reasons: list[str],
    name: str,
    texts: list[TextLayout],
    logo: LogoLayout | None,
    started: float,
) -> Creative:
    record = Layout(
        ok=ok,
        reasons=reasons,
        template=name,
        size=image.size,
        texts=texts,
        logo=logo,
        scrim=any(t.backing == "scrim" for t in texts),
        render_ms=round((time.perf_counter() - started) * 1000, 1),
    )
    return Creative(image, record)


# --- placement ---------------------------------------------------------------------------------------


def _place_text(
    request: OverlayRequest,
    tmpl: layout.Template,
    element: Element,
    space: layout.FreeSpace,
    gap: int,
    reasons: list[str],
    cap: int,
) -> Placed | None:
    copy = str(getattr(request.copy, element.value) or "").strip()
    if not copy:
        reasons.append(f"{element}: empty")
        return None
    weight = "regular" if element is Element.LEGAL else "bold"
    path = fonts.pick(copy, weight, request.kit.font_path)
    script = fonts.dominant_script(copy)
    if path is None:
        reasons.append(f"{element}: no font covers its characters ({script} script); upload a font that does")
        return None
    w, h = request.scene.size
    slot = replace(tmpl.slots[element], max_px=min(tmpl.slots[element].max_px, cap))
    smallest = request.kit.rules.min_font_px
    smallest = max(6, round(0.75 * smallest)) if element is Element.LEGAL else smallest
    margin = round(request.kit.rules.margin_frac * min(w, h))
    preferences = layout.regions_for(element, slot, request.safe_zones, w, h, margin)
    anchor = (slot.anchor[0] * w, slot.anchor[1] * h)
    fits = [_largest(copy, script, str(path), smallest, element, slot, r, anchor, space) for r in preferences]
    sizes = [f[0].font_px for f in fits if f]
    # The template's band wins unless another place allows a much larger font (a product in the way).
    chosen = next((f for f in fits if f and f[0].font_px >= BAND_TOLERANCE * max(sizes)), None)
    if chosen:
        blk, box, pad = chosen
        space.block((box[0] - gap, box[1] - gap, box[2] + gap, box[3] + gap))
        return Placed(element, copy, blk, box, pad, str(path), script, slot.align)
    zoned = any(z.label in (element.value, "text") for z in request.safe_zones)
    where = "its safe zones" if zoned else "the canvas"
    reasons.append(
        f"{element}: no room in {where} outside the product and the other elements, "
        f"even at the minimum font size {smallest}px"
    )
    return None


def _largest(
    copy: str,
    script: str,
    path: str,
    smallest: int,
    element: Element,
    slot: layout.Slot,
    regions: list[Box],
    anchor: tuple[float, float],
    space: layout.FreeSpace,
) -> tuple[Block, Box, tuple[int, int]] | None:
    """The largest font size (down to ``smallest``) at which the text fits in ``regions``, and where."""
    for size in layout.font_sizes(slot.max_px, smallest):
        found = _fit(copy, script, path, size, element, slot, regions, anchor, space)
        if found:
            return found
    return None


def _fit(
    copy: str,
    script: str,
    path: str,
    size: int,
    element: Element,
    slot: layout.Slot,
    regions: list[Box],
    anchor: tuple[float, float],
    space: layout.FreeSpace,
) -> tuple[Block, Box, tuple[int, int]] | None:
    button = element is Element.CTA
    pad = (round(0.8 * size), round(0.45 * size)) if button else (round(0.35 * size), round(0.25 * size))
    widest = max(r[2] - r[0] for r in regions) - 2 * pad[0]
    widths = [widest, 0.6 * widest] if slot.max_lines > 1 else [widest]
    for width in widths:
        blk = text.block(copy, script, path, size, width, slot.max_lines)
        if blk is None:
            continue
        box = space.find((blk.width + 2 * pad[0], blk.height + 2 * pad[1]), regions, anchor)
        if box:
            return blk, box, pad
    return None


def _place_logo(
    request: OverlayRequest, tmpl: layout.Template, space: layout.FreeSpace, reasons: list[str]
) -> LogoLayout | None:
    logo = request.kit.logo
    if logo is None:
        return None
    w, h = request.scene.size
    rules = request.kit.rules
    aspect = logo.width / max(1, logo.height)
    cap_w = (0.25 if tmpl.name == "wide" else 0.4) * w
    target = min(tmpl.logo_h, math.floor(cap_w / aspect))
    zones = [z.box(w, h) for z in request.safe_zones if z.label == "logo"]
    order = [rules.logo_corner, *[c for c in CORNERS if c != rules.logo_corner]]
    for corner in order:
        regions = zones or [layout.corner_region(corner, tmpl.name, w, h)]
        anchor = layout.corner_anchor(corner, w, h, tmpl.name)
        for lh in layout.font_sizes(target, rules.min_logo_px) if target >= rules.min_logo_px else []:
            found = _fit_logo(lh, aspect, rules.clear_space, rules.margin_frac * min(w, h), regions, anchor, space)
            if found:
                space.block(found[1])
                return LogoLayout(box=found[0], corner=corner, moved=corner != rules.logo_corner)
    reasons.append(
        f"logo: no corner has room for a logo of at least {rules.min_logo_px}px with its clear space "
        "outside the product"
    )
    return None


def _fit_logo(
    lh: int,
    aspect: float,
    clear_frac: float,
    margin: float,
    regions: list[Box],
    anchor: tuple[float, float],
    space: layout.FreeSpace,
) -> tuple[Box, Box] | None:
    lw, clear = max(1, round(lh * aspect)), round(clear_frac * lh)
    inset = max(0, round(margin) - clear)  # the logo keeps the canvas margin; its clear space may reach into it
    inner = [(x0 + inset, y0 + inset, x1 - inset, y1 - inset) for x0, y0, x1, y1 in regions]
    outer = space.find((lw + 2 * clear, lh + 2 * clear), inner, anchor)
    if outer is None:
        return None
    x, y = outer[0] + clear, outer[1] + clear
    return (x, y, x + lw, y + lh), outer


def _paste_logo(canvas: np.ndarray, logo: Image.Image, box: Box) -> None:
    x0, y0, x1, y1 = box
    rgba = np.asarray(logo.convert("RGBA").resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS), np.float32)
    alpha = rgba[..., 3:4] / 255.0
    region = canvas[y0:y1, x0:x1].astype(np.float32)
    canvas[y0:y1, x0:x1] = np.round(region * (1 - alpha) + rgba[..., :3] * alpha).astype(np.uint8)


# --- drawing -----------------------------------------------------------------------------------------


def _draw(canvas: np.ndarray, p: Placed, kit: BrandKit) -> TextLayout:
    mask, ink = _text_mask(p)
    backing, alpha = "none", 0.0
    if p.element is Element.CTA:
        _button(canvas, p.box, kit.button_color, p.block.font_px)
        backing = "button"
    color, source, ratio = _choose_color(canvas, ink, kit)
    if ratio < MIN_BODY_CONTRAST and backing == "none":
        color, source, alpha = _scrim(canvas, p.box, ink, kit)
        ratio = contrast.worst(color, canvas, ink)
        backing = "scrim"
    x0, y0, x1, y1 = p.box
    m = mask[..., None].astype(np.float32) / 255.0
    region = canvas[y0:y1, x0:x1].astype(np.float32)
    canvas[y0:y1, x0:x1] = np.round(region * (1 - m) + np.array(color, np.float32) * m).astype(np.uint8)
    return TextLayout(
        element=p.element,
        text=p.text,
        lines=list(p.block.lines),
        box=p.box,
        ink_box=ink,
        font=Path(p.font).name,
        font_px=p.block.font_px,
        script=p.script,
        direction=p.block.direction,
        color=color,
        color_source=source,
        contrast=math.floor(ratio * 100) / 100,  # floored: a recorded 4.5 is at least 4.5
        backing=backing,
        scrim_alpha=alpha,
    )


def _text_mask(p: Placed) -> tuple[np.ndarray, Box]:
    """The block's glyph coverage (box-sized, 0-255) and its ink box in canvas pixels."""
    x0, y0, x1, y1 = p.box
    img = Image.new("L", (x1 - x0, y1 - y0), 0)
    draw = ImageDraw.Draw(img)
    font = fonts.load(p.font, p.block.font_px)
    rtl = p.block.direction == "rtl"
    for i, line in enumerate(p.block.lines):
        y = p.pad[1] + i * p.block.line_height
        if p.align == "centre":
            x, anchor = (x1 - x0) / 2, "ma"
        else:
            x, anchor = ((x1 - x0) - p.pad[0], "ra") if rtl else (p.pad[0], "la")
        draw.text((x, y), line, fill=255, font=font, anchor=anchor, direction=p.block.direction)
    bbox = img.getbbox() or (0, 0, x1 - x0, y1 - y0)
    return np.asarray(img), (x0 + bbox[0], y0 + bbox[1], x0 + bbox[2], y0 + bbox[3])


def _choose_color(canvas: np.ndarray, ink: Box, kit: BrandKit) -> tuple[Rgb, str, float]:
    """The first kit colour reaching the contrast, else the better neutral, else the best of all."""
    tried: list[tuple[float, Rgb, str]] = []
    for colors, source in ((kit.text_colors, "kit"), (NEUTRAL, "neutral")):
        for color in colors:
            ratio = contrast.worst(color, canvas, ink)
            if ratio >= MIN_BODY_CONTRAST:
                return color, source, ratio
            tried.append((ratio, color, source))
    ratio, color, source = max(tried)
    return color, source, ratio


def _scrim(canvas: np.ndarray, box: Box, ink: Box, kit: BrandKit) -> tuple[Rgb, str, float]:
    """Darken (light text) or lighten (dark text) the box just enough; applied to ``canvas``."""
    x0, y0, x1, y1 = box
    region = canvas[y0:y1, x0:x1].astype(np.float32)
    local = (ink[0] - x0, ink[1] - y0, ink[2] - x0, ink[3] - y0)
    for colors, source in ((kit.text_colors, "kit"), (NEUTRAL, "neutral")):
        for color in colors:
            light = float(contrast.luminance(np.array(color, np.uint8))) > 0.18
            tone = np.array((0, 0, 0) if light else (255, 255, 255), np.float32)
            for alpha in SCRIM_ALPHAS:
                trial = np.round(region * (1 - alpha) + tone * alpha).astype(np.uint8)
                if contrast.worst(color, trial, local) >= MIN_BODY_CONTRAST:
                    canvas[y0:y1, x0:x1] = trial
                    return color, source, alpha
    canvas[y0:y1, x0:x1] = np.round(region * 0.1).astype(np.uint8)  # unreachable: white on 90 % black passes
    return (255, 255, 255), "neutral", 0.9


def _button(canvas: np.ndarray, box: Box, color: Rgb, font_px: int) -> None:
    x0, y0, x1, y1 = box
    shape = Image.new("L", (x1 - x0, y1 - y0), 0)
    ImageDraw.Draw(shape).rounded_rectangle((0, 0, x1 - x0 - 1, y1 - y0 - 1), radius=max(2, font_px // 3), fill=255)
    m = np.asarray(shape, np.float32)[..., None] / 255.0
    region = canvas[y0:y1, x0:x1].astype(np.float32)
    canvas[y0:y1, x0:x1] = np.round(region * (1 - m) + np.array(color, np.float32) * m).astype(np.uint8)
