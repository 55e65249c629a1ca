"""shared.costs: GPU-seconds per delivered image from a campaign's stage runs, and its price."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from shared.cli.campaigns import cost_line
from shared.config import Settings
from shared.costs import campaign_cost, cost_of
from shared.db.models import Campaign, Candidate, Result, StageRun, StageRunStatus
from shared.db.session import session_scope
from tests.factories import make_campaign

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _run(campaign: Campaign, stage: str, seconds: float | None, item: int = 0, rnd: int = 0) -> StageRun:
    started = T0 if seconds is not None else None
    return StageRun(
        tenant_id=campaign.tenant_id,
        campaign_id=campaign.id,
        stage=stage,
        round=rnd,
        item=item,
        status=StageRunStatus.SUCCEEDED if seconds is not None else StageRunStatus.PENDING,
        started_at=started,
        finished_at=T0 + timedelta(seconds=seconds) if seconds is not None else None,
    )


def _candidate(campaign: Campaign, key: str, generation: dict[str, object]) -> Candidate:
    return Candidate(tenant_id=campaign.tenant_id, campaign_id=campaign.id, layout_key=key, generation=generation)


def _seed(delivered: int) -> tuple[uuid.UUID, uuid.UUID]:
    campaign_id = uuid.UUID(make_campaign())
    with session_scope() as session:
        campaign = session.get(Campaign, campaign_id)
        assert campaign is not None
        session.add_all(
            [
                _run(campaign, "decompose", 30.0),  # llm queue: not GPU time
                _run(campaign, "segment", 1.5),
                _run(campaign, "plan", 0.5),
                _run(campaign, "generate", 20.0, item=0),
                _run(campaign, "generate", 10.0, item=1),
                _run(campaign, "generate", None, item=2),  # never started: nothing held
                _run(campaign, "qc", 8.0),
                _run(campaign, "generate", 6.0, rnd=1),  # a second attempt's GPU time counts too
                _run(campaign, "rank", 4.0),  # scoring queue
            ]
        )
        cands = [
            _candidate(campaign, "a", {"adapter": "sd-inpaint", "device": "cuda", "gpu_seconds": 2.25}),
            _candidate(campaign, "b", {"adapter": "sd-inpaint", "device": "cuda", "gpu_seconds": 1.75}),
            _candidate(campaign, "c", {"adapter": "compositor", "device": "cpu", "cpu_seconds": 0.5}),
        ]
        session.add_all(cands)
        session.flush()
        session.add_all(
            Result(tenant_id=campaign.tenant_id, campaign_id=campaign.id, candidate_id=cands[i].id, rank=i + 1)
            for i in range(delivered)
        )
        return campaign.tenant_id, campaign.id


def test_gpu_seconds_per_delivered_image_and_its_price(fresh_db: str) -> None:
    tenant_id, campaign_id = _seed(delivered=2)
    settings = Settings(gpu_price_usd_per_hour=3.6)
    with session_scope() as session:
        cost = campaign_cost(session, tenant_id, campaign_id, settings)
    # segment 1.5 + plan 0.5 + generate 20 + 10 + 6 + qc 8 = 46 GPU-seconds; decompose and rank are CPU queues
    assert cost.gpu_seconds == pytest.approx(46.0)
    assert cost.gpu_seconds_by_stage == pytest.approx({"generate": 36.0, "plan": 0.5, "qc": 8.0, "segment": 1.5})
    assert cost.delivered == 2
    assert cost.gpu_seconds_per_image == pytest.approx(23.0)
    assert cost.usd_per_image == pytest.approx(23.0 * 3.6 / 3600)  # 0.023 $
    assert cost.generation_seconds == pytest.approx(4.5)
    assert cost.devices == ["cpu", "cuda"]
    assert cost.to_json()["gpu_price_usd_per_hour"] == 3.6


def test_another_tenant_sees_nothing(fresh_db: str) -> None:
    _, campaign_id = _seed(delivered=1)
    with session_scope() as session:
        cost = campaign_cost(session, uuid.uuid4(), campaign_id, Settings())
    assert (cost.gpu_seconds, cost.delivered, cost.gpu_seconds_per_image, cost.usd_per_image) == (0, 0, None, None)


def test_nothing_delivered_has_no_price_per_image() -> None:
    cost = cost_of({"generate": 12.0}, delivered=0, price_per_hour=2.5)
    assert cost.gpu_seconds == 12.0
    assert cost.gpu_seconds_per_image is None and cost.usd_per_image is None


def test_default_price_is_an_h100_class_hour() -> None:
    price = Settings.model_fields["gpu_price_usd_per_hour"].default  # the code's default, whatever .env says
    assert price == 2.5
    assert cost_of({"qc": 3600.0}, 1, price).usd_per_image == 2.5


def test_the_cli_prints_the_reports_cost_when_there_is_one() -> None:
    cost = cost_of({"generate": 30.0, "qc": 15.0}, delivered=6, price_per_hour=2.5).to_json()
    line = cost_line({"cost": cost})
    assert line == "GPU time: 7.50 s per delivered image (45.0 s over 6) · $0.0052 per image at $2.5 per GPU-hour"
    assert cost_line({"cost": cost_of({"qc": 1.0}, 0, 2.5).to_json()}) is None  # nothing delivered
    assert cost_line({}) is None  # a gateway whose report has no cost
