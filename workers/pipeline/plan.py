"""plan (segment queue): every layout of the product on every canvas, in generate batches."""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any, cast

from workers.engine.context import StageContext, StageError
from workers.engine.flow import LoopState
from workers.pipeline.common import canvases
from workers.pipeline.generate import product_source
from workers.pipeline.outputs import PlanOutput, ScaleOutput
from workers.pipeline.revise import retry_share


def run(ctx: StageContext) -> dict[str, Any]:
    from workers.imaging import composition

    settings = ctx.settings
    attempt = LoopState.of(ctx.campaign).attempt
    share = retry_share(ctx, ctx.output(ScaleOutput).share, attempt)  # a retry grows a product that was too small
    # The cut-out generate will derive every layer from (the stored source and mask): the same size, and its
    # real lowest pixels stand rotated products on the ground.
    cutout = product_source(ctx).cutout()
    zones = tuple(composition.SafeZone(**z) for z in ctx.campaign.safe_zones or [])
    made = composition.plan(
        canvases(ctx),
        cutout.size,
        settings.grid_rows,
        settings.grid_cols,
        tuple(settings.rotations),
        share,
        settings.max_upscale,
        cutout=cutout,
        min_share=settings.min_product_share,
        safe_zones=zones,
    )
    if not made.layouts:
        reasons = "; ".join(f"{_size(c['canvas'])}: {c['reason']}" for c in made.skipped_canvases)
        raise StageError("no_layout_fits", f"no canvas can hold the product: {reasons}")
    ctx.batches = max(1, math.ceil(len(made.layouts) / settings.generate_batch_size))
    ctx.publish(_output(ctx, made, share, attempt, ctx.batches))
    return {"layouts": len(made.layouts), "batches": ctx.batches, "skipped_canvases": len(made.skipped_canvases)}


def _size(canvas: object) -> str:
    return "x".join(str(v) for v in cast(list[int], canvas))


def _output(ctx: StageContext, made: Any, share: float, attempt: int, batches: int) -> PlanOutput:
    settings = ctx.settings
    return PlanOutput(
        layouts=[asdict(layout) for layout in made.layouts],
        batch_size=settings.generate_batch_size,
        batches=batches,
        grid=[settings.grid_rows, settings.grid_cols],
        rotations=list(settings.rotations),
        canvases=[list(c) for c in canvases(ctx)],
        skipped_canvases=made.skipped_canvases,
        safe_zones=list(ctx.campaign.safe_zones or []),
        safe_zone_exclusions=made.safe_zone_exclusions,
        scale_share=share,
        max_upscale=settings.max_upscale,
        min_share=settings.min_product_share,
        anchor="bottom-centre on the row's ground line",
        attempt=attempt,
    )
