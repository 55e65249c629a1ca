"""Untrusted image intake: bounded read, magic-byte sniffing, pixel budget, clean re-encode.

Every check that can be done without decoding pixels runs before decoding, so a hostile
upload (a 50 GB stream, a renamed executable, a 100k x 100k "decompression bomb") is
rejected after reading at most max_upload_bytes and a file header.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image, ImageCms, ImageOps

from services.gateway.errors import ProblemError

CHUNK = 64 * 1024
THUMB_MAX = 256
# Only these three: the declared Content-Type of the part is never trusted.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = ((0, b"\x89PNG\r\n\x1a\n", "PNG"), (0, b"\xff\xd8\xff", "JPEG"))
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


@dataclass(frozen=True)
class CleanImage:
    png: bytes
    thumb_png: bytes
    width: int
    height: int
    has_alpha: bool
    sha256: str


def too_large(detail: str) -> ProblemError:
    return ProblemError(413, "payload_too_large", "Payload too large", detail)


def invalid_image(detail: str) -> ProblemError:
    return ProblemError(422, "invalid_image", "Invalid image", detail)


def sniff(head: bytes) -> str | None:
    """The image format from its magic bytes, or None when it is not PNG, JPEG or WebP."""
    for offset, magic, fmt in _SIGNATURES:
        if head[offset : offset + len(magic)] == magic:
            return fmt
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    return None


def read_image_upload(stream: BinaryIO, max_bytes: int) -> tuple[bytes, str]:
    """Read the upload in chunks; stop as soon as it is not an image or exceeds max_bytes."""
    first = stream.read(CHUNK)
    fmt = sniff(first)
    if fmt is None:
        raise ProblemError(
            415, "unsupported_media_type", "Unsupported media type", "The file is not a PNG, JPEG or WebP image."
        )
    chunks, size = [first], len(first)
    while size <= max_bytes and (chunk := stream.read(CHUNK)):
        chunks.append(chunk)
        size += len(chunk)
    if size > max_bytes:
        raise too_large(f"The file is larger than {max_bytes} bytes.")
    return b"".join(chunks), fmt


def _open(data: bytes, fmt: str, max_pixels: int) -> Image.Image:
    """Parse the header only and enforce the pixel budget before any pixel is decoded."""
    try:
        image = Image.open(io.BytesIO(data), formats=[fmt])
    except Image.DecompressionBombError:
        raise too_large(f"The image has more than {max_pixels} pixels.") from None
    except (OSError, ValueError, SyntaxError):
        raise invalid_image(f"The file is not a readable {fmt} image.") from None
    width, height = image.size
    if width * height > max_pixels:
        raise too_large(f"The image has {width}x{height} = {width * height} pixels; the limit is {max_pixels}.")
    if width < 1 or height < 1:
        raise invalid_image("The image has no pixels.")
    return image


def _decode(image: Image.Image) -> Image.Image:
    try:
        image.load()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        raise invalid_image("The image data is truncated or corrupt.") from None
    # EXIF is stripped below, so apply its orientation now: pixels must look as the client saw them.
    return ImageOps.exif_transpose(image)


def _to_srgb(image: Image.Image) -> Image.Image:
    """Convert embedded-profile pixels (Display P3, CMYK, ...) to sRGB before the profile is dropped."""
    icc = image.info.get("icc_profile")
    if not icc or image.mode not in ("RGB", "RGBA", "CMYK", "L"):
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        out_mode = "RGBA" if image.mode == "RGBA" else "RGB"
        converted = ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode=out_mode)
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image  # a broken profile: keep the pixels as they are rather than reject the photo
    return converted if converted is not None else image


def _normalize(image: Image.Image) -> Image.Image:
    """RGB, or RGBA only when some pixel is actually transparent."""
    alpha = image.mode in _ALPHA_MODES or "transparency" in image.info
    image = _to_srgb(image).convert("RGBA" if alpha else "RGB")
    if alpha and image.getchannel("A").getextrema()[0] == 255:
        image = image.convert("RGB")
    image.info = {}  # no EXIF, ICC, text chunks, GPS, ... survive into storage
    return image


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=6)
    return buffer.getvalue()


def _thumbnail(image: Image.Image) -> bytes:
    thumb = image.copy()
    thumb.thumbnail((THUMB_MAX, THUMB_MAX), Image.Resampling.LANCZOS)
    return _png(thumb)


def clean(data: bytes, fmt: str, max_pixels: int) -> CleanImage:
    """Decode, strip metadata and re-encode as PNG; the sha256 of those bytes is the dedupe key."""
    image = _normalize(_decode(_open(data, fmt, max_pixels)))
    png = _png(image)
    return CleanImage(
        png=png,
        thumb_png=_thumbnail(image),
        width=image.width,
        height=image.height,
        has_alpha=image.mode == "RGBA",
        sha256=hashlib.sha256(png).hexdigest(),
    )
