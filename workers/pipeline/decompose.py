"""decompose (llm queue): the brief into products, backgrounds and themes."""

from __future__ import annotations

from typing import Any

from workers.engine.context import StageContext
from workers.pipeline.common import llm_call_rows, llm_failures
from workers.pipeline.outputs import DecomposeOutput


def run(ctx: StageContext) -> dict[str, Any]:
    from workers.language.decompose import decompose

    with llm_failures("decompose"):
        result = decompose(ctx.campaign.brief, ctx.settings.for_stage("decompose"))
    ctx.publish(DecomposeOutput.model_validate(result))
    ctx.rows += llm_call_rows(ctx, result)
    return {"backend": result.get("backend"), "fallback_reason": result.get("fallback_reason")}
