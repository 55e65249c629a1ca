"""Written brand guidelines that map to a measurable rule, and the measurement.

A brand writes its guidelines as sentences ("The product must not be smaller than 20 % of the
frame", "Keine Schrift im Bild"). Without a vision-language model most of them cannot be judged,
but a few common ones are plain geometry or colour statistics of the pixels we hold. :func:`route`
recognises those (English and German, by patterns: a sentence that matches none stays unmapped and
says why) and returns the rule with its parameters; :func:`measure` gives the pass/fail verdict
with the measured value. The rules:

* ``min_product_area`` / ``max_product_area`` - share of the canvas the product covers (alpha >= 128)
* ``clear_margin`` - the product's box keeps this share of the canvas's shorter side from every edge
* ``no_text`` - the ``text_artefacts`` OCR verdict (text outside the product: its label is the product)
* ``brand_colours_only`` - share of the background within the palette radius of a brand colour
* ``light_background`` / ``dark_background`` - mean luminance of the background
* ``product_centred`` - the product's box centre within this share of the canvas from its centre
* ``product_in_frame`` - no product pixel on the canvas edge (the product is fully visible)
* ``product_unaltered`` - the ``distorted_product`` verdict (the product's pixels bit-exact in the candidate)

A sentence about the logo's size, people, faces, animals, mood or style needs a detector or a
vision-language model; it is not mapped to a proxy that would measure something else.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from workers.checks import brand_rules
from workers.imaging.colour import palette_rgb

DEFAULT_MARGIN = 0.05  # "keep a clear space" without a number: 5 % of the shorter side
DEFAULT_PALETTE_SHARE = 0.8  # "use only brand colours" without a number: 80 % of the background on-palette
LIGHT_MIN = 0.6  # mean background luminance (Rec.709, 0-1) of a "light / bright" background ...
DARK_MAX = 0.35  # ... and the most a "dark" one may have
CENTRE_TOL = 0.1  # "centred": box centre within 10 % of the canvas width / height of its centre

# Subjects whose size/placement we can measure (the placed layer is the product) and those we cannot.
PRODUCT = r"(product|packshot|item|bottle|package|packaging|produkt|artikel|flasche|verpackung)"
NEEDS_MODEL = (
    (r"\blogos?\b", "the logo's size or placement needs a logo detector (none on the CPU defaults)"),
    (
        r"\b(people|person|persons|humans?|faces?|models?|hands?|kids?|children|menschen|personen|gesichter|kinder)\b",
        "people, faces or hands need a person detector or a vision-language model (none configured)",
    ),
    (r"\b(animals?|pets?|dogs?|cats?|tiere?|hunde?|katzen?)\b", "animals need an object detector (none configured)"),
    (
        r"\b(competitors?|other brands?|wettbewerb\w*|konkurren\w*)\b",
        "other brands' products need a vision-language model (none configured)",
    ),
)
NEGATION = r"\b(no|not|never|avoid|without|don'?t|do not|kein\w*|nicht|nie|ohne|vermeide\w*)\b"


@dataclass(frozen=True)
class Rule:
    kind: str
    params: dict[str, float] = field(default_factory=dict)

    def describe(self) -> str:
        p = self.params
        return {
            "min_product_area": f"product covers at least {p.get('min', 0):.0%} of the canvas",
            "max_product_area": f"product covers at most {p.get('max', 1):.0%} of the canvas",
            "clear_margin": f"product keeps {p.get('margin', 0):.0%} of the shorter side clear of every edge",
            "no_text": "no text outside the product (OCR)",
            "brand_colours_only": f"at least {p.get('min_share', 0):.0%} of the background on the brand palette",
            "light_background": f"background mean luminance at least {p.get('min', 0):.2f}",
            "dark_background": f"background mean luminance at most {p.get('max', 1):.2f}",
            "product_centred": f"product centre within {p.get('tolerance', 0):.0%} of the canvas centre",
            "product_in_frame": "no product pixel on the canvas edge",
            "product_unaltered": "the product's pixels bit-exact in the candidate",
        }[self.kind]

    def record(self) -> dict[str, Any]:
        return {"rule": self.kind, "params": dict(self.params), "measures": self.describe()}


@dataclass(frozen=True)
class Routed:
    rule: Rule | None
    reason: str  # why it maps to this rule, or why it maps to none


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    for a, b in (("ä", "ae"), ("ö", "oe"), ("ü", "ue"), ("ß", "ss")):
        text = text.replace(a, b)
    return re.sub(r"\s+", " ", text.replace("\u2019", "'")).strip()


def _percent(text: str) -> float | None:
    m = re.search(r"(\d+(?:[.,]\d+)?)\s*(%|percent|prozent)", text)
    return float(m.group(1).replace(",", ".")) / 100 if m else None


def route(text: str) -> Routed:
    """The measurable rule a written guideline maps to, or None with the reason."""
    t = _norm(text)
    for matcher in _MATCHERS:
        found = matcher(t)
        if found is not None:
            return found
    for pattern, reason in NEEDS_MODEL:
        if re.search(pattern, t):
            return Routed(None, reason)
    return Routed(None, "no measurable rule recognised in this guideline; it needs a vision-language model")


def _size(t: str) -> Routed | None:
    pct = _percent(t)
    if pct is None or not re.search(r"\b(frame|image|canvas|picture|bild\w*|rahmen|flaeche|format)\b", t):
        return None
    if re.search(r"\blogos?\b", t) and not re.search(PRODUCT, t):
        return Routed(None, "the logo's size needs a logo detector; only the product's size is measurable")
    if not re.search(PRODUCT, t):
        return None
    smaller = r"(smaller|less|under|below|kleiner|weniger|unter)"
    larger = r"(larger|bigger|more|over|above|groesser|mehr|ueber)"
    at_least = re.search(r"(at least|minimum|min\.?|mindestens|wenigstens)", t) or (
        re.search(NEGATION, t) and re.search(smaller, t)
    )
    at_most = re.search(r"(at most|maximum|max\.?|hoechstens|maximal)", t) or (
        re.search(NEGATION, t) and re.search(larger, t)
    )
    why = f"a minimum/maximum share ({pct:.0%}) of the frame for the product"
    if at_least and not at_most:
        return Routed(Rule("min_product_area", {"min": pct}), why)
    if at_most and not at_least:
        return Routed(Rule("max_product_area", {"max": pct}), why)
    return None


def _margin(t: str) -> Routed | None:
    if not re.search(
        r"(clear ?space|margins?|breathing room|padding|safe area|distance from the edge|schutzzone|schutzraum"
        r"|freiraum|abstand zum rand|rand\w* frei)",
        t,
    ):
        return None
    margin = _percent(t) or DEFAULT_MARGIN
    return Routed(Rule("clear_margin", {"margin": margin}), "a clear space / margin around the product")


def _no_text(t: str) -> Routed | None:
    words = (
        r"(text|lettering|words?|typography|copy|captions?|watermarks?|slogans?|writing"
        r"|schrift\w*|beschriftung|woerter|wasserzeichen)"
    )
    if re.search(NEGATION + r"[^.;]{0,40}\b" + words + r"\b", t) or re.search(r"\btext-?free\b|\btextfrei\b", t):
        return Routed(Rule("no_text"), "no text on the image: text outside the product, read by OCR")
    return None


def _colours(t: str) -> Routed | None:
    if not re.search(
        r"((only|exclusively|stick to|strictly|nur|ausschliesslich)[^.;]{0,30}"
        r"(brand|corporate|palette|marken|haus|cd)[- ]?(colou?rs?|palette|farben))|on-palette|off-palette",
        t,
    ):
        return None
    share = _percent(t) or DEFAULT_PALETTE_SHARE
    return Routed(
        Rule("brand_colours_only", {"min_share": share}), "only brand colours: the background's palette share"
    )


def _background(t: str) -> Routed | None:
    light = re.search(r"\b(light|bright|white|pale|airy|hell\w*|weiss\w*)[^.;]{0,20}(background|backdrop|hintergr)", t)
    dark = re.search(r"\b(dark|black|dunkl?\w*|schwarz\w*)[^.;]{0,20}(background|backdrop|hintergr)", t)
    if not light and not dark or light and dark:
        return None
    found = light or dark
    negated = found is not None and re.search(NEGATION + r"[^.;]{0,15}$", t[: found.start()]) is not None
    if negated:  # "avoid dark backgrounds" asks for "not dark", not for "light"
        if light:
            return Routed(Rule("dark_background", {"max": LIGHT_MIN}), "not a light background: its mean luminance")
        return Routed(Rule("light_background", {"min": DARK_MAX}), "not a dark background: its mean luminance")
    if light:
        return Routed(Rule("light_background", {"min": LIGHT_MIN}), "a light / bright background: its mean luminance")
    return Routed(Rule("dark_background", {"max": DARK_MAX}), "a dark background: its mean luminance")


def _centred(t: str) -> Routed | None:
    if re.search(PRODUCT + r"[^.;]{0,40}(cent(er|re)d?|in the middle|mittig|zentriert|in der mitte)", t):
        return Routed(Rule("product_centred", {"tolerance": CENTRE_TOL}), "the product centred in the frame")
    return None


def _in_frame(t: str) -> Routed | None:
    visible = (
        r"(fully visible|entirely visible|completely visible|always visible|in (the )?frame|vollstaendig sichtbar)"
    )
    cropped = r"(crop\w*|cut off|cut-off|clipped|angeschnitten|abgeschnitten)"
    negated_crop = re.search(NEGATION + r"[^.;]{0,30}" + cropped, t)
    if re.search(PRODUCT + r"[^.;]{0,40}" + visible, t) or (re.search(PRODUCT, t) and negated_crop):
        return Routed(Rule("product_in_frame"), "the product fully inside the canvas")
    return None


def _unaltered(t: str) -> Routed | None:
    changed = r"(alter\w*|modif\w*|retouch\w*|redraw\w*|re-?draw\w*|chang\w*|distort\w*|veraender\w*|retusch\w*)"
    kept = r"(unaltered|unmodified|untouched|unchanged|unveraendert|pixel-?exact|bit-?exact)"
    negated = re.search(NEGATION + r"[^.;]{0,30}" + changed, t)
    if re.search(PRODUCT, t) and (negated or re.search(kept, t)):
        return Routed(Rule("product_unaltered"), "the product's pixels unaltered: the exact-pixel check")
    return None


_MATCHERS: tuple[Callable[[str], Routed | None], ...] = (
    _no_text,
    _size,
    _margin,
    _colours,
    _background,
    _centred,
    _in_frame,
    _unaltered,
)


# --- measurement -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pixels:
    """What a rule can measure: the candidate, the product mask, the palette and the classical baseline
    verdicts of the same candidate (text_artefacts by OCR, distorted_product by exact pixels)."""

    rgb: np.ndarray  # (H, W, 3) uint8
    alpha: np.ndarray  # (H, W) uint8, the placed layer's alpha
    palette: list[str]
    palette_radius: float
    baseline: dict[str, dict[str, Any]]  # guideline_classical verdicts of the same candidate, by name


def measure(rule: Rule, px: Pixels) -> dict[str, Any]:
    """{"status": "pass"|"fail"|"unchecked", "reason", "value"} of one mapped rule on one candidate."""
    product = px.alpha >= brand_rules.SOLID
    if not product.any() and rule.kind != "no_text":
        return _result(None, None, "the layer has no product pixel to measure")
    kind, p = rule.kind, rule.params
    if kind in ("min_product_area", "max_product_area"):
        share = float(product.mean())
        ok = share >= p["min"] if kind == "min_product_area" else share <= p["max"]
        return _result(share, ok, f"the product covers {share:.1%} of the canvas ({rule.describe()})")
    if kind == "clear_margin":
        return _margin_result(product, p["margin"])
    if kind == "no_text":
        return _text_result(px.baseline.get("text_artefacts"))
    if kind == "product_unaltered":
        return _baseline_result(px.baseline.get("distorted_product"), "exact pixels")
    if kind == "product_in_frame":
        return _frame_result(product)
    if kind == "brand_colours_only":
        return _palette_result(px, p["min_share"])
    if kind in ("light_background", "dark_background"):
        return _luminance_result(px, rule)
    return _centre_result(product, p["tolerance"])


def _result(value: float | None, ok: bool | None, reason: str) -> dict[str, Any]:
    status = "unchecked" if ok is None else ("pass" if ok else "fail")
    return {"status": status, "reason": reason, "value": None if value is None else round(float(value), 4)}


def _margin_result(product: np.ndarray, margin: float) -> dict[str, Any]:
    ys, xs = np.nonzero(product)
    h, w = product.shape
    side = min(h, w)
    gaps = {"left": xs.min(), "top": ys.min(), "right": w - 1 - xs.max(), "bottom": h - 1 - ys.max()}
    edge, gap = min(gaps.items(), key=lambda kv: kv[1])
    share = float(gap) / side
    reason = f"closest edge {edge}: {gap} px = {share:.1%} of the shorter side (need {margin:.0%})"
    return _result(share, share >= margin, reason)


def _text_result(verdict: dict[str, Any] | None) -> dict[str, Any]:
    return _baseline_result(verdict, "OCR")


def _baseline_result(verdict: dict[str, Any] | None, what: str) -> dict[str, Any]:
    """A rule that is one of the classical baseline checks: its verdict, or unchecked when it had none."""
    if verdict is None or verdict.get("status") not in ("pass", "fail"):
        why = verdict.get("reason") if verdict else f"no {what} verdict"
        return _result(None, None, f"could not be checked: {why}")
    return _result(verdict.get("value"), verdict["status"] == "pass", f"{what}: {verdict['reason']}")


def _frame_result(product: np.ndarray) -> dict[str, Any]:
    touching = [
        name
        for name, edge in (
            ("top", product[0]),
            ("bottom", product[-1]),
            ("left", product[:, 0]),
            ("right", product[:, -1]),
        )
        if edge.any()
    ]
    reason = f"the product touches the {', '.join(touching)} edge" if touching else "the product is inside the canvas"
    return _result(float(len(touching)), not touching, reason)


def _palette_result(px: Pixels, min_share: float) -> dict[str, Any]:
    pal = palette_rgb(px.palette)
    v = brand_rules.palette_adherence(px.rgb, px.alpha, pal, px.palette_radius, min_share)
    return _result(v["value"], v["passed"], v["reason"])


def _luminance_result(px: Pixels, rule: Rule) -> dict[str, Any]:
    background = px.alpha == 0
    if not background.any():
        return _result(None, None, "no background left to measure: the product fills the canvas")
    luma = px.rgb[background].astype(np.float32) @ brand_rules.REC709 / 255.0
    mean = float(luma.mean())
    ok = mean >= rule.params["min"] if rule.kind == "light_background" else mean <= rule.params["max"]
    return _result(mean, ok, f"background mean luminance {mean:.2f} ({rule.describe()})")


def _centre_result(product: np.ndarray, tolerance: float) -> dict[str, Any]:
    ys, xs = np.nonzero(product)
    h, w = product.shape
    dx = abs((xs.min() + xs.max()) / 2 - (w - 1) / 2) / w
    dy = abs((ys.min() + ys.max()) / 2 - (h - 1) / 2) / h
    off = float(max(dx, dy))
    reason = f"product box centre {dx:.1%} (x) / {dy:.1%} (y) of the canvas off centre (at most {tolerance:.0%})"
    return _result(off, off <= tolerance, reason)
