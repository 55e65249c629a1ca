"""Classical guideline check of one candidate: what pixels alone can honestly say.

A vision-language model normally judges each candidate against the baseline failure
modes (:data:`BASELINE`). When none is configured this module stands in for it, and
only where arithmetic on pixels gives a real answer; everywhere else it says
"unchecked" rather than invent a verdict.

Checkable without a model, because we hold the exact ``layer`` that was composited:

* ``duplicated_product`` - a second copy of the product elsewhere on the canvas. The
  product as it stands in the candidate is the template (masked to its fully opaque
  pixels); masked normalised cross-correlation at reduced resolution, over a few scales
  (0.8-1.25, catches ~0.75-1.3) and tilts (+-20 degrees, catches ~+-25), with the
  product's own placement blanked out. The correlation is ramp-free (the best-fitting
  plane is removed from the template and from every window) and a window must have about
  the product's mean colour: a product whose look is a smooth shading ramp otherwise
  correlated with the studio backdrop's own gradients (wall, horizon, vignette; see
  README "Measured QC rates"). A product whose inside is only such a ramp is searched for
  by its silhouette; with no structure at all it is unchecked. A copy that a generator
  redrew (new perspective, new lighting, mirrored) or a faint ghost of it can escape.
* ``floating_product``   - :func:`compositor.compose` darkens the floor under the
  product's base with a contact shadow. A band just under the base is compared with
  the same rows beside the shadow; no darkening means nothing grounds the product.
* ``distorted_product``  - share of the product's fully opaque pixels that are still
  bit-exact (:func:`composition.integrity`). The promise is 100 %.

``text_artefacts`` is read by OCR (workers/checks/text_ocr.py): text outside the product
that the background source does not have. Not checkable without a model: ``extra_objects``:
nothing in the pixels tells a stray object from a deliberate backdrop, so it is "unchecked".
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, NamedTuple

import cv2
import numpy as np
from PIL import Image

from workers.checks import text_ocr
from workers.imaging.composition import exact_counts

# footprint is where compose() centres its contact shadow: look for the shadow exactly there.
from workers.imaging.compositor import footprint

if TYPE_CHECKING:
    from workers.checks.text_ocr import Background

BASELINE = ("duplicated_product", "extra_objects", "floating_product", "text_artefacts", "distorted_product")

# duplicated_product
DUPLICATE_MIN_SCORE = 0.85  # masked NCC: an exact copy scores ~0.97-1.0 even off the sampling grid, a copy
#   between the scale/tilt steps below >= ~0.87 (fine-textured product); a different textured object or the
#   backdrop stays under ~0.6. 0.85 sits in that gap.
TEMPLATE_SIDE = 64  # product's long side at match resolution: NCC needs the product's structure, not its
#   fine detail, and a smaller template tolerates more scale/tilt error between the steps
SEARCH_SIDE = 256  # canvas long side at match resolution at most: bounds the cost for a small product
MATCH_BLUR = 1.0  # px at match resolution: widens each step's catch without blurring the product away
MATCH_SCALES = (0.8, 0.9, 1.0, 1.1, 1.25)  # a copy drawn somewhat smaller or larger
MATCH_ROTATIONS = (-20.0, -10.0, 0.0, 10.0, 20.0)  # a copy tilted differently (10 degree steps)
MIN_TEXTURE_STD = 3.0  # grey levels: a flatter product has no structure to correlate, NCC is noise
CONTRAST_RANGE = (0.5, 2.0)  # NCC ignores gain, so a faint gradient can correlate with a faint product;
#   a real copy has about the product's own contrast
MIN_TEMPLATE_PX = 8  # a template smaller than this at match resolution matches anything
MAX_COLOUR_SHIFT = 30.0  # RGB distance of a window's mean colour from the product's: NCC is blind to gain and
#   offset, a copy is not. Copies composited in the QC set (workers.evaluation.qc_set) stay under 10 (all caught
#   at 10, one lost at 6); 30 leaves room for a copy re-lit by a generator. Without it, a small translucent
#   product's silhouette matched grass and sky (3 of 66 clean tune candidates).
SILHOUETTE_MIN_SCORE = 0.78  # a silhouette template carries the original's surroundings (backdrop, shadow), so
#   a copy elsewhere scores lower: 0.81-0.97 on the QC set's tune split, clean candidates at most 0.69 there
COLOUR_PROBES = 16  # best windows whose colour is tested one by one before the whole map is colour-gated
OUTLINE_RING = 3  # cells (match resolution) of surroundings in a silhouette template: the outline's step
OWN_PAD = 2  # px (match resolution) blanked around the product's own box: its soft edge and resampling

# floating_product
MIN_SHADOW_DROP = 0.03  # compose()'s shadow darkens the contact band by ~20-50 %; a backdrop's own
#                         gradient/vignette between neighbouring columns stays within ~2 %
BAND_SHARE = 0.06  # contact band height / footprint half-width: a contact shadow is a flat ellipse
#                    whose height scales with the width it touches the floor with
MIN_BAND_ROWS = 2
REF_SPAN = (1.5, 2.0)  # reference columns at this many footprint half-widths from the centre: past the
#                        shadow's reach, close enough to share its light
MIN_REF_LUMA = 8.0  # a near-black floor cannot show a shadow at all

# distorted_product
MIN_EXACT_FRACTION = 0.999

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive)

NO_VLM = "needs a vision-language model (none configured); pixels alone cannot tell {} from the background"


def check(candidate: Image.Image, layer: Image.Image, background: Background | None = None) -> list[dict[str, Any]]:
    """One verdict per BASELINE item, in that order: {"guideline": name, "status": "pass"|"fail"|"unchecked",
    "reason": one line, "value": float | None, "method": "classical"}"""
    cand, alpha = _validate(candidate, layer)
    return [
        check_duplicated(cand, alpha),
        _verdict("extra_objects", "unchecked", NO_VLM.format("an extra object")),
        check_floating(cand, alpha),
        text_ocr.check(candidate, layer, background),  # the candidate's background source, when known
        check_distorted(candidate, layer),
    ]


def summary(verdicts: list[dict[str, Any]]) -> str:
    """One line, e.g. "2 pass, 1 fail (floating_product), 2 unchecked"."""
    counts = Counter(v["status"] for v in verdicts)
    unknown = set(counts) - {"pass", "fail", "unchecked"}
    if unknown:
        raise ValueError(f"verdicts: unknown status {sorted(unknown)}")
    failed = [v["guideline"] for v in verdicts if v["status"] == "fail"]
    fail = f"{counts['fail']} fail" + (f" ({', '.join(failed)})" if failed else "")
    return f"{counts['pass']} pass, {fail}, {counts['unchecked']} unchecked"


def _verdict(name: str, status: str, reason: str, value: float | None = None) -> dict[str, Any]:
    return {"guideline": name, "status": status, "reason": reason, "value": value, "method": "classical"}


def _validate(candidate: Image.Image, layer: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(candidate RGB array, layer alpha) after checking both arguments, layer first (it sets the size)."""
    if not isinstance(layer, Image.Image) or layer.mode != "RGBA":
        raise ValueError("layer: expected an RGBA PIL image (the placed product, alpha = mask)")
    alpha = np.asarray(layer.getchannel("A"))
    if not (alpha == 255).any():
        raise ValueError("layer: has no fully opaque pixel, there is no product in it")
    if not isinstance(candidate, Image.Image) or candidate.mode != "RGB" or candidate.size != layer.size:
        raise ValueError(f"candidate: expected an RGB PIL image of size {layer.size}")
    return np.asarray(candidate), alpha


# --- distorted_product ---------------------------------------------------------------


def check_distorted(candidate: Image.Image, layer: Image.Image) -> dict[str, Any]:
    """Fail when fewer than MIN_EXACT_FRACTION of the opaque product pixels are bit-exact."""
    opaque, exact = exact_counts(candidate, layer)
    frac = exact / opaque
    status = "pass" if frac >= MIN_EXACT_FRACTION else "fail"
    reason = f"{exact} of {opaque} opaque product pixels are bit-exact ({frac:.3%}; need >= {MIN_EXACT_FRACTION:.1%})"
    return _verdict("distorted_product", status, reason, frac)


# --- floating_product ----------------------------------------------------------------


def check_floating(cand: np.ndarray, alpha: np.ndarray) -> dict[str, Any]:
    """Fail when the floor just under the product's base is not darker than the floor beside it."""
    cx, base, half_w = footprint(alpha >= 128)
    h, w = alpha.shape
    rows = min(max(MIN_BAND_ROWS, round(BAND_SHARE * half_w)), h - 1 - base)
    if rows < MIN_BAND_ROWS:
        return _verdict(
            "floating_product",
            "unchecked",
            f"product base is on the canvas bottom edge (y={base}): no floor below it to look at",
        )
    luma = cv2.cvtColor(cand[base + 1 : base + 1 + rows], cv2.COLOR_RGB2GRAY).astype(np.float32)
    clear = alpha[base + 1 : base + 1 + rows] == 0  # product edge pixels are neither floor nor shadow
    cols = np.arange(w)[None, :]
    under = clear & (np.abs(cols - cx) <= max(2, half_w // 2))
    lo, hi = REF_SPAN[0] * half_w, REF_SPAN[1] * half_w
    beside = clear & (np.abs(cols - cx) >= lo) & (np.abs(cols - cx) <= hi)
    return _floating_verdict(luma, under, beside, cx)


def _floating_verdict(luma: np.ndarray, under: np.ndarray, beside: np.ndarray, cx: int) -> dict[str, Any]:
    if not under.any() or not beside.any():
        return _verdict("floating_product", "unchecked", "no visible floor under or beside the product's base")
    ref = _side_mean(luma, beside, cx)
    if ref < MIN_REF_LUMA:
        return _verdict("floating_product", "unchecked", f"floor beside the base is near black (luma {ref:.1f})")
    drop = round(float(1.0 - luma[under].mean() / ref), 4)
    if drop >= MIN_SHADOW_DROP:
        return _verdict(
            "floating_product",
            "pass",
            f"floor under the base is {drop:.1%} darker than beside it (contact shadow; need >= {MIN_SHADOW_DROP:.0%})",
            drop,
        )
    return _verdict(
        "floating_product",
        "fail",
        f"floor under the base is only {drop:.1%} darker than beside it "
        f"(need >= {MIN_SHADOW_DROP:.0%}): no contact shadow, the product looks like it floats",
        drop,
    )


def _side_mean(luma: np.ndarray, beside: np.ndarray, cx: int) -> float:
    # Average the two sides' means, not all pixels: a vignette darkens one side and lightens the other,
    # and a side clipped by the canvas edge must not outweigh the other.
    cols = np.arange(luma.shape[1])[None, :]
    sides = [beside & (cols < cx), beside & (cols > cx)]
    return float(np.mean([luma[s].mean() for s in sides if s.any()]))


# --- duplicated_product --------------------------------------------------------------


def check_duplicated(cand: np.ndarray, alpha: np.ndarray) -> dict[str, Any]:
    """Fail when a second copy of the product correlates with it outside its own place.

    The product's inside is the template; a product whose inside is only smooth shading is searched for
    by its silhouette (the inside plus a ring of what surrounds it) instead, and is unchecked when even
    that has no structure beyond a ramp."""
    search = _match_inputs(cand, alpha)
    if min(search.template.shape) < MIN_TEMPLATE_PX or not search.mask.any():
        return _verdict("duplicated_product", "unchecked", "product too small to search for a copy of it")
    inside, outline = structure_std(search.template, search.mask), structure_std(search.template, search.outline)
    if max(inside, outline) < MIN_TEXTURE_STD:
        return _verdict(
            "duplicated_product",
            "unchecked",
            f"product has no structure beyond smooth shading (grey std {inside:.1f} inside, {outline:.1f} with its "
            "outline, after removing the ramp): correlation cannot tell a copy of it from a backdrop's gradient",
        )
    if inside >= MIN_TEXTURE_STD:
        best = _best_match(search, search.template, search.mask, inside)
        return _duplicate_verdict(best, "the product's inside", DUPLICATE_MIN_SCORE)
    best = _best_match(search, search.template, search.outline, outline)
    return _duplicate_verdict(best, "the product's silhouette", SILHOUETTE_MIN_SCORE)


def _duplicate_verdict(best: float | None, by: str, limit: float) -> dict[str, Any]:
    if best is None:
        return _verdict("duplicated_product", "unchecked", "no room on the canvas for a second copy")
    if best == -np.inf:  # NCC is gain-blind, so "no window with the product's contrast" is reported as such
        return _verdict(
            "duplicated_product", "pass", f"nothing elsewhere on the canvas has the contrast and colours of {by}"
        )
    status = "fail" if best >= limit else "pass"
    return _verdict(
        "duplicated_product",
        status,
        f"best match of {by} elsewhere: NCC {best:.3f} ({'>=' if best >= limit else '<'} {limit})",
        best,
    )


class _Search(NamedTuple):
    """What the copy search works on, all at match resolution."""

    grey: np.ndarray  # float32 canvas, the product's own box blanked
    rgb: np.ndarray  # float32 HxWx3 canvas, blurred like grey
    template: np.ndarray  # grey product and OUTLINE_RING cells around it
    mask: np.ndarray  # uint8: the template's cells wholly inside the product
    outline: np.ndarray  # uint8: those and OUTLINE_RING cells around them
    colour: np.ndarray  # mean RGB of the product under ``mask``


def _match_inputs(cand: np.ndarray, alpha: np.ndarray) -> _Search:
    """Grey and colour canvas, product template + masks + mean colour, the product's own box blanked."""
    x0, y0, x1, y1 = _bbox(alpha == 255)
    f = min(1.0, TEMPLATE_SIDE / max(x1 - x0, y1 - y0), SEARCH_SIDE / max(alpha.shape))
    size = (max(1, round(alpha.shape[1] * f)), max(1, round(alpha.shape[0] * f)))
    rgb = cv2.GaussianBlur(cv2.resize(cand, size, interpolation=cv2.INTER_AREA).astype(np.float32), (0, 0), MATCH_BLUR)
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    solid = (cv2.resize((alpha == 255).astype(np.float32), size, interpolation=cv2.INTER_AREA) >= 0.99).astype(np.uint8)
    # The template comes from the candidate itself, resampled exactly like the searched canvas; its
    # inside is the cells wholly inside the product, so the backdrop around it never has to match.
    r = OUTLINE_RING
    sx0, sy0, sx1, sy1 = _bbox(solid > 0) if solid.any() else (0, 0, 0, 0)
    box = np.s_[max(0, sy0 - r) : sy1 + r, max(0, sx0 - r) : sx1 + r]
    ring = cv2.dilate(solid, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    mask = solid[box]
    colour = rgb[box][mask > 0].mean(axis=0) if mask.any() else np.zeros(3, np.float32)
    ax0, ay0, ax1, ay1 = _bbox(alpha > 0)
    own = (
        int(ax0 * f) - OWN_PAD,
        int(ay0 * f) - OWN_PAD,
        int(np.ceil(ax1 * f)) + OWN_PAD,
        int(np.ceil(ay1 * f)) + OWN_PAD,
    )
    return _Search(_blank(grey, own), _blank(rgb, own), grey[box], mask, ring[box], colour)


def _bbox(fg: np.ndarray) -> Box:
    ys, xs = np.nonzero(fg)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _blank(image: np.ndarray, own: Box) -> np.ndarray:
    """The canvas with the product's own box filled with the mean of a ring around it, so it can't match."""
    h, w = image.shape[:2]
    x0, y0, x1, y1 = max(0, own[0]), max(0, own[1]), min(w, own[2]), min(h, own[3])
    ring = np.zeros((h, w), bool)
    ring[max(0, y0 - 4) : y1 + 4, max(0, x0 - 4) : x1 + 4] = True
    ring[y0:y1, x0:x1] = False
    out = image.copy()
    out[y0:y1, x0:x1] = image[ring].mean(axis=0) if ring.any() else image.reshape(h * w, -1).mean(axis=0)
    return out


def _best_match(search: _Search, template: np.ndarray, mask: np.ndarray, std: float) -> float | None:
    """Highest ramp-free masked NCC over all scale/tilt variants of ``template`` under ``mask``, among windows
    whose structure has about ``std`` grey levels (the product's own) and whose colour is the product's:
    None when no variant fits on the canvas, -inf when no window qualifies."""
    g = (search.grey - search.grey.mean()) / 255.0  # centred and scaled: the float32 window sums stay precise
    rgb = (search.rgb - search.colour) / 255.0  # centred on the product's colour: window means are its shift
    fitted = [
        s
        for s in (_match(g, g * g, rgb, *v, std / 255.0) for v in _variants(template, mask, search.mask))
        if s is not None
    ]
    return round(max(fitted), 4) if fitted else None


def _variants(
    template: np.ndarray, mask: np.ndarray, inside: np.ndarray
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The template and its masks at every MATCH_SCALES x MATCH_ROTATIONS, each in a box that holds it all."""
    h, w = template.shape
    out = []
    for scale in MATCH_SCALES:
        for rot in MATCH_ROTATIONS:
            m = cv2.getRotationMatrix2D((w / 2, h / 2), rot, scale)
            c, s = abs(m[0, 0]), abs(m[0, 1])
            box = (max(1, round(w * c + h * s)), max(1, round(w * s + h * c)))
            m[:, 2] += (box[0] / 2 - w / 2, box[1] / 2 - h / 2)
            # Replicate, not zero, at the border: the mask's edge cells must not blend in black.
            t = cv2.warpAffine(template, m, box, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            masks = [cv2.warpAffine(k, m, box, flags=cv2.INTER_NEAREST) for k in (mask, inside)]
            out.append((t, masks[0], masks[1]))
    return out


def _match(
    g: np.ndarray,
    g2: np.ndarray,
    rgb: np.ndarray,
    template: np.ndarray,
    mask: np.ndarray,
    inside: np.ndarray,
    std: float,
) -> float | None:
    """Best ramp-free masked NCC of one variant over windows whose structure is within CONTRAST_RANGE of
    ``std`` (the product's, 0-1) and whose mean colour (under ``inside``) is within MAX_COLOUR_SHIFT of the product's.

    Ramp-free: the template's best-fitting plane (a + b x + c y over its mask) is removed, and so is
    each window's, so a smooth shading ramp on the product never correlates with a backdrop's gradient,
    horizon or vignette; only the structure on top of the ramps is compared. From plain correlations:
    numerator = residual template x window (the template's residual is orthogonal to any plane, so the
    window's plane drops out by itself); window residual variance from its sums against 1, x, y and g^2.
    """
    if template.shape[0] > g.shape[0] or template.shape[1] > g.shape[1] or mask.sum() < MIN_TEMPLATE_PX**2:
        return None
    m = mask.astype(np.float32)
    n = float(m.sum())
    basis = _plane_basis(m)
    t = _residual(template / 255.0, m, basis)
    t_std = float(np.sqrt((t * t).sum() / n))
    num = cv2.matchTemplate(g, t.astype(np.float32), cv2.TM_CCORR) / n
    sums = np.stack([cv2.matchTemplate(g, b, cv2.TM_CCORR) for b in basis], axis=-1)  # window . 1, x, y
    gram_inv = np.linalg.inv(np.einsum("ihw,jhw->ij", basis, basis))
    explained = np.einsum("...i,ij,...j->...", sums, gram_inv, sums)  # the window's plane's share of g^2
    win_std = np.sqrt(np.maximum((cv2.matchTemplate(g2, m, cv2.TM_CCORR) - explained) / n, 0.0))
    ratio = win_std / max(std, 1e-9)
    ok = (ratio >= CONTRAST_RANGE[0]) & (ratio <= CONTRAST_RANGE[1])
    scores = np.where(ok, np.clip(num / (t_std * np.maximum(win_std, 1e-12)), -1.0, 1.0), -np.inf)
    return _best_in_colour(scores, rgb, inside)


def _best_in_colour(scores: np.ndarray, rgb: np.ndarray, inside: np.ndarray) -> float:
    """The highest score whose window has the product's colour (-inf when none).

    Exactly the max over the colour-gated map, cheaper: the best COLOUR_PROBES windows are tested one by
    one (a copy is among them), and only when all of them are off-colour is the whole map gated (three
    more correlations)."""
    flat = scores.reshape(-1)
    finite = int(np.isfinite(flat).sum())
    if finite == 0:
        return -np.inf
    top = np.argpartition(-flat, min(COLOUR_PROBES, flat.size) - 1)[:COLOUR_PROBES]
    sel = inside > 0
    h, w = inside.shape
    for idx in top[np.argsort(-flat[top])]:
        if not np.isfinite(flat[idx]):
            return -np.inf  # every qualifying window was tried
        y, x = divmod(int(idx), scores.shape[1])
        if 255.0 * float(np.linalg.norm(rgb[y : y + h, x : x + w][sel].mean(axis=0))) <= MAX_COLOUR_SHIFT:
            return float(flat[idx])
    if finite <= COLOUR_PROBES:
        return -np.inf
    gated = np.where(_colour_shift(rgb, inside.astype(np.float32)) <= MAX_COLOUR_SHIFT, scores, -np.inf)
    return float(gated.max())


def _plane_basis(m: np.ndarray) -> np.ndarray:
    """float32 3xHxW: the mask times 1, x and y (centred, in template widths), the planes fitted under it."""
    h, w = m.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    scale = float(max(h, w))
    return np.stack([m, m * (xs - w / 2) / scale, m * (ys - h / 2) / scale]).astype(np.float32)


def _residual(values: np.ndarray, m: np.ndarray, basis: np.ndarray) -> np.ndarray:
    """``values`` under the mask less their least-squares plane (zero outside the mask)."""
    flat = basis.reshape(3, -1).T
    coef, *_ = np.linalg.lstsq(flat, (values * m).reshape(-1), rcond=None)
    residual: np.ndarray = (values - (flat @ coef).reshape(values.shape)) * m
    return residual


def structure_std(template: np.ndarray, mask: np.ndarray) -> float:
    """Grey levels of the template's structure under ``mask`` beyond a smooth ramp (std of the plane residual)."""
    m = mask.astype(np.float32)
    if m.sum() < 3:
        return 0.0
    res = _residual(template.astype(np.float32), m, _plane_basis(m))
    return float(np.sqrt((res * res).sum() / float(m.sum())))


def _colour_shift(rgb: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """Per window: distance (0-255 RGB) of its mean colour under ``inside`` from the product's mean colour."""
    n = max(1.0, float(inside.sum()))
    means = [cv2.matchTemplate(np.ascontiguousarray(rgb[:, :, c]), inside, cv2.TM_CCORR) / n for c in range(3)]
    shift: np.ndarray = 255.0 * np.sqrt(sum(mc * mc for mc in means))
    return shift
