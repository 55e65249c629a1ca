"""Near-duplicate clustering of candidates: show a reviewer one of each, not five of the same.

Two candidates are linked when they are in the same group (the same deliverable, e.g. the
same canvas size: a 1:1 and a 16:9 version are both needed, never duplicates), their product sits
in the same place (see "Placement" below) and either their perceptual hashes are close or, where
both have an image embedding, the embeddings point the same way. Clusters are the connected
components of those links (union-find), so "A looks like B and B like C" puts all three together.
Every link keeps its reason ("phash distance 3") because a reviewer is shown why two candidates
were folded together.

MAX_HAMMING was measured on real candidates from the embedded compositor: the test bottle
placed by composition.plan (3x3 grid x rotations -15/0/15 = 27 layouts) and composed on a
1024x1024 studio backdrop. pHash distances (of 64 bits), min / median / max:

* (a) exact duplicate                                   0 / 0 / 0
* (b) the layer re-placed 1 % of the canvas off         0 / 2 / 22  (96 % within 12)
*     ... 2 % off                                       0 / 6 / 24  (92 %)
*     ... 3 % off                                       2 / 8 / 26  (83 %)
*     all shifts (6 directions x 3 sizes x 27)          0 / 6 / 26  (90 %)
* (c) the same grid cell at another rotation            4 / 10 / 28 (67 %)
* (d) different grid cells                              18 / 30 / 40 (0 %)

The same on 1080x1350 and 1920x1080 and on a photo background: (d) never below 16 there, (b)
78-94 % and (c) 67-89 % within 12. But with the larger photo backgrounds of the demo library
(the product ~15-30 % of a 1024 px canvas, the same photo behind every candidate) pHash is
dominated by the background: different cells came as close as 8 bits (median 14-22), while a
whole-image shift of 1.5 % stayed at 0-10 (median 4) and rotations of a cell at 0-22. At 12,
a demo campaign folded nearly every candidate into one cluster. MAX_HAMMING = 6 keeps every
different-cell pair apart in all set-ups (a margin of 2 bits on photos) and still folds exact
and most shifted copies; rotation variants cluster only when they are nearly the same picture.

Placement. On a photo background the hash sees mostly the photo: a thin product (a desk lamp) barely
moves it, and all 100 lamp candidates of an e2e campaign fell into one cluster (pHash distance 2-6)
although the lamp stood in nine different places. So two candidates whose product boxes barely
overlap, or whose product is rotated differently, are never near-duplicates, whatever the hash or the
embedding (both dominated by the shared background) say. Measured with the QC set's held-out lamp,
bottle and mug placed by composition.plan (3x3 grid x -15/0/15, shares 0.3 and 0.45) on three of the
demo library's photos and the studio backdrop, product-box IoU min / median / max at 512 px (1024 px):

* (b) the layer re-placed 1-3 % of the canvas off (6 directions)   0.63 / 0.89 / 0.96 (0.63 / 0.88 / 0.96)
* (d) different grid cells, same rotation                          0.00 / 0.00 / 0.47 (0.00 / 0.00 / 0.41)

and 118 of the 2592 (d) pairs (4.6 %; 115 at 1024 px) were within MAX_HAMMING, none with a box IoU
over 0.39. MIN_BOX_IOU = 0.55 sits in the gap: every (b) pair stays linkable, no (d)
pair does. (c), the same cell at another rotation, is now never folded (it was 42 % within 6 bits):
rank's diversity rule already prefers another cell to a second rotation of a chosen one.

MIN_COSINE (0.98) is not measured here: no DINOv2 weights are available offline to this
project's tests. Whole-image embeddings of candidates that share one background are close, so it
is deliberately strict; calibrate it (the brand's dup_min_cosine) once DINOv2 is configured.
shared/qc.py (QcThresholds.dup_max_hamming, dup_min_cosine) carries the same defaults.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import imagehash
import numpy as np
from PIL import Image

__all__ = ["MAX_HAMMING", "MIN_BOX_IOU", "MIN_COSINE", "Cluster", "Item", "apart", "cluster", "hamming", "phash"]

HASH_SIZE = 8  # 64-bit pHash: the customary size; larger hashes see detail we want to ignore
MAX_HAMMING = 6  # measured: see the module docstring
MIN_COSINE = 0.98  # not measured (no image embedder offline): strict on purpose, see the module docstring
MIN_BOX_IOU = 0.55  # measured: product boxes overlapping less than this are in different places (docstring)
_HEX = re.compile(r"[0-9a-f]+")


def phash(image: Image.Image) -> str:
    """Perceptual hash (DCT of a 32x32 grey thumbnail, hash_size 8) as 16 hex digits."""
    if not isinstance(image, Image.Image):
        raise ValueError(f"image: expected a PIL image, got {type(image).__name__}")
    return str(imagehash.phash(image, hash_size=HASH_SIZE))


def hamming(a: str, b: str) -> int:
    """Number of differing bits between two hex hashes of the same length."""
    for name, value in (("a", a), ("b", b)):
        if not isinstance(value, str) or not _HEX.fullmatch(value.lower()):
            raise ValueError(f"{name}: expected a hex hash string, got {value!r}")
    if len(a) != len(b):
        raise ValueError(f"b: expected a hash of {len(a)} hex digits like a, got {len(b)}")
    return (int(a, 16) ^ int(b, 16)).bit_count()


@dataclass
class Item:
    """One candidate to cluster. ``group``: only items of the same group are compared. ``placement``: the
    candidate's placement (x, y, rotation and, when recorded, the placed box's width and height)."""

    id: str
    group: str
    hash: str
    embedding: np.ndarray | None = None
    placement: Mapping[str, Any] | None = None


@dataclass
class Cluster:
    """A set of near-duplicates; ``links`` (a, b, why) are the pairs that joined them."""

    id: str
    members: list[str]
    links: list[tuple[str, str, str]] = field(default_factory=list)


def cluster(items: list[Item], max_hamming: int = MAX_HAMMING, min_cosine: float = MIN_COSINE) -> dict[str, Cluster]:
    """Each item id -> its cluster; ids "c1", "c2", ... in the order of each cluster's first item."""
    _check(items, max_hamming, min_cosine)
    parent = list(range(len(items)))
    links: list[tuple[int, int, str]] = []
    units = [_unit(it) for it in items]
    for i, j in _pairs(items):
        why = _link(items[i], items[j], units[i], units[j], max_hamming, min_cosine)
        if why:
            links.append((i, j, why))
            _union(parent, i, j)
    return _clusters(items, parent, links)


def _check(items: list[Item], max_hamming: int, min_cosine: float) -> None:
    if isinstance(max_hamming, bool) or not isinstance(max_hamming, int) or max_hamming < 0:
        raise ValueError(f"max_hamming: expected an int >= 0, got {max_hamming!r}")
    if not isinstance(min_cosine, int | float) or not -1.0 <= min_cosine <= 1.0:
        raise ValueError(f"min_cosine: expected a number in [-1, 1], got {min_cosine!r}")
    seen: set[str] = set()
    for k, it in enumerate(items):
        if not isinstance(it, Item):
            raise ValueError(f"items[{k}]: expected an Item, got {type(it).__name__}")
        if it.id in seen:
            raise ValueError(f"items[{k}]: duplicate id {it.id!r}")
        seen.add(it.id)


def _unit(item: Item) -> np.ndarray | None:
    """The embedding scaled to length 1 (so a dot product is the cosine), or None."""
    if item.embedding is None:
        return None
    vec = np.asarray(item.embedding, np.float64).reshape(-1)
    norm = float(np.linalg.norm(vec))
    if not math.isfinite(norm) or norm == 0.0:
        raise ValueError(f"items[{item.id!r}].embedding: expected a finite, non-zero vector")
    return vec / norm


def _pairs(items: list[Item]) -> list[tuple[int, int]]:
    """Index pairs (i < j) within each group: items of different groups are never compared."""
    groups: dict[str, list[int]] = {}
    for k, it in enumerate(items):
        groups.setdefault(it.group, []).append(k)
    return [(a, b) for idx in groups.values() for n, a in enumerate(idx) for b in idx[n + 1 :]]


def _link(a: Item, b: Item, ua: np.ndarray | None, ub: np.ndarray | None, max_hamming: int, min_cosine: float) -> str:
    """Why a and b are near-duplicates ("" when they are not)."""
    if apart(a.placement, b.placement):
        return ""  # the product stands elsewhere: a different picture whatever the background's hash says
    reasons = []
    d = hamming(a.hash, b.hash)
    if d <= max_hamming:
        reasons.append(f"phash distance {d}")
    if ua is not None and ub is not None:
        if ua.shape != ub.shape:
            raise ValueError(
                f"items[{b.id!r}].embedding: expected {ua.shape[0]} values like {a.id!r}, got {ub.shape[0]}"
            )
        cos = float(ua @ ub)
        if cos >= min_cosine:
            reasons.append(f"embedding cosine {cos:.3f}")
    return ", ".join(reasons)


def apart(a: Mapping[str, Any] | None, b: Mapping[str, Any] | None) -> str:
    """Why two placements put the product in clearly different places ("" when they do not, or are unknown)."""
    if a is None or b is None:
        return ""
    ra, rb = a.get("rotation"), b.get("rotation")
    if ra is not None and rb is not None and abs(float(ra) - float(rb)) > 1e-6:
        return f"rotated differently ({float(ra):g} vs {float(rb):g} degrees)"
    ba, bb = _box(a), _box(b)
    if ba is None or bb is None:
        return ""
    overlap = box_iou(ba, bb)
    return f"product boxes overlap by IoU {overlap:.2f}" if overlap < MIN_BOX_IOU else ""


def _box(placement: Mapping[str, Any]) -> tuple[float, float, float, float] | None:
    """(x0, y0, x1, y1) of the placed product layer, when the placement records its size."""
    try:
        x, y, w, h = (float(placement[k]) for k in ("x", "y", "width", "height"))
    except (KeyError, TypeError, ValueError):
        return None
    return (x, y, x + w, y + h) if w > 0 and h > 0 else None


def box_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]  # path halving
        i = parent[i]
    return i


def _union(parent: list[int], i: int, j: int) -> None:
    ri, rj = _find(parent, i), _find(parent, j)
    if ri != rj:
        parent[max(ri, rj)] = min(ri, rj)  # the earlier item is the root: ids follow input order


def _clusters(items: list[Item], parent: list[int], links: list[tuple[int, int, str]]) -> dict[str, Cluster]:
    by_root: dict[int, Cluster] = {}
    out: dict[str, Cluster] = {}
    for k, it in enumerate(items):
        root = _find(parent, k)
        if root not in by_root:
            by_root[root] = Cluster(f"c{len(by_root) + 1}", [])
        by_root[root].members.append(it.id)
        out[it.id] = by_root[root]
    for i, j, why in links:
        out[items[i].id].links.append((items[i].id, items[j].id, why))
    return out
