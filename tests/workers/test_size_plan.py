"""Each requested size is planned on its own canvas (plan stage, real database and object store): its own
scale and grid, and its preset's platform safe zones kept free on that canvas only, next to the campaign's
own safe zones on every canvas."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from shared.config import Settings
from shared.db.models import Brand, Campaign, Tenant
from shared.db.session import session_scope
from shared.presets import PRESETS
from shared.storage import campaign_key
from tests import stage_outputs as outputs
from workers.engine.context import StageContext
from workers.pipeline import plan
from workers.pipeline.common import save_png

STORY = {"preset": "story", "width": 1080, "height": 1920}
SQUARE = {"aspect": "1:1", "width": 1080, "height": 1080}


@pytest.fixture
def world(fresh_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    from shared.config import get_settings
    from shared.storage import get_storage

    monkeypatch.setenv("ONBRAND_HOME", str(tmp_path))
    get_settings.cache_clear()
    get_storage.cache_clear()
    tenant = Tenant(id=uuid.uuid4(), name="acme")
    with session_scope() as session:
        session.add(tenant)
        session.flush()
        brand = Brand(id=uuid.uuid4(), tenant_id=tenant.id, name="Stride", palette=["#E4572E"])
        session.add(brand)
    yield {"tenant_id": tenant.id, "brand_id": brand.id}
    get_settings.cache_clear()
    get_storage.cache_clear()


def planned(world: dict[str, Any], sizes: list[dict[str, Any]], zones: list[dict[str, Any]]) -> dict[str, Any]:
    arr = np.zeros((400, 240, 4), np.uint8)
    arr[:, :, :3], arr[:, :, 3] = (30, 90, 160), 255
    key = save_png(campaign_key(world["tenant_id"], uuid.uuid4(), "segment/cutout.png"), Image.fromarray(arr, "RGBA"))
    state = {"segment": outputs.segment(key), "scale": outputs.scale(0.3), "retrieve": outputs.retrieve()}
    campaign = Campaign(
        id=uuid.uuid4(),
        tenant_id=world["tenant_id"],
        brand_id=world["brand_id"],
        brief="b",
        sizes=sizes,
        safe_zones=zones,
        state=state,
        round=0,
    )
    ctx = StageContext(campaign, "plan", 0, 0, Settings())
    plan.run(ctx)
    return dict(ctx.state_patch["plan"])


def _overlaps(lay: dict[str, Any], zone: Any) -> bool:
    x0, y0 = zone.x * lay["canvas_w"], zone.y * lay["canvas_h"]
    x1, y1 = x0 + zone.width * lay["canvas_w"], y0 + zone.height * lay["canvas_h"]
    return lay["x"] < x1 and x0 < lay["x"] + lay["width"] and lay["y"] < y1 and y0 < lay["y"] + lay["height"]


def test_each_size_is_planned_on_its_own_canvas_with_its_preset_zones(world: dict[str, Any]) -> None:
    out = planned(world, [SQUARE, STORY], [])
    by_canvas: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for lay in out["layouts"]:
        by_canvas.setdefault((lay["canvas_w"], lay["canvas_h"]), []).append(lay)
    square, story = by_canvas[(1080, 1080)], by_canvas[(1080, 1920)]
    assert len(square) == 27  # no zone on the square feed: the whole 3x3 grid at 3 rotations
    # the story's header and reply bar are kept free: only layouts clear of both, and some were dropped for them
    zones = PRESETS["story"].safe_zones
    assert story and not any(_overlaps(lay, z) for lay in story for z in zones)
    assert out["safe_zone_exclusions"] == {"1080x1920": 27 - len(story)}
    assert [z["label"] for z in out["canvas_safe_zones"]["1080x1920"]] == ["platform-header", "platform-footer"]
    assert "1080x1080" not in out["canvas_safe_zones"]
    # one scale per canvas, each fitted to its own canvas (the share of the canvas's tighter side)
    assert len({lay["scale"] for lay in square}) == 1 and len({lay["scale"] for lay in story}) == 1
    (sq_scale,), (st_scale,) = {lay["scale"] for lay in square}, {lay["scale"] for lay in story}
    assert sq_scale == pytest.approx(0.3 * min(1080 / 240, 1080 / 400), rel=1e-3)
    assert st_scale == pytest.approx(0.3 * min(1080 / 240, 1920 / 400), rel=1e-3)
    # the grid is the story canvas's own: its ground lines lie inside its height, below the square's
    assert max(lay["ground_y"] for lay in story) > 1080 >= max(lay["ground_y"] for lay in square)


def test_campaign_zones_apply_to_every_canvas_and_preset_zones_to_their_own(world: dict[str, Any]) -> None:
    left = {"label": "logo", "x": 0.0, "y": 0.0, "width": 0.3, "height": 1.0}
    out = planned(world, [SQUARE, STORY], [left])
    assert not any(lay["x"] < 0.3 * lay["canvas_w"] for lay in out["layouts"])
    assert [z["label"] for z in out["canvas_safe_zones"]["1080x1080"]] == ["logo"]
    assert [z["label"] for z in out["canvas_safe_zones"]["1080x1920"]] == ["logo", "platform-header", "platform-footer"]
