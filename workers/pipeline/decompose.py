"""decompose (llm queue): the brief into products, backgrounds and themes.

The brief is the request's, a reviewer's replacement (a `brief` change), or, for a campaign without one,
inferred first from its products and its brand's best past campaigns (workers.pipeline.brief); the stages
after read the decomposition alike, whatever the brief's source."""

from __future__ import annotations

from typing import Any

from workers.engine.context import StageContext
from workers.pipeline import brief as briefs
from workers.pipeline.common import llm_call_rows, llm_failures
from workers.pipeline.outputs import DecomposeOutput


def run(ctx: StageContext) -> dict[str, Any]:
    from workers.language.decompose import decompose

    settings = ctx.settings.for_stage("decompose")
    text, source = briefs.brief_to_use(ctx)
    inferred: dict[str, Any] | None = None
    if text is None:
        inferred = _infer(ctx)
        text = str(inferred["brief"])
        # The inferred brief is composed from known parts in the shape the rules decomposer reads exactly: a
        # second model pass would only re-guess them (the local model needs ~9 s for it, and guesses worse).
        settings = settings.model_copy(update={"llm_backend": "rules"})
    with llm_failures("decompose"):
        result = decompose(text, settings)
    ctx.publish(DecomposeOutput.model_validate({**result, "brief_source": source}))
    ctx.rows += llm_call_rows(ctx, result)
    out = {"backend": result.get("backend"), "fallback_reason": result.get("fallback_reason"), "brief": source}
    if inferred is not None:
        out["inferred_by"] = inferred["backend"]
    return out


def _infer(ctx: StageContext) -> dict[str, Any]:
    """The inferred brief, recorded in campaign.state for the campaign resource; its calls logged apart."""
    from workers.language.infer_brief import infer_brief

    products, past = briefs.products(ctx), briefs.past_campaigns(ctx)
    with llm_failures("decompose"):
        inferred = infer_brief(products, past, ctx.settings.for_stage("decompose"))
    ctx.state_patch[briefs.STATE_KEY] = briefs.record(inferred, ctx.campaign)
    ctx.rows += llm_call_rows(ctx, inferred, key="infer")
    return inferred
