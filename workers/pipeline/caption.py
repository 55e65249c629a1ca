"""caption (llm queue): the caption-style prompt from the decomposition and what was retrieved."""

from __future__ import annotations

from typing import Any

from workers.engine.context import StageContext
from workers.engine.review import current_change
from workers.pipeline.common import campaign_brand, llm_call_rows, llm_failures
from workers.pipeline.outputs import CaptionOutput, DecomposeOutput, RetrieveOutput


def run(ctx: StageContext) -> dict[str, Any]:
    from workers.language.budget import budget_for
    from workers.language.caption import caption, reviewed

    retrieved = ctx.output(RetrieveOutput)
    forbidden = campaign_brand(ctx).forbidden_terms or []
    with llm_failures("caption"):
        result = caption(
            ctx.output(DecomposeOutput).model_dump(),
            retrieved.product_title,
            retrieved.background_caption,
            ctx.settings.for_stage("caption"),
            forbidden_terms=forbidden,
        )
    change = current_change(ctx.campaign)
    if change is not None and (change.caption_add or change.caption_remove):
        result = reviewed(result, change.caption_add, change.caption_remove, budget_for(ctx.settings), forbidden)
    ctx.publish(CaptionOutput.model_validate(result))
    ctx.rows += llm_call_rows(ctx, result)
    untranslated = bool(result["guards"].get("untranslated"))  # said in the stage run, not only in the state
    summary = {"caption": result["caption"], "backend": result.get("backend"), "untranslated": untranslated}
    return summary | ({"review": result["review"]} if result.get("review") else {})
