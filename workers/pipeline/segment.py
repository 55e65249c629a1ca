"""segment (segment queue): the product's mask and cut-out from its photo."""

from __future__ import annotations

from typing import Any

from PIL import Image

from shared.db.session import session_scope
from shared.model_specs import segment_spec
from shared.storage import campaign_key
from workers.engine.context import StageContext, StageError
from workers.pipeline.common import load_image, model_call, save_png, tenant_asset
from workers.pipeline.outputs import RetrieveOutput, SegmentOutput


def run(ctx: StageContext) -> dict[str, Any]:
    from workers.imaging import matting
    from workers.models import registry

    with session_scope() as session:
        asset = tenant_asset(session, ctx.tenant_id, ctx.output(RetrieveOutput).product_asset_id)
    image = load_image(asset.storage_key)
    spec = segment_spec(ctx.settings)
    try:
        result = model_call(spec, lambda: registry.segmenter(spec).segment(image))
    except matting.SegmentationError as exc:
        raise StageError("segmentation_failed", f"product asset {asset.id}: {exc}") from exc
    mask_key, antimask_key, cutout_key, cutout_size = _store_masks(ctx, image, result)
    alpha = Image.fromarray(result.alpha)  # integrity records re-derive every layer from the source and this
    alpha_key = save_png(campaign_key(ctx.tenant_id, ctx.campaign.id, "segment/alpha.png"), alpha)
    ctx.publish(
        SegmentOutput(
            adapter=spec.adapter,
            model=spec.model or None,
            method=result.method,
            quality={k: v for k, v in result.quality.items() if k != "attempts"},
            attempts=list(result.quality.get("attempts", [])),
            mask_key=mask_key,
            antimask_key=antimask_key,
            cutout_key=cutout_key,
            cutout_size=cutout_size,
            product_asset_id=str(asset.id),
            alpha_key=alpha_key,
        )
    )
    return {"adapter": spec.adapter, "method": result.method, "quality": result.quality}


def _store_masks(ctx: StageContext, image: Image.Image, result: Any) -> tuple[str, str, str, list[int]]:
    from workers.imaging import matting

    def key(name: str) -> str:
        return campaign_key(ctx.tenant_id, ctx.campaign.id, f"segment/{name}")

    mask = Image.fromarray(result.mask)
    cutout = matting.cutout(image, result)
    return (
        save_png(key("mask.png"), mask),
        save_png(key("antimask.png"), Image.eval(mask, lambda v: 255 - v)),
        save_png(key("cutout.png"), cutout),
        list(cutout.size),
    )
