"""segment (segment queue): each product's mask and cut-out from its photo.

A campaign naming several products segments each one; a product that cannot be segmented is recorded
(`failed_products`, with its reason) and only its own scenes are lost. The stage fails only when no
product could be segmented.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from shared.db.session import session_scope
from shared.model_specs import segment_spec
from shared.storage import campaign_key
from workers.engine.context import StageContext, StageError
from workers.pipeline.common import load_image, model_call, save_png, tenant_asset
from workers.pipeline.outputs import ProductCut, RetrieveOutput, SegmentOutput


def run(ctx: StageContext) -> dict[str, Any]:
    products = ctx.output(RetrieveOutput).products()
    cuts: list[ProductCut] = []
    failed: list[dict[str, Any]] = []
    for index, product_id in enumerate(products, start=1):
        # Keys gain a product prefix only with several products: single-product keys stay as they were.
        prefix = f"p{index}-" if len(products) > 1 else ""
        try:
            cuts.append(segment_product(ctx, product_id, prefix))
        except StageError as exc:
            if len(products) == 1 or exc.code == "model_unavailable":  # not this product's fault: fail the stage
                raise
            failed.append({"product_asset_id": product_id, "code": exc.code, "reason": exc.message})
    if not cuts:
        reasons = "; ".join(f"{f['product_asset_id']}: {f['reason']}" for f in failed)
        raise StageError("segmentation_failed", f"no product could be segmented: {reasons}")
    first = cuts[0]
    extra = {"products": cuts, "failed_products": failed} if len(products) > 1 else {}
    ctx.publish(SegmentOutput(**first.model_dump(exclude={"key_prefix"}), **extra))
    return {
        "adapter": first.adapter,
        "method": first.method,
        "quality": {**first.quality, "attempts": first.attempts},
        "products": len(cuts),
        "failed_products": failed,
    }


def segment_product(ctx: StageContext, product_id: str, prefix: str) -> ProductCut:
    from workers.imaging import matting
    from workers.models import registry

    with session_scope() as session:
        asset = tenant_asset(session, ctx.tenant_id, product_id)
    image = load_image(asset.storage_key)
    spec = segment_spec(ctx.settings)
    try:
        result = model_call(spec, lambda: registry.segmenter(spec).segment(image))
    except matting.SegmentationError as exc:
        raise StageError("segmentation_failed", f"product asset {asset.id}: {exc}") from exc
    mask_key, antimask_key, cutout_key, cutout_size = _store_masks(ctx, image, result, prefix)
    alpha = Image.fromarray(result.alpha)  # integrity records re-derive every layer from the source and this
    alpha_key = save_png(campaign_key(ctx.tenant_id, ctx.campaign.id, f"segment/{prefix}alpha.png"), alpha)
    return ProductCut(
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
        key_prefix=prefix,
    )


def _store_masks(ctx: StageContext, image: Image.Image, result: Any, prefix: str) -> tuple[str, str, str, list[int]]:
    from workers.imaging import matting

    def key(name: str) -> str:
        return campaign_key(ctx.tenant_id, ctx.campaign.id, f"segment/{prefix}{name}")

    mask = Image.fromarray(result.mask)
    cutout = matting.cutout(image, result)
    return (
        save_png(key("mask.png"), mask),
        save_png(key("antimask.png"), Image.eval(mask, lambda v: 255 - v)),
        save_png(key("cutout.png"), cutout),
        list(cutout.size),
    )
