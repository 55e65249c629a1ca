"""Typed stage outputs for tests that start a campaign mid-pipeline: each built through its model, so a
test's seeded state is exactly what the earlier stages would have published."""

from __future__ import annotations

from typing import Any

from workers.pipeline.outputs import CaptionOutput, DecomposeOutput, RetrieveOutput, ScaleOutput, SegmentOutput

RULES = {"backend": "rules", "model": "test"}


def decompose(products: list[str], backgrounds: list[str], themes: list[str] | None = None) -> dict[str, Any]:
    out = DecomposeOutput(brief="test brief", products=products, backgrounds=backgrounds, themes=themes or [], **RULES)
    return out.model_dump(mode="json")


def retrieve(product_asset_id: str = "00000000-0000-0000-0000-000000000000") -> dict[str, Any]:
    """The product named, no background above min_score: the studio backdrop."""
    out = RetrieveOutput(
        product_asset_id=product_asset_id,
        product_title="product",
        product_source="named",
        product_score=None,
        background_asset_id=None,
        background_caption=None,
        background_score=None,
        background_reason="nothing relevant above min_score: studio backdrop in brand colours",
        references=[],
        reference_kpi="ctr",
        entities=[],
        model="test",
        min_score=0.3,
    )
    return out.model_dump(mode="json")


def segment(cutout_key: str) -> dict[str, Any]:
    out = SegmentOutput(
        adapter="matting",
        model=None,
        method="alpha",
        quality={},
        mask_key=cutout_key,
        antimask_key=cutout_key,
        cutout_key=cutout_key,
        cutout_size=[0, 0],
        product_asset_id="00000000-0000-0000-0000-000000000000",
    )
    return out.model_dump(mode="json")


def scale(share: float) -> dict[str, Any]:
    return ScaleOutput(share=share, reason="test", method="classical", **RULES).model_dump(mode="json")


def caption(text: str, negative_prompt: str = "", **parts: str) -> dict[str, Any]:
    out = CaptionOutput(caption=text, negative_prompt=negative_prompt, parts=parts, **RULES)
    return out.model_dump(mode="json")
