"""scale (llm queue): how much of the canvas the product should fill, from the caption and the scene."""

from __future__ import annotations

from typing import Any

from workers.engine.context import StageContext
from workers.pipeline.common import backgrounds, canvases, llm_call_rows, llm_failures, load_image
from workers.pipeline.outputs import CaptionOutput, DecomposeOutput, ScaleOutput, SegmentOutput


def run(ctx: StageContext) -> dict[str, Any]:
    from workers.language import scale as scaling

    canvas = canvases(ctx)[0]
    # With several products the share is judged on the first one's cut-out; plan fits every product's own
    # cut-out to that share of the canvas (one judgement per campaign, not one hosted call per product).
    with llm_failures("scale"):
        result = scaling.scale(
            ctx.output(CaptionOutput).caption,
            ctx.output(DecomposeOutput).model_dump(),
            load_image(ctx.output(SegmentOutput).cutout_key).convert("RGBA"),
            backgrounds(ctx, {canvas})[canvas],
            ctx.settings.for_stage("scale"),
        )
    ctx.publish(ScaleOutput.model_validate(result))
    ctx.rows += llm_call_rows(ctx, result)
    return {"share": result["share"], "method": result["method"], "fallback_reason": result["fallback_reason"]}
