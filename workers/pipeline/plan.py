"""plan (segment queue): every layout of the product on every canvas, in generate batches."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, cast

from shared import presets
from shared.config import Settings
from shared.review import SCALE_STEP, Change
from workers.engine.context import StageContext, StageError
from workers.engine.flow import LoopState
from workers.engine.review import current_change
from workers.pipeline.common import DEFAULT_SIZE, canvases
from workers.pipeline.generate import product_source
from workers.pipeline.outputs import PlanOutput, ProductCut, ScaleOutput, SegmentOutput
from workers.pipeline.revise import MAX_RETRY_SHARE, retry_share


def run(ctx: StageContext) -> dict[str, Any]:
    attempt = LoopState.of(ctx.campaign).attempt
    review = Reviewed.of(current_change(ctx.campaign), ctx.output(ScaleOutput).share, ctx.settings)
    share = retry_share(ctx, review.share, attempt)  # a retry grows a product that was too small
    made = _plan_all(ctx, share, review.rotations)
    review.keep_columns(made, ctx.settings.grid_cols)
    if not made.layouts:
        reasons = "; ".join(f"{_size(c['canvas'])}: {c['reason']}" for c in made.skipped_canvases)
        raise StageError("no_layout_fits", f"no canvas can hold the product: {reasons}")
    ctx.batches = max(1, math.ceil(len(made.layouts) / ctx.settings.generate_batch_size))
    ctx.publish(_output(ctx, made, share, attempt, ctx.batches, review))
    summary = {"layouts": len(made.layouts), "batches": ctx.batches, "skipped_canvases": len(made.skipped_canvases)}
    return summary | ({"review": review.record} if review.record else {})


@dataclass
class Reviewed:
    """What a review round's change (shared.review.Change) makes plan do: the product's share times
    SCALE_STEP per step (clamped to the scale stage's ceiling; each canvas then fits what it can hold), only
    upright layouts, and only the grid column asked for. `record` says it in the plan's output."""

    share: float
    rotations: tuple[float, ...]
    placement: str | None
    record: dict[str, Any] | None

    @classmethod
    def of(cls, change: Change | None, base: float, settings: Settings) -> Reviewed:
        rotations = tuple(float(r) for r in settings.rotations)
        if change is None:
            return cls(base, rotations, None, None)
        requested = base * SCALE_STEP**change.scale_steps
        share = round(min(MAX_RETRY_SHARE, requested), 4)
        upright = change.rotation is False
        record = {
            "scale_steps": change.scale_steps,
            "base_share": base,
            "requested_share": round(requested, 4),
            "share": share,
            "clamped": share < round(requested, 4),
            "placement": change.placement,
            "rotations": [0.0] if upright else list(rotations),
        }
        return cls(share, (0.0,) if upright else rotations, change.placement, record)

    def keep_columns(self, made: Planned, cols: int) -> None:
        """Only the layouts in the asked-for column (left: the first, right: the last, centre: the middle)."""
        if self.placement is None:
            return
        wanted = {"left": {1}, "right": {cols}, "centre": {(cols + 1) // 2, cols // 2 + 1}}[self.placement]
        before = len(made.layouts)
        made.layouts = [lay for lay in made.layouts if lay["col"] in wanted]
        if self.record is not None:
            self.record.update(columns=sorted(wanted), layouts_outside_column=before - len(made.layouts))
        if before and not made.layouts:
            raise StageError("no_layout_fits", f"no layout of the grid's {self.placement} column fits any canvas")


def canvas_zones(ctx: StageContext) -> dict[tuple[int, int], list[dict[str, Any]]]:
    """Each canvas's zones to keep the product out of: the campaign's safe_zones (every canvas) and the platform
    zones of the preset its size was named by (that canvas only)."""
    common = [dict(z) for z in ctx.campaign.safe_zones or []]
    zones: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for size in ctx.campaign.sizes or [DEFAULT_SIZE]:
        canvas = (int(size["width"]), int(size["height"]))
        zones.setdefault(canvas, common + presets.zones_of(size))
    return zones


def _plan_all(ctx: StageContext, share: float, rotations: tuple[float, ...]) -> Planned:
    """Every segmented product's layouts, in product order (a batch may hold layouts of two products)."""
    from workers.imaging import composition

    zones = {c: tuple(composition.SafeZone(**z) for z in found) for c, found in canvas_zones(ctx).items()}
    planned = Planned([], [], {})
    for cut in ctx.output(SegmentOutput).cuts():
        made = _plan_product(ctx, cut, share, zones, rotations)
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


def _plan_product(
    ctx: StageContext,
    cut: ProductCut,
    share: float,
    zones: dict[tuple[int, int], tuple[Any, ...]],
    rotations: tuple[float, ...],
) -> Any:
    """The product on every canvas, each planned on its own: its scale, its grid, its safe zones."""
    from workers.imaging import composition

    settings = ctx.settings
    # The cut-out generate will derive every layer from (the stored source and mask): the same size, and its
    # real lowest pixels stand rotated products on the ground.
    cutout = product_source(ctx, cut.product_asset_id).cutout()
    made = composition.Plan([], [], {})
    for canvas in canvases(ctx):
        one = composition.plan(
            [canvas],
            cutout.size,
            settings.grid_rows,
            settings.grid_cols,
            rotations,
            share,
            settings.max_upscale,
            cutout=cutout,
            min_share=settings.min_product_share,
            safe_zones=zones.get(canvas, ()),
        )
        made.layouts += one.layouts
        made.skipped_canvases += one.skipped_canvases
        made.safe_zone_exclusions |= one.safe_zone_exclusions
    return made


def _tagged(layout: dict[str, Any], cut: ProductCut) -> dict[str, Any]:
    """The layout with its product (generate places that product); the key prefixed with several products."""
    return {**layout, "layout_key": cut.key_prefix + layout["layout_key"], "product_asset_id": cut.product_asset_id}


def _size(canvas: object) -> str:
    return "x".join(str(v) for v in cast(list[int], canvas))


def _output(ctx: StageContext, made: Any, share: float, attempt: int, batches: int, review: Reviewed) -> PlanOutput:
    settings = ctx.settings
    return PlanOutput(
        layouts=made.layouts,
        batch_size=settings.generate_batch_size,
        batches=batches,
        grid=[settings.grid_rows, settings.grid_cols],
        rotations=list(review.rotations),
        canvases=[list(c) for c in canvases(ctx)],
        skipped_canvases=made.skipped_canvases,
        safe_zones=list(ctx.campaign.safe_zones or []),
        safe_zone_exclusions=made.safe_zone_exclusions,
        canvas_safe_zones={_size(c): z for c, z in canvas_zones(ctx).items() if z},
        scale_share=share,
        max_upscale=settings.max_upscale,
        min_share=settings.min_product_share,
        anchor="bottom-centre on the row's ground line",
        attempt=attempt,
        review=review.record,
    )
