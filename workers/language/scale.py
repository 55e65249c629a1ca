"""Scale stage: how large the product appears on the canvas (its longest side as a share of
the canvas's longer side), which the composition plan then uses for every layout.

With a hosted vision model the model looks at the canvas (the retrieved background, or the
brand's backdrop) and the product cut-out and answers with a share and a reason. The local
model is text-only, so it, the rules backend, and a text-only hosted model use the classical
estimate: the product's typical real-world size (from its category) against the width a
product shot of that kind of scene frames, and the result says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PIL import Image
from pydantic import BaseModel, Field

from workers.language.hosted import hosted_answer
from workers.language.prompts import load_prompt
from workers.language.text import collapse, stem, words

if TYPE_CHECKING:
    from shared.config import Settings

# The product is the hero: below 0.3 a small product is lost in a banner (and under QC's 2 % area floor);
# above 0.6 there is no scene left around it.
MIN_SHARE, MAX_SHARE = 0.3, 0.6
# Typical longest side in metres, by the product noun's last word (stemmed).
PRODUCT_SIZES_M: dict[str, float] = {
    "ring": 0.02,
    "earring": 0.03,
    "watch": 0.04,
    "earbud": 0.05,
    "bracelet": 0.07,
    "lipstick": 0.08,
    "cream": 0.08,
    "bar": 0.12,
    "perfume": 0.12,
    "candle": 0.12,
    "jar": 0.12,
    "can": 0.12,
    "cup": 0.1,
    "mug": 0.1,
    "camera": 0.14,
    "sunglass": 0.15,
    "glass": 0.15,
    "phone": 0.15,
    "smartphone": 0.15,
    "toothbrush": 0.2,
    "headphone": 0.2,
    "teapot": 0.2,
    "speaker": 0.2,
    "book": 0.22,
    "ball": 0.22,
    "bottle": 0.25,
    "glove": 0.25,
    "flask": 0.3,
    "thermos": 0.3,
    "shoe": 0.3,
    "sneaker": 0.3,
    "trainer": 0.3,
    "boot": 0.35,
    "helmet": 0.3,
    "hat": 0.3,
    "box": 0.3,
    "handbag": 0.35,
    "bag": 0.4,
    "laptop": 0.35,
    "machine": 0.35,
    "holder": 0.15,
    "necklace": 0.4,
    "backpack": 0.45,
    "lamp": 0.5,
    "weekender": 0.55,
    "scarf": 0.6,
    "suitcase": 0.7,
    "jacket": 0.8,
    "coat": 1.0,
    "umbrella": 0.9,
    "chair": 0.9,
    "jean": 1.0,
    "dress": 1.1,
    "guitar": 1.0,
    "blanket": 1.2,
    "bicycle": 1.7,
    "bike": 1.7,
    "sofa": 2.0,
    "tent": 2.0,
    "car": 4.5,
}
# Width a product shot frames, by the background noun's last word: close on a surface, wider in a room or outdoors.
SCENE_WIDTHS_M: dict[str, float] = {
    **dict.fromkeys(
        "table desk counter countertop shelf tray cushion windowsill sheet towel cloth pedestal "
        "plinth podium stand vanity board".split(),
        0.7,
    ),
    **dict.fromkeys("bench bed sofa floor rug deck step stair car".split(), 1.5),
    **dict.fromkeys("room kitchen bathroom bedroom office loft studio shop cafe bar hut lobby hall".split(), 2.0),
    **dict.fromkeys(
        "street road sidewalk court track park garden beach path trail harbour harbor field forest "
        "mountain lake city square backyard rooftop pool".split(),
        2.5,
    ),
}
STUDIO_WIDTH_M = 0.8  # no retrieved background: the brand's backdrop framed as a studio shot


class ScaleAnswer(BaseModel):
    share: float = Field(ge=0.05, le=0.9)
    reason: str = Field(min_length=3, max_length=300)


def classical_share(products: list[str], backgrounds: list[str], default: float) -> tuple[float, str]:
    """(share, reason) from the product's category size against the scene's framing width."""
    size = _lookup(PRODUCT_SIZES_M, products)
    if size is None:
        named = products[0] if products else "the product"
        return default, f"no known real-world size for {named!r}; the configured share {default}"
    width = _lookup(SCENE_WIDTHS_M, backgrounds) or STUDIO_WIDTH_M
    share = min(MAX_SHARE, max(MIN_SHARE, size / width))
    scene = backgrounds[0] if backgrounds else "a studio backdrop"
    held = f" ({size / width:.2f} held to {MIN_SHARE}-{MAX_SHARE})" if share != size / width else ""
    return round(share, 3), f"{products[0]!r} is about {size:g} m; a shot of {scene!r} frames about {width:g} m{held}"


def _lookup(table: dict[str, float], phrases: list[str]) -> float | None:
    for phrase in phrases:
        ws = words(phrase)
        if ws and stem(ws[-1]) in table:
            return table[stem(ws[-1])]
    return None


def scale(
    caption: str, decomposition: dict[str, Any], product: Image.Image, canvas: Image.Image, settings: Settings
) -> dict[str, Any]:
    """-> {"share", "reason", "method": vision|classical, "backend", "model", "fallback_reason", "calls",
    "prompt_version", "clamped"}. A hosted backend that cannot answer raises LLMError (the stage fails)."""
    from workers.models import llm_hosted

    _check_args(caption, product, canvas)
    products, backgrounds = list(decomposition.get("products") or []), list(decomposition.get("backgrounds") or [])
    reason = llm_hosted.no_vision_reason(settings, "scale from the product's real-world category")
    if reason:
        return _classical(products, backgrounds, settings, reason, [], None)
    return _vision(caption, products, backgrounds, product, canvas, settings)


def _check_args(caption: str, product: Image.Image, canvas: Image.Image) -> None:
    if not isinstance(caption, str) or not caption.strip():
        raise ValueError("caption: expected a non-empty str")
    for name, image in (("product", product), ("canvas", canvas)):
        if not isinstance(image, Image.Image) or min(image.size) < 1:
            raise ValueError(f"{name}: expected a non-empty PIL image")


def _classical(
    products: list[str],
    backgrounds: list[str],
    settings: Settings,
    fallback_reason: str | None,
    calls: list[dict[str, Any]],
    version: str | None,
) -> dict[str, Any]:
    share, why = classical_share(products, backgrounds, settings.product_scale)
    return {
        "share": share,
        "reason": why,
        "method": "classical",
        "backend": "rules",
        "model": "size-table-v1",
        "fallback_reason": fallback_reason,
        "calls": calls,
        "prompt_version": version,
        "clamped": False,
    }


def _vision(
    caption: str,
    products: list[str],
    backgrounds: list[str],
    product: Image.Image,
    canvas: Image.Image,
    settings: Settings,
) -> dict[str, Any]:
    from workers.models import llm_hosted

    backend, template = llm_hosted.backend_for(settings), load_prompt("scale", "v1")
    images = (llm_hosted.image_part(canvas.convert("RGB")), llm_hosted.image_part(product))
    calls: list[dict[str, Any]] = []
    answer = hosted_answer(
        backend,
        template,
        ScaleAnswer,
        calls,
        {},
        images,
        caption=caption,
        width=str(canvas.width),
        height=str(canvas.height),
        product=", ".join(products) or "the product",
    )
    share = min(MAX_SHARE, max(MIN_SHARE, answer.share))  # guard: the plan and QC need a usable size
    return {
        "share": round(share, 3),
        "reason": collapse(answer.reason),
        "method": "vision",
        "backend": backend.name,
        "model": backend.model,
        "fallback_reason": None,
        "calls": calls,
        "prompt_version": template.id,
        "clamped": share != answer.share,
    }
