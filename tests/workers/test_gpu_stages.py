"""The segment, plan and generate stage functions on a real database and object store: bad input
fails with a clear reason (never a full-canvas mask, never a silent empty plan), canvases that
cannot hold the product are skipped and reported, a missing model names its stage."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from shared.config import Settings
from shared.db.models import Asset, Brand, Campaign, Candidate, Tenant
from shared.db.session import session_scope
from shared.storage import campaign_key
from tests import stage_outputs as outputs
from workers.engine.context import StageContext, StageError
from workers.pipeline import generate, plan, segment
from workers.pipeline.common import save_png


@pytest.fixture
def world(fresh_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    from shared.config import get_settings
    from shared.storage import get_storage

    monkeypatch.setenv("ONBRAND_HOME", str(tmp_path))
    get_settings.cache_clear()
    get_storage.cache_clear()
    tenant, brand = Tenant(id=uuid.uuid4(), name="acme"), None
    with session_scope() as session:
        session.add(tenant)
        session.flush()
        brand = Brand(id=uuid.uuid4(), tenant_id=tenant.id, name="Stride", palette=["#E4572E"])
        session.add(brand)
    yield {"tenant_id": tenant.id, "brand_id": brand.id}
    get_settings.cache_clear()
    get_storage.cache_clear()


def context(
    world: dict[str, Any], stage: str, state: dict[str, Any], sizes: list[dict[str, int]] | None = None, **settings: Any
) -> StageContext:
    campaign = Campaign(
        id=uuid.uuid4(),
        tenant_id=world["tenant_id"],
        brand_id=world["brand_id"],
        brief="b",
        sizes=sizes or [{"width": 512, "height": 512}],
        safe_zones=[],
        state=state,
        round=0,
    )
    return StageContext(campaign, stage, 0, 0, Settings(**settings))


def product(w: int = 120, h: int = 200) -> Image.Image:
    arr = np.zeros((h, w, 4), np.uint8)
    arr[:, :, :3] = (30, 90, 160)
    arr[:, :, 3] = 255
    return Image.fromarray(arr, "RGBA")


def stored_cutout(world: dict[str, Any], image: Image.Image) -> str:
    key = campaign_key(world["tenant_id"], uuid.uuid4(), "segment/cutout.png")
    return save_png(key, image)


def planned_state(world: dict[str, Any], cutout: Image.Image) -> dict[str, Any]:
    return {
        "segment": outputs.segment(stored_cutout(world, cutout)),
        "scale": outputs.scale(0.45),
        "retrieve": outputs.retrieve(),
        "decompose": outputs.decompose([], ["urban street"]),
        "caption": outputs.caption("a shoe on an urban street", "blurry"),
    }


def test_a_full_bleed_product_photo_fails_segmentation_with_a_reason(world: dict[str, Any]) -> None:
    noise = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    key = campaign_key(world["tenant_id"], uuid.uuid4(), "upload.png")
    save_png(key, Image.fromarray(noise))
    asset = Asset(
        id=uuid.uuid4(),
        tenant_id=world["tenant_id"],
        brand_id=world["brand_id"],
        kind="product",
        sha256="0" * 64,
        content_type="image/png",
        width=256,
        height=256,
        byte_size=1,
        storage_key=key,
        thumb_key=key,
    )
    with session_scope() as session:
        session.add(asset)
    ctx = context(world, "segment", {"retrieve": outputs.retrieve(str(asset.id))})
    with pytest.raises(StageError) as failed:
        segment.run(ctx)
    assert failed.value.code == "segmentation_failed" and str(asset.id) in failed.value.message
    assert "segment" not in ctx.state_patch  # nothing stored for a mask that does not exist


def test_plan_skips_and_reports_a_canvas_the_product_cannot_fill(world: dict[str, Any]) -> None:
    ctx = context(
        world,
        "plan",
        planned_state(world, product(12, 20)),
        sizes=[{"width": 1920, "height": 1080}, {"width": 256, "height": 256}],
    )
    out = plan.run(ctx)
    planned = ctx.state_patch["plan"]
    assert out["skipped_canvases"] == 1 and planned["skipped_canvases"][0]["canvas"] == [1920, 1080]
    assert "upscaling is capped at 2x" in planned["skipped_canvases"][0]["reason"]
    assert {(lay["canvas_w"], lay["canvas_h"]) for lay in planned["layouts"]} == {(256, 256)}


def test_plan_with_no_canvas_left_fails_naming_each_canvas(world: dict[str, Any]) -> None:
    ctx = context(world, "plan", planned_state(world, product(12, 20)), sizes=[{"width": 1920, "height": 1080}])
    with pytest.raises(StageError) as failed:
        plan.run(ctx)
    assert failed.value.code == "no_layout_fits" and "1920x1080" in failed.value.message


def test_generate_with_a_missing_model_names_the_stage(world: dict[str, Any], tmp_path: Path) -> None:
    state = planned_state(world, product())
    plan_ctx = context(world, "plan", state)
    plan.run(plan_ctx)
    ctx = context(
        world,
        "generate",
        {**state, **plan_ctx.state_patch},
        generator="sd-inpaint",
        sd_model=str(tmp_path / "no-such-pipeline"),
    )
    with pytest.raises(StageError) as failed:
        generate.run(ctx)
    assert failed.value.code == "model_unavailable" and failed.value.message.startswith("generate: sd-inpaint")
    assert ctx.rows == []


def test_generate_with_the_compositor_records_integrity_and_generation(world: dict[str, Any]) -> None:
    state = planned_state(world, product())
    plan_ctx = context(world, "plan", state)
    plan.run(plan_ctx)
    ctx = context(world, "generate", {**state, **plan_ctx.state_patch})
    out = generate.run(ctx)
    rows = [r for r in ctx.rows if isinstance(r, Candidate)]
    assert out["candidates"] == len(rows) == 9 and out["generator"] == "compositor"
    for row in rows:
        assert row.integrity["exact_fraction"] == 1.0 and row.integrity["placement"] == row.placement
        assert row.integrity["product_sha256"] == row.integrity["layer_sha256"]
        assert row.generation["adapter"] == "compositor" and row.generation["cpu_seconds"] > 0
