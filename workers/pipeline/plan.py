"""plan (segment queue): every layout of the product on every canvas, in generate batches."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, cast

from workers.engine.context import StageContext, StageError
from workers.engine.flow import LoopState
from workers.pipeline.common import canvases
from workers.pipeline.generate import product_source
from workers.pipeline.outputs import PlanOutput, ProductCut, ScaleOutput, SegmentOutput
from workers.pipeline.revise import retry_share


def run(ctx: StageContext) -> dict[str, Any]:
    attempt = LoopState.of(ctx.campaign).attempt
    share = retry_share(ctx, ctx.output(ScaleOutput).share, attempt)  # a retry grows a product that was too small
    made = _plan_all(ctx, share)
    if not made.layouts:
        reasons = "; ".join(f"{_size(c['canvas'])}: {c['reason']}" for c in made.skipped_canvases)
        raise StageError("no_layout_fits", f"no canvas can hold the product: {reasons}")
    ctx.batches = max(1, math.ceil(len(made.layouts) / ctx.settings.generate_batch_size))
    ctx.publish(_output(ctx, made, share, attempt, ctx.batches))
    return {"layouts": len(made.layouts), "batches": ctx.batches, "skipped_canvases": len(made.skipped_canvases)}


def _plan_all(ctx: StageContext, share: float) -> Planned:
    """Every segmented product's layouts, in product order (a batch may hold layouts of two products)."""
    from workers.imaging import composition

    zones = tuple(composition.SafeZone(**z) for z in ctx.campaign.safe_zones or [])
    planned = Planned([], [], {})
    for cut in ctx.output(SegmentOutput).cuts():
        made = _plan_product(ctx, cut, share, zones)
        planned.layouts += [_tagged(asdict(layout), cut) for layout in made.layouts]
        named = {"product_asset_id": cut.product_asset_id} if cut.key_prefix else {}
        planned.skipped_canvases += [{**c, **named} for c in made.skipped_canvases]
        for size, count in made.safe_zone_exclusions.items():
            planned.safe_zone_exclusions[size] = planned.safe_zone_exclusions.get(size, 0) + count
    return planned


@dataclass
class Planned:
    """Every product's layouts (dicts tagged with their product), skipped canvases and safe-zone exclusions."""

    layouts: list[dict[str, Any]]
    skipped_canvases: list[dict[str, Any]]
    safe_zone_exclusions: dict[str, int]


def _plan_product(ctx: StageContext, cut: ProductCut, share: float, zones: tuple[Any, ...]) -> Any:
    from workers.imaging import composition

    settings = ctx.settings
    # The cut-out generate will derive every layer from (the stored source and mask): the same size, and its
    # real lowest pixels stand rotated products on the ground.
    cutout = product_source(ctx, cut.product_asset_id).cutout()
    return composition.plan(
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


def _tagged(layout: dict[str, Any], cut: ProductCut) -> dict[str, Any]:
    """The layout with its product (generate places that product); the key prefixed with several products."""
    return {**layout, "layout_key": cut.key_prefix + layout["layout_key"], "product_asset_id": cut.product_asset_id}


def _size(canvas: object) -> str:
    return "x".join(str(v) for v in cast(list[int], canvas))


def _output(ctx: StageContext, made: Any, share: float, attempt: int, batches: int) -> PlanOutput:
    settings = ctx.settings
    return PlanOutput(
        layouts=made.layouts,
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
