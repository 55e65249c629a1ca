"""Brand-kit upload intake: bounded reads, type sniffing and the checks each kind of file needs.

Logos: PNG or WebP (with or without alpha) through the assets' image checks (pixel budget before decoding,
sRGB, metadata stripped), or SVG rasterised safely (svg.py); always stored as an RGBA PNG of at most
LOGO_MAX_PX on its longer side. Fonts: TTF/OTF validated by shared.fonts (fontTools and FreeType).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image

from services.gateway.assets import images
from services.gateway.brand_kit import svg
from services.gateway.errors import ProblemError
from shared.config import Settings
from shared.fonts import MAX_FONT_BYTES, FontError, FontInfo, validate_font

LOGO_MAX_PX = 2048  # the creative draws a logo at a few percent of the canvas: more is only bytes to decode


@dataclass(frozen=True)
class LogoFile:
    png: bytes  # RGBA
    width: int
    height: int
    sha256: str
    svg_source: bytes | None  # the uploaded SVG, when the PNG was rasterised from one


def read_bounded(stream: BinaryIO, max_bytes: int) -> bytes:
    """The whole upload, or 413 as soon as it is longer than max_bytes (never more is held)."""
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise images.too_large(f"The file is larger than {max_bytes} bytes.")
    if not data:
        raise ProblemError(422, "empty_file", "Empty file", "The uploaded file has no bytes.")
    return data


def _rgba_png(image: Image.Image) -> bytes:
    image = image.convert("RGBA")
    if max(image.size) > LOGO_MAX_PX:
        # Resized with premultiplied alpha: straight alpha would bleed the transparent pixels' colour into edges.
        image = image.convert("RGBa")
        image.thumbnail((LOGO_MAX_PX, LOGO_MAX_PX), Image.Resampling.LANCZOS)
        image = image.convert("RGBA")
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=6)
    return buffer.getvalue()


def logo(stream: BinaryIO, settings: Settings) -> LogoFile:
    """A checked logo, ready to store; 413 too large (bytes or pixels), 422 anything that is not a usable logo."""
    data = read_bounded(stream, settings.max_upload_bytes)
    fmt = images.sniff(data[: images.CHUNK])
    source: bytes | None = None
    if fmt in ("PNG", "WEBP"):
        cleaned = images.clean(data, fmt, settings.max_image_pixels)  # the assets' checks: 413 / 422 invalid_image
        png = _rgba_png(Image.open(io.BytesIO(cleaned.png)))
    elif fmt is None and svg.looks_like_svg(data[: images.CHUNK]):
        if len(data) > svg.SVG_MAX_BYTES:
            raise images.too_large(f"An SVG logo may have at most {svg.SVG_MAX_BYTES} bytes.")
        source = data
        png = _rgba_png(Image.open(io.BytesIO(svg.rasterise(data))))
    else:
        kind = "a JPEG (it has no transparency)" if fmt == "JPEG" else "not an image"
        raise svg.invalid_logo(f"A logo is a PNG, WebP or SVG file; this is {kind}.")
    with Image.open(io.BytesIO(png)) as stored:
        width, height = stored.size
    return LogoFile(png, width, height, hashlib.sha256(png).hexdigest(), source)


def font(stream: BinaryIO, settings: Settings) -> tuple[bytes, FontInfo]:
    """The font's bytes and what it is; 413 too large, 422 invalid_font for anything but a usable TTF/OTF."""
    data = read_bounded(stream, min(settings.max_upload_bytes, MAX_FONT_BYTES))
    try:
        return data, validate_font(data)
    except FontError as exc:
        raise ProblemError(422, "invalid_font", "Invalid font", str(exc)) from None
