"""SVG logos, rasterised on upload by resvg (a Rust wheel: no system library), and refused when unsafe.

resvg itself fetches nothing over the network, but it reads files a reference names (`<image href="/etc/...">`)
and an XML parser may expand entities. So the document is first parsed with defusedxml (no DOCTYPE, no entity,
no external reference), then every reference is checked: only same-document ones (`#id`) and embedded raster
images (`data:image/png;base64,...`) pass. Scripts, event handlers and foreignObject are refused too (the source is
kept in storage, never served). The output size is ours, never the document's: the longer side is LOGO_PX.
"""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import resvg_py
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from services.gateway.errors import ProblemError

SVG_MAX_BYTES = 2 * 1024 * 1024  # parsing and rendering cost grows with the document, not its pixels
LOGO_PX = 1024  # the longer side of a rasterised logo
MAX_ELEMENTS = 20_000  # after <use> expansion: a few nested <use>s can otherwise ask for billions
SVG_TAG = "{http://www.w3.org/2000/svg}svg"
_UNIT_PX = {"": 1.0, "px": 1.0, "pt": 4 / 3, "pc": 16.0, "in": 96.0, "cm": 96 / 2.54, "mm": 96 / 25.4}
_LENGTH = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(px|pt|pc|in|cm|mm)?\s*$")
_EMBEDDED_IMAGE = re.compile(r"^data:image/(png|jpeg|gif|webp);base64,", re.IGNORECASE)
_URL_REF = re.compile(r"url\(\s*['\"]?\s*([^)'\"\s]*)", re.IGNORECASE)
_REFUSED_TAGS = {"script", "foreignObject"}


def unsafe(detail: str) -> ProblemError:
    return ProblemError(422, "unsafe_svg", "Unsafe SVG", detail)


def invalid_logo(detail: str) -> ProblemError:
    return ProblemError(422, "invalid_logo", "Invalid logo", detail)


def looks_like_svg(head: bytes) -> bool:
    """Markup (the root is checked once parsed): an SVG starts with `<?xml`, a comment or `<svg`."""
    return head.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n").startswith(b"<")


def _local(name: str) -> str:
    return name.rsplit("}", 1)[-1]


def _internal(reference: str) -> bool:
    value = reference.strip()
    return value.startswith("#") or bool(_EMBEDDED_IMAGE.match(value))


def parse(data: bytes) -> ET.Element:
    try:
        root = fromstring(data, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except DefusedXmlException:
        raise unsafe("The SVG declares a DOCTYPE or entities; they are not accepted.") from None
    except (ET.ParseError, ValueError):
        raise invalid_logo("The file is not a PNG, WebP or well-formed SVG image.") from None
    if root.tag != SVG_TAG:
        raise invalid_logo("The XML document is not an SVG image (its root must be an SVG <svg> element).")
    return root


def _check_element(element: ET.Element) -> None:
    tag = _local(element.tag)
    if tag in _REFUSED_TAGS:
        raise unsafe(f"The SVG contains <{tag}>; scripts and foreign content are not accepted.")
    for name, value in element.attrib.items():
        attribute = _local(name)
        if attribute.lower().startswith("on"):
            raise unsafe(f"The SVG has an event handler ({attribute}); scripts are not accepted.")
        if attribute == "href" and not _internal(value):
            raise unsafe(f"<{tag}> refers to {value[:100]!r}: only #ids and embedded PNG/JPEG/GIF/WebP data.")
        _check_urls(tag, value)
    if tag == "style" and element.text:
        if "@import" in element.text:
            raise unsafe("The SVG's stylesheet imports another; external resources are not accepted.")
        _check_urls(tag, element.text)


def _check_urls(tag: str, text: str) -> None:
    for reference in _URL_REF.findall(text):
        if not _internal(reference):
            raise unsafe(f"<{tag}> refers to url({reference[:100]!r}): only #ids and embedded raster data.")


def _expanded_size(root: ET.Element) -> int:
    """Elements once every <use> is replaced by what it shows (capped just past MAX_ELEMENTS)."""
    ids = {element.get("id"): element for element in root.iter() if element.get("id")}
    sizes: dict[int, int] = {}

    def size(element: ET.Element, open_: frozenset[int]) -> int:
        key = id(element)
        if key in open_:
            raise unsafe("The SVG's <use> elements refer to themselves.")
        if key not in sizes:
            inner = open_ | {key}
            total = 1 + sum(size(child, inner) for child in element)
            target = element.get("href") or element.get("{http://www.w3.org/1999/xlink}href") or ""
            if _local(element.tag) == "use" and target.startswith("#") and target[1:] in ids:
                total += size(ids[target[1:]], inner)
            sizes[key] = min(total, MAX_ELEMENTS + 1)
        return sizes[key]

    try:
        return size(root, frozenset())
    except RecursionError:
        raise unsafe("The SVG is nested too deeply.") from None


def _length(value: str | None) -> float | None:
    match = _LENGTH.match(value or "")
    if match is None:
        return None  # absent, a percentage or a font-relative unit: the viewBox decides
    px = float(match[1]) * _UNIT_PX[match[2] or ""]
    return px if 0 < px < math.inf else None


def _numbers(text: str) -> list[float]:
    try:
        return [float(v) for v in re.split(r"[\s,]+", text.strip()) if v]
    except ValueError:
        return []


def intrinsic_size(root: ET.Element) -> tuple[float, float]:
    """The document's own size in px, as resvg reads it (width/height, else the viewBox's)."""
    width, height = _length(root.get("width")), _length(root.get("height"))
    box = _numbers(root.get("viewBox") or "")
    view = (box[2], box[3]) if len(box) == 4 and 0 < box[2] < math.inf and 0 < box[3] < math.inf else None
    if width and height:
        return width, height
    if view and width:
        return width, width * view[1] / view[0]
    if view and height:
        return height * view[0] / view[1], height
    if view:
        return view
    raise invalid_logo("The SVG has no size: give its <svg> a viewBox, or a width and a height.")


def rasterise(data: bytes) -> bytes:
    """The SVG as an RGBA PNG whose longer side is LOGO_PX (after every safety check)."""
    root = parse(data)
    for element in root.iter():
        _check_element(element)
    if _expanded_size(root) > MAX_ELEMENTS:
        raise unsafe(f"The SVG draws more than {MAX_ELEMENTS} elements once its <use>s are expanded.")
    width, height = intrinsic_size(root)
    scale = LOGO_PX / max(width, height)
    try:
        text = data.decode("utf-8")
        png = resvg_py.svg_to_bytes(
            svg_string=text, width=max(1, round(width * scale)), height=max(1, round(height * scale))
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise invalid_logo(f"The SVG could not be rendered ({type(exc).__name__}).") from None
    return bytes(png)
