"""generate (generate queue): one batch of the plan's layouts as candidates, composited or inpainted.

The product layer is derived from the stored source photo and mask (shared.integrity.derive_layer,
the function `onbrand verify` re-runs) and never painted over; every candidate's integrity record
names the source, the mask and the transform, and proves the result (sha256 of the placed layer and
the exact share of identical product pixels).
"""

from __future__ import annotations

import hashlib
import io
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from shared import integrity, metrics
from shared.db.models import Candidate
from shared.db.session import session_scope
from shared.model_specs import ModelSpec, generate_spec
from shared.storage import campaign_key, get_storage
from workers.engine.context import StageContext, StageError
from workers.pipeline.common import ImageWriter, backgrounds, model_call, tenant_asset
from workers.pipeline.outputs import CaptionOutput, DecomposeOutput, PlanOutput, RetrieveOutput, SegmentOutput


@dataclass
class Made:
    """One generated candidate before it becomes a row: which layout, which variant, its pixels."""

    layout: Any  # workers.imaging.composition.Layout
    layer: Image.Image
    image: Image.Image
    variant: int
    generation: dict[str, Any]


@dataclass
class ProductSource:
    """The stored photo every product layer is derived from, its mask, and how the record names both."""

    image: Image.Image
    mask: np.ndarray  # uint8 HxW soft alpha at the photo's size
    crop: integrity.Box  # the cut-out's box in the photo
    source_ref: dict[str, Any]
    mask_ref: dict[str, Any]

    def cutout(self) -> Image.Image:
        return integrity.cut_out(self.image, self.mask, self.crop)

    @property
    def size(self) -> tuple[int, int]:
        return self.crop[2] - self.crop[0], self.crop[3] - self.crop[1]

    def layer(self, layout: Any) -> tuple[integrity.Transform, Image.Image]:
        """The layout's transform and placed layer, made by integrity.derive_layer itself."""
        from workers.imaging import composition

        t = composition.transform_of(layout, self.size, self.crop)
        composition.check_placed_size(integrity.placed_size(t), layout)
        return t, integrity.derive_layer(self.image, self.mask, t)


def product_source(ctx: StageContext, product_asset_id: str | None = None) -> ProductSource:
    """The product asset's stored bytes and the segmenter's stored alpha (the named product, else the first);
    a campaign seeded with only a cut-out (older state, tests) derives from that cut-out, and its record says so
    (kind "cutout")."""
    seg = ctx.output(SegmentOutput).cut(product_asset_id)
    storage = get_storage()
    if seg.alpha_key:
        with session_scope() as session:
            asset = tenant_asset(session, ctx.tenant_id, seg.product_asset_id)
            key, asset_id, asset_sha = asset.storage_key, str(asset.id), asset.sha256
        data, mask_data = storage.get(key), storage.get(seg.alpha_key)
        source_ref = integrity.stored_ref(key, data, kind="asset", asset_id=asset_id, asset_sha256=asset_sha)
        mask_key = seg.alpha_key
    else:
        key = mask_key = seg.cutout_key
        data = mask_data = storage.get(key)
        source_ref = integrity.stored_ref(key, data, kind="cutout", asset_id=seg.product_asset_id)
    mask_ref = integrity.stored_ref(mask_key, mask_data, adapter=seg.adapter, model=seg.model, method=seg.method)
    image, mask = _decode(data), integrity.mask_array(_decode(mask_data))
    try:
        return ProductSource(image, mask, integrity.mask_box(mask), source_ref, mask_ref)
    except ValueError as exc:
        raise StageError("mask_invalid", f"the product mask {mask_key}: {exc}") from None


class SourceLayers:
    """Candidates' layers re-derived from the stored source photo and mask their integrity records name:
    what QC compares each candidate with (the source product), independently of the layer that was pasted.
    Photos and masks are fetched once per task, layers derived once per candidate."""

    def __init__(self) -> None:
        self._files: dict[str, Image.Image] = {}
        self._layers: dict[str, Image.Image | None] = {}

    def layer(self, cand: Candidate) -> Image.Image | None:
        """The re-derived layer, or None for a candidate whose record names no source (made before records)."""
        key = str(cand.id)
        if key not in self._layers:
            self._layers[key] = self._derive(cand.integrity or {})
        return self._layers[key]

    def _derive(self, record: dict[str, Any]) -> Image.Image | None:
        if not all(record.get(part) for part in ("source", "mask", "transform")):
            return None
        try:
            source, mask = self._file(record["source"]["key"]), self._file(record["mask"]["key"])
            return integrity.derive_layer(source, mask, integrity.Transform.from_json(record["transform"]))
        except (KeyError, FileNotFoundError, ValueError) as exc:
            raise StageError("source_missing", f"cannot re-derive the product layer from its source: {exc}") from None

    def _file(self, key: str) -> Image.Image:
        if key not in self._files:
            self._files[key] = _decode(get_storage().get(key))
        return self._files[key]


def _decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def run(ctx: StageContext) -> dict[str, Any]:
    made: list[Made] = []
    spec = generate_spec(ctx.settings)
    # candidates and layers are encoded and stored in the background while the next ones are made
    with ImageWriter() as writer:
        for product_id, layouts in _by_product(_batch_layouts(ctx)).items():
            made += _generate_product(ctx, spec, product_id, layouts, writer)
    return {
        "candidates": len(made),
        "generator": spec.adapter,
        "gpu_seconds": round(sum(m.generation.get("gpu_seconds", 0.0) for m in made), 3),
    }


def _by_product(layouts: list[dict[str, Any]]) -> dict[str | None, list[Any]]:
    """The batch's layouts per product (None: a plan from before products were named on layouts: the first)."""
    from workers.imaging import composition

    grouped: dict[str | None, list[Any]] = {}
    for found in layouts:
        fields = {k: v for k, v in found.items() if k != "product_asset_id"}
        grouped.setdefault(found.get("product_asset_id"), []).append(composition.Layout(**fields))
    return grouped


def _generate_product(
    ctx: StageContext, spec: ModelSpec, product_id: str | None, layouts: list[Any], writer: ImageWriter
) -> list[Made]:
    source = product_source(ctx, product_id)
    scenes = backgrounds(ctx, {(lay.canvas_w, lay.canvas_h) for lay in layouts})
    placed = [source.layer(layout) for layout in layouts]
    layers = [layer for _, layer in placed]
    make = _inpaint if spec.adapter == "sd-inpaint" else _composite
    made = model_call(spec, lambda: make(ctx, spec, list(zip(layouts, layers, strict=True)), scenes))
    transforms = {lay.layout_key: t for lay, (t, _) in zip(layouts, placed, strict=True)}
    product = str(source.source_ref.get("asset_id") or product_id or "")
    for item in made:
        record = integrity.record(
            source.source_ref, source.mask_ref, transforms[item.layout.layout_key], item.image, item.layer
        )
        ctx.rows.append(_candidate_row(ctx, item, writer, record, product))
        _observe_generation(item.generation)
    return made


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


def _candidate_row(
    ctx: StageContext, item: Made, writer: ImageWriter, record: dict[str, Any], product_asset_id: str
) -> Candidate:
    layout = item.layout
    key = layout.layout_key if item.variant == 0 else f"{layout.layout_key}-v{item.variant}"
    prefix = campaign_key(ctx.tenant_id, ctx.campaign.id, f"r{ctx.round}/{layout.layout_key}")
    layer_key = f"{prefix}/layer.png"
    if item.variant == 0:  # variants of a layout share its product layer (variant 0 is always made)
        writer.put_png(layer_key, item.layer)
    suffix = "" if item.variant == 0 else f"-v{item.variant}"
    # which product the candidate shows: rank chooses top_k per product, results name it
    placed = {**layout.record(), "product_asset_id": product_asset_id}
    return Candidate(
        id=candidate_id(ctx.campaign.id, ctx.round, key),
        tenant_id=ctx.tenant_id,
        campaign_id=ctx.campaign.id,
        round=ctx.round,
        batch=ctx.item,
        layout_key=key,
        placement=placed,
        generator=item.generation["adapter"],
        generation=item.generation,
        integrity={**record, "placement": placed},
        image_key=writer.put_png(f"{prefix}/candidate{suffix}.png", item.image),
        layer_key=layer_key,
    )
