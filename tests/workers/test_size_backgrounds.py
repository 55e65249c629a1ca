"""Each ad size gets the background that suits its aspect (workers.pipeline.retrieve.fit_backgrounds): among the
backgrounds about as relevant as the best one, the one whose aspect is closest to the canvas's."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from shared.config import get_settings
from shared.db.models import Asset, Campaign
from shared.db.session import session_scope
from tests.factories import make_campaign
from workers.engine.context import StageContext
from workers.jobs.feedback import shown_backgrounds
from workers.pipeline.outputs import Entity, Match, RetrieveOutput
from workers.pipeline.retrieve import BACKGROUND_SCORE_MARGIN, choose_background, fit_backgrounds

LANDSCAPE, PORTRAIT, SQUARE = "landscape", "portrait", "square"


def test_each_canvas_gets_the_background_closest_to_its_aspect() -> None:
    aspects = {LANDSCAPE: 1.5, PORTRAIT: 0.6, SQUARE: 1.0}
    scores = {LANDSCAPE: 0.8, PORTRAIT: 0.78, SQUARE: 0.79}
    assert choose_background(aspects, scores, 1080 / 1920) == PORTRAIT  # a 9:16 story
    assert choose_background(aspects, scores, 1.0) == SQUARE
    assert choose_background(aspects, scores, 1200 / 628) == LANDSCAPE  # a 1.91:1 link
    # as far in log ratio (2:1 and 1:2 around 1:1): the higher score wins
    assert choose_background({"wide": 2.0, "tall": 0.5}, {"wide": 0.7, "tall": 0.75}, 1.0) == "tall"
    assert choose_background({}, {}, 1.0) is None


def _asset(session: Any, campaign: Campaign, width: int, height: int) -> str:
    asset = Asset(
        tenant_id=campaign.tenant_id,
        kind="background",
        sha256=uuid.uuid4().hex,
        content_type="image/png",
        width=width,
        height=height,
        byte_size=1,
        storage_key="k",
        thumb_key="t",
    )
    session.add(asset)
    session.flush()
    return str(asset.id)


def test_fit_backgrounds_names_only_the_canvases_another_close_background_suits_better(fresh_db: str) -> None:
    cid = make_campaign()
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(cid))
        assert campaign is not None
        campaign.sizes = [
            {"width": 1024, "height": 1024},
            {"width": 1080, "height": 1920},
            {"width": 1200, "height": 628},
        ]
        landscape, portrait, tall_but_worse = (
            _asset(session, campaign, 1600, 1000),
            _asset(session, campaign, 900, 1600),
            _asset(session, campaign, 600, 1200),
        )
        session.flush()
        session.expunge(campaign)
    best = Match(asset_id=landscape, title="street", score=0.8, parts={})
    found = [
        Entity(
            text="a street",
            kind="background",
            boost=None,
            matches=[
                best,
                Match(asset_id=portrait, title="street, portrait", score=0.8 - BACKGROUND_SCORE_MARGIN / 2, parts={}),
                # closer still to 9:16, but not about as relevant: never chosen
                Match(asset_id=tall_but_worse, title="a field", score=0.8 - 2 * BACKGROUND_SCORE_MARGIN, parts={}),
            ],
        )
    ]
    ctx = StageContext(campaign, "retrieve", 0, 0, get_settings())
    with session_scope() as session:
        fitted = fit_backgrounds(session, ctx, found, best)
    # the square is closer to the landscape (log 1.6) than to the portrait (log 1.78): it keeps the best one
    assert fitted == {"1080x1920": portrait}

    output = RetrieveOutput.model_validate(
        {
            "product_asset_id": "p",
            "product_title": "",
            "product_source": "named",
            "product_score": None,
            "background_asset_id": landscape,
            "background_caption": "street",
            "background_score": 0.8,
            "background_reason": None,
            "references": [],
            "reference_kpi": "ctr",
            "entities": [],
            "model": "m",
            "min_score": 0.3,
            "backgrounds_by_size": fitted,
        }
    )
    assert output.background_for((1080, 1920)) == portrait and output.background_for((1200, 628)) == landscape
    assert output.background_ids() == [landscape, portrait]
    # "another background" in a review round excludes every background the results were shown on
    shown = Campaign(state={"retrieve": output.model_dump(mode="json")})
    assert shown_backgrounds(shown) == [landscape, portrait]


@pytest.mark.parametrize("close", [0, 1])
def test_with_one_close_background_every_canvas_uses_it(fresh_db: str, close: int) -> None:
    cid = make_campaign()
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(cid))
        assert campaign is not None
        campaign.sizes = [{"width": 1080, "height": 1920}]
        best_id = _asset(session, campaign, 1600, 1000)
        other = _asset(session, campaign, 900, 1600)
        session.flush()
        session.expunge(campaign)
    best = Match(asset_id=best_id, title="", score=0.8, parts={})
    far = Match(asset_id=other, title="", score=0.8 - 3 * BACKGROUND_SCORE_MARGIN, parts={})
    found = [Entity(text="x", kind="background", boost=None, matches=[best, far][: close + 1])]
    with session_scope() as session:
        assert fit_backgrounds(session, StageContext(campaign, "retrieve", 0, 0, get_settings()), found, best) == {}
