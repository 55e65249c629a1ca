"""generate (generate queue): one batch of the plan's layouts as candidates, composited or inpainted.

The product layer is placed from the cut-out and never painted over; every candidate's integrity
record proves it (sha256 of the placed layer and the exact share of identical product pixels).
"""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Any

from PIL import Image

from shared import metrics
from shared.db.models import Candidate
from shared.model_specs import ModelSpec, generate_spec
from shared.storage import campaign_key
from workers.engine.context import StageContext
from workers.pipeline.common import backgrounds, load_image, model_call, save_png
from workers.pipeline.outputs import CaptionOutput, DecomposeOutput, PlanOutput, RetrieveOutput, SegmentOutput


@dataclass
class Made:
    """One generated candidate before it becomes a row: which layout, which variant, its pixels."""

    layout: Any  # workers.imaging.composition.Layout
    layer: Image.Image
    image: Image.Image
    variant: int
    generation: dict[str, Any]


def run(ctx: StageContext) -> dict[str, Any]:
    from workers.imaging import composition

    layouts = [composition.Layout(**d) for d in _batch_layouts(ctx)]
    cutout = load_image(ctx.output(SegmentOutput).cutout_key).convert("RGBA")
    scenes = backgrounds(ctx, {(lay.canvas_w, lay.canvas_h) for lay in layouts})
    layers = [composition.place(cutout, layout) for layout in layouts]
    spec = generate_spec(ctx.settings)
    make = _inpaint if spec.adapter == "sd-inpaint" else _composite
    made = model_call(spec, lambda: make(ctx, spec, list(zip(layouts, layers, strict=True)), scenes))
    saved_layers: set[str] = set()
    for item in made:
        ctx.rows.append(_candidate_row(ctx, item, saved_layers))
        _observe_generation(item.generation)
    return {
        "candidates": len(made),
        "generator": spec.adapter,
        "gpu_seconds": round(sum(m.generation.get("gpu_seconds", 0.0) for m in made), 3),
    }


def _batch_layouts(ctx: StageContext) -> list[dict[str, Any]]:
    plan = ctx.output(PlanOutput)
    return plan.layouts[ctx.item * plan.batch_size : (ctx.item + 1) * plan.batch_size]


def _composite(
    ctx: StageContext,
    spec: ModelSpec,
    placed: list[tuple[Any, Image.Image]],
    scenes: dict[tuple[int, int], Image.Image],
) -> list[Made]:
    from workers.models import registry

    compositor, out = registry.compositor(spec), []
    for layout, layer in placed:
        started = time.perf_counter()
        image = compositor.compose(layer, scenes[(layout.canvas_w, layout.canvas_h)])
        seconds = round(time.perf_counter() - started, 4)
        generation = {"adapter": "compositor", "device": "cpu", "seed": None, "cpu_seconds": seconds}
        out.append(Made(layout, layer, image, 0, generation))
    return out


def _inpaint(
    ctx: StageContext,
    spec: ModelSpec,
    placed: list[tuple[Any, Image.Image]],
    scenes: dict[tuple[int, int], Image.Image],
) -> list[Made]:
    """sd-inpaint: every layout x variant, batched by the adapter; the reference background (when one
    was retrieved) is the init image, otherwise the model paints the whole scene."""
    from workers.models import registry, sd_inpaint

    reference = bool(ctx.output(RetrieveOutput).background_asset_id)
    todo = [(layout, layer, v) for layout, layer in placed for v in range(ctx.settings.sd_variants)]
    jobs = [
        sd_inpaint.Job(
            layer, scenes[(lay.canvas_w, lay.canvas_h)] if reference else None, seed_for(ctx, lay.layout_key, v)
        )
        for lay, layer, v in todo
    ]
    caption, inpainter = ctx.output(CaptionOutput), registry.generator(spec)
    outputs = inpainter.generate(jobs, caption.caption, caption.negative_prompt, background_prompt=_scene_prompt(ctx))
    return [
        Made(lay, layer, out.image, v, _generation(spec, out, reference, str(inpainter.device)))
        for (lay, layer, v), out in zip(todo, outputs, strict=True)
    ]


def _observe_generation(generation: dict[str, Any]) -> None:
    # The adapter's own timing of this candidate: gpu_seconds on an accelerator, cpu_seconds otherwise.
    seconds = generation.get("gpu_seconds", generation.get("cpu_seconds"))
    if seconds is not None:
        metrics.GPU_SECONDS_PER_CANDIDATE.labels(generation["adapter"], generation.get("device") or "cpu").observe(
            float(seconds)
        )


def _generation(spec: ModelSpec, out: Any, reference: bool, device: str) -> dict[str, Any]:
    return {
        "adapter": spec.adapter,
        "model": spec.model,
        "seed": out.seed,
        "device": device,
        "mode": spec.option("mode"),
        "passes": list(out.passes),
        "working_size": list(out.size),
        "steps": spec.option("steps"),
        "init": "reference background" if reference else "none",
        "gpu_seconds": round(out.gpu_seconds, 4),
    }


def _scene_prompt(ctx: StageContext) -> str | None:
    return ", ".join(ctx.output(DecomposeOutput).backgrounds) or ctx.output(RetrieveOutput).background_caption


def seed_for(ctx: StageContext, layout_key: str, variant: int) -> int:
    """Deterministic per (campaign, round, layout, variant): a retried task paints the same pixels."""
    digest = hashlib.sha256(f"{ctx.campaign.id}:{ctx.round}:{layout_key}:{variant}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def candidate_id(campaign_id: uuid.UUID, rnd: int, layout_key: str) -> uuid.UUID:
    # Deterministic: a retried generate task upserts the same row instead of adding one.
    return uuid.uuid5(campaign_id, f"{rnd}:{layout_key}")


def _candidate_row(ctx: StageContext, item: Made, saved_layers: set[str]) -> Candidate:
    from workers.imaging import composition

    layout = item.layout
    key = layout.layout_key if item.variant == 0 else f"{layout.layout_key}-v{item.variant}"
    prefix = campaign_key(ctx.tenant_id, ctx.campaign.id, f"r{ctx.round}/{layout.layout_key}")
    layer_key = f"{prefix}/layer.png"
    if layer_key not in saved_layers:  # variants of a layout share its product layer
        save_png(layer_key, item.layer)
        saved_layers.add(layer_key)
    suffix = "" if item.variant == 0 else f"-v{item.variant}"
    return Candidate(
        id=candidate_id(ctx.campaign.id, ctx.round, key),
        tenant_id=ctx.tenant_id,
        campaign_id=ctx.campaign.id,
        round=ctx.round,
        batch=ctx.item,
        layout_key=key,
        placement=placement(layout),
        generator=item.generation["adapter"],
        generation=item.generation,
        integrity={**composition.integrity(item.image, item.layer), "placement": placement(layout)},
        image_key=save_png(f"{prefix}/candidate{suffix}.png", item.image),
        layer_key=layer_key,
    )


def placement(layout: Any) -> dict[str, Any]:
    return {
        "x": layout.x,
        "y": layout.y,
        "scale": layout.scale,
        "rotation": layout.rotation,
        "row": layout.row,
        "col": layout.col,
        "canvas": {"width": layout.canvas_w, "height": layout.canvas_h},
    }
