"""The integrity record and its check: re-derive a candidate's product layer from the source photo.

Every candidate names the stored source asset (sha256 of its stored bytes), the stored mask that
cut the product out of it (sha256, and which segmenter made it) and the exact transform from the
source to the placed layer: crop box in the source, resized size (and the scale it came from),
rotation, the resampling filters, the offset on the canvas and what the canvas cut off. From those
three, :func:`derive_layer` rebuilds the placed layer; :func:`verify` checks that the candidate
holds it bit for bit wherever it is opaque.

The workers build every layer with :func:`derive_layer` too, so the derivation that makes a
candidate and the one that checks it are the same code and cannot drift. Pure PIL/numpy:
shared must not import workers, and anyone holding the three files can run it.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import PIL
from PIL import Image

RECORD_VERSION = 1
Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)

# The filters a record may name; derivation honours the record, so an older record still replays.
FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


@dataclass(frozen=True)
class Transform:
    """Source -> placed layer: crop, resize, rotate (about the centre, expanded), paste on the canvas."""

    crop: Box  # the cut-out's box in the source photo
    size: tuple[int, int]  # the crop is resized to this (w, h) ...
    rotation: float  # ... then rotated by this many degrees, counter-clockwise, expand=True ...
    offset: tuple[int, int]  # ... and its top-left pasted here on the canvas (may be < 0: cut by the canvas)
    canvas: tuple[int, int]
    scale: float = 1.0  # what ``size`` was computed from (round(crop side * scale)); informational
    resize_filter: str = "lanczos"
    rotate_filter: str = "bicubic"

    def to_json(self) -> dict[str, Any]:
        return {
            "crop": list(self.crop),
            "size": list(self.size),
            "scale": self.scale,
            "resize_filter": self.resize_filter,
            "rotation": self.rotation,
            "rotate_filter": self.rotate_filter,
            "rotate_expand": True,
            "offset": list(self.offset),
            "canvas": list(self.canvas),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Transform:
        x0, y0, x1, y1 = (int(v) for v in data["crop"])
        w, h = (int(v) for v in data["size"])
        ox, oy = (int(v) for v in data["offset"])
        cw, ch = (int(v) for v in data["canvas"])
        return cls(
            (x0, y0, x1, y1),
            (w, h),
            float(data["rotation"]),
            (ox, oy),
            (cw, ch),
            float(data.get("scale", 1.0)),
            str(data.get("resize_filter", "lanczos")),
            str(data.get("rotate_filter", "bicubic")),
        )


def scaled_size(size: tuple[int, int], scale: float) -> tuple[int, int]:
    """The resized (w, h) of a cut-out of ``size`` at ``scale``: each side rounded, at least 1 px."""
    w, h = (max(1, round(v * scale)) for v in size)
    return w, h


def transform_for(
    crop: Box, scale: float, rotation: float, offset: tuple[int, int], canvas: tuple[int, int]
) -> Transform:
    """The transform a layout describes (scale and rotation of the crop, its top-left on the canvas)."""
    size = scaled_size((crop[2] - crop[0], crop[3] - crop[1]), scale)
    return Transform(crop, size, float(rotation), offset, canvas, float(scale))


# --- derivation ----------------------------------------------------------------------------


def mask_array(mask: Image.Image | np.ndarray) -> np.ndarray:
    """The mask as uint8 HxW: an image's alpha channel when it has one, else its grey levels."""
    if isinstance(mask, np.ndarray):
        if mask.ndim != 2 or mask.dtype != np.uint8:
            raise ValueError(f"mask: expected a uint8 HxW array, got {mask.dtype} {mask.shape}")
        return mask
    if not isinstance(mask, Image.Image):
        raise ValueError(f"mask: expected a PIL image or an array, got {type(mask).__name__}")
    if mask.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return np.asarray(mask.getchannel("A"))
    return np.asarray(mask.convert("L"))


def mask_box(mask: Image.Image | np.ndarray) -> Box:
    """Bounding box of the mask's non-zero pixels: the crop that keeps every visible product pixel."""
    arr = mask_array(mask)
    ys, xs = np.nonzero(arr)
    if not len(ys):
        raise ValueError("mask: empty, there is no product to cut out")
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def cut_out(source: Image.Image, mask: Image.Image | np.ndarray, crop: Box) -> Image.Image:
    """RGBA crop of the product: the source's RGB untouched, alpha = the mask."""
    alpha = mask_array(mask)
    if not isinstance(source, Image.Image) or alpha.shape != (source.height, source.width):
        raise ValueError(f"mask: {alpha.shape[::-1]} px does not match the source photo")
    x0, y0, x1, y1 = crop
    if not (0 <= x0 < x1 <= source.width and 0 <= y0 < y1 <= source.height):
        raise ValueError(f"crop: {crop} is not inside the {source.width}x{source.height} source")
    rgb = np.asarray(source.crop(crop).convert("RGB"))  # conversion is per pixel: crop first, it is cheaper
    return Image.fromarray(np.ascontiguousarray(np.dstack([rgb, alpha[y0:y1, x0:x1]])), "RGBA")


def resample(cutout: Image.Image, t: Transform) -> Image.Image:
    """The cut-out resized (``t.resize_filter``) then rotated about its centre (``t.rotate_filter``, expand)."""
    if cutout.mode not in ("RGBA", "L"):  # L: a cut-out's alpha alone, which resamples exactly as in the RGBA
        raise ValueError("cutout: expected an RGBA PIL image (alpha = product mask)")
    # PIL premultiplies RGBA for LANCZOS/BICUBIC, so edges do not pick up dark fringes.
    placed = cutout if cutout.size == t.size else cutout.resize(t.size, _filter(t.resize_filter))
    if t.rotation % 360 == 0:
        return placed
    return placed.rotate(t.rotation, _filter(t.rotate_filter), expand=True)


def _filter(name: str) -> Image.Resampling:
    if name not in FILTERS:
        raise ValueError(f"filter: {name!r} is not one of {sorted(FILTERS)}")
    return FILTERS[name]


def place_on_canvas(placed: Image.Image, t: Transform) -> Image.Image:
    """Canvas-sized transparent RGBA layer with ``placed`` at ``t.offset``; what falls off the canvas is cut."""
    layer = Image.new("RGBA", t.canvas, (0, 0, 0, 0))
    layer.paste(placed, t.offset)  # no mask: copy RGBA as is (PIL clips at the canvas edges)
    return layer


def derive_layer(source: Image.Image, mask: Image.Image | np.ndarray, t: Transform) -> Image.Image:
    """The placed product layer, from the source photo, its mask and the transform."""
    return place_on_canvas(resample(cut_out(source, mask, t.crop), t), t)


def canvas_cut(placed_size: tuple[int, int], t: Transform) -> list[int]:
    """Pixels of the placed product box the canvas cuts off: [left, top, right, bottom]."""
    (w, h), (x, y), (cw, ch) = placed_size, t.offset, t.canvas
    return [max(0, -x), max(0, -y), max(0, x + w - cw), max(0, y + h - ch)]


# --- the record ----------------------------------------------------------------------------


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(pixels: np.ndarray) -> str:
    """sha256 of an (N, 3) uint8 array of pixels: equal digests prove the pixels bit for bit."""
    return hashlib.sha256(np.ascontiguousarray(pixels, dtype=np.uint8).tobytes()).hexdigest()


def opaque_regions(candidate: Image.Image, layer: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(candidate pixels, layer pixels) where the layer is fully opaque, both (N, 3) uint8."""
    if not isinstance(layer, Image.Image) or layer.mode != "RGBA":
        raise ValueError("layer: expected an RGBA PIL image")
    arr = np.asarray(layer)
    opaque = arr[:, :, 3] == 255
    if not opaque.any():
        raise ValueError("layer: has no fully opaque pixel, there is no product in it")
    if not isinstance(candidate, Image.Image) or candidate.size != layer.size:
        raise ValueError(f"candidate: expected a PIL image of size {layer.size}")
    return np.asarray(candidate.convert("RGB"))[opaque], arr[:, :, :3][opaque]


def pixel_integrity(candidate: Image.Image, layer: Image.Image) -> dict[str, Any]:
    """How many of the layer's fully opaque pixels survive bit-exact in ``candidate``, with digests."""
    region, product = opaque_regions(candidate, layer)
    n, m = len(product), int(np.all(region == product, axis=1).sum())
    return {
        "opaque_pixels": n,
        "exact_pixels": m,
        "exact_fraction": m / n,
        # Equal digests prove the region bit for bit, even to someone holding only the two PNGs.
        "product_sha256": digest(region),
        "layer_sha256": digest(product),
    }


def stored_ref(key: str, data: bytes, **extra: Any) -> dict[str, Any]:
    """How the record names a stored file: its key, the sha256 of its stored bytes, and what it is."""
    return {"key": key, "sha256": sha256(data), **extra}


def record(
    source: dict[str, Any], mask: dict[str, Any], t: Transform, candidate: Image.Image, layer: Image.Image
) -> dict[str, Any]:
    """The integrity record of one candidate (Candidate.integrity)."""
    return {
        "version": RECORD_VERSION,
        "source": source,
        "mask": mask,
        "transform": {**t.to_json(), "canvas_cut": canvas_cut(placed_size(t), t)},
        "pillow": PIL.__version__,  # resampling is Pillow's: a different version may round differently
        # The whole layer, positions and soft edge included: layer_sha256 hashes only the opaque pixels' values.
        "layer_rgba_sha256": layer_digest(layer),
        **pixel_integrity(candidate, layer),
    }


def layer_digest(layer: Image.Image) -> str:
    return sha256(np.ascontiguousarray(np.asarray(layer.convert("RGBA"))).tobytes())


def placed_size(t: Transform) -> tuple[int, int]:
    """(w, h) of the resized, rotated cut-out: PIL's expand rounds outwards, so ask PIL."""
    if t.rotation % 360 == 0:
        return t.size
    size: tuple[int, int] = Image.new("1", t.size).rotate(t.rotation, expand=True).size
    return size


# --- verification --------------------------------------------------------------------------


@dataclass
class Report:
    """What :func:`verify` found. ``ok`` only when every part holds; ``reasons`` says what did not."""

    ok: bool
    exact_fraction: float  # share of the re-derived layer's opaque pixels found bit-exact in the candidate
    opaque_pixels: int
    sha256_match: bool  # the candidate's product region hashes to the re-derived layer's (and the record's)
    source_ok: bool  # the stored source bytes hash to the record's sha256
    mask_ok: bool
    layer_ok: bool  # the re-derived layer is the one the record describes (its layer digests)
    reasons: list[str] = field(default_factory=list)


def verify(candidate: Image.Image, source: bytes, mask: bytes, record: dict[str, Any]) -> Report:
    """Re-derive the placed layer from the stored source and mask bytes and the record's transform,
    and check the candidate holds it bit for bit wherever it is opaque."""
    reasons: list[str] = []
    source_ok = _same_hash("source", source, record, reasons)
    mask_ok = _same_hash("mask", mask, record, reasons)
    try:
        layer = derive_layer(_decode(source), _decode(mask), Transform.from_json(record["transform"]))
        region, product = opaque_regions(candidate, layer)
    except (ValueError, KeyError, TypeError, OSError) as exc:
        return Report(False, 0.0, 0, False, source_ok, mask_ok, False, [*reasons, f"cannot re-derive: {exc}"])
    exact = int(np.all(region == product, axis=1).sum())
    derived = digest(product)
    layer_ok = derived == record.get("layer_sha256") and layer_digest(layer) == record.get("layer_rgba_sha256")
    if not layer_ok:
        reasons.append("the re-derived layer differs from the recorded one" + _pillow_hint(record))
    sha_match = digest(region) == derived == record.get("product_sha256")
    if exact < len(product):
        reasons.append(f"{len(product) - exact} of {len(product)} re-derived opaque pixels differ in the candidate")
    elif not sha_match:
        reasons.append("the candidate's product region does not hash to the recorded product_sha256")
    ok = not reasons and exact == len(product)
    return Report(ok, exact / len(product), len(product), sha_match, source_ok, mask_ok, layer_ok, reasons)


def verify_versions(
    versions: dict[str, tuple[Image.Image, bytes]], source: bytes, mask: bytes, record: dict[str, Any]
) -> Report:
    """Every version of a result, by name ("clean", "creative": the brand-kit overlay): each must hold the
    re-derived product bit for bit; a version other than the clean one must also be the file its record entry
    names (``record[name]["sha256"]`` of the stored bytes). One report: ``ok`` only when every version holds,
    the lowest exact fraction, the reasons prefixed with the version they are about."""
    reports: list[Report] = []
    for name, (image, data) in versions.items():
        found = verify(image, source, mask, record)
        entry = record.get(name) if name != "clean" else None
        if entry is not None and sha256(data) != entry.get("sha256"):
            found.ok = False
            found.reasons.append("the stored bytes do not hash to the recorded sha256")
        if name != "clean":
            found.reasons = [f"{name}: {r}" for r in found.reasons]
        reports.append(found)
    if not reports:
        raise ValueError("versions: nothing to verify")
    worst = min(reports, key=lambda r: (r.ok, r.exact_fraction))
    return Report(
        all(r.ok for r in reports),
        worst.exact_fraction,
        worst.opaque_pixels,
        all(r.sha256_match for r in reports),
        all(r.source_ok for r in reports),
        all(r.mask_ok for r in reports),
        all(r.layer_ok for r in reports),
        list(dict.fromkeys(r for rep in reports for r in rep.reasons)),  # source/mask reasons once
    )


def _same_hash(part: str, data: bytes, record: dict[str, Any], reasons: list[str]) -> bool:
    want = (record.get(part) or {}).get("sha256")
    if want is None:
        reasons.append(f"the record names no {part} sha256")
        return False
    if sha256(data) != want:
        reasons.append(f"the stored {part} bytes do not hash to the recorded sha256")
        return False
    return True


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def _pillow_hint(record: dict[str, Any]) -> str:
    made = record.get("pillow")
    return f" (made with Pillow {made}, verified with {PIL.__version__})" if made and made != PIL.__version__ else ""
