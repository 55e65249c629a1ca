"""What a campaign cost in accelerator time: GPU-seconds per delivered image, and dollars per image at
``Settings.gpu_price_usd_per_hour``.

GPU-seconds are the wall time of the campaign's runs of the GPU-queue stages (shared.queue.GPU_STAGES: segment,
plan, generate, qc), from claim to finish, every round and review round: a GPU worker runs one task at a time, so
that is the time the campaign held a GPU, model or not. Dollars assume a GPU kept busy: idle time between
campaigns is the deployment's cost, not a campaign's. A retried run counts its last attempt only (a claim
overwrites started_at). On the embedded CPU defaults the "GPU" queues run on CPU workers: the figure is then the
time a GPU worker would be held for the same work with the CPU models, the generation records' `device` says so.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db.models import Candidate, Result, StageRun
from shared.queue import GPU_STAGES


@dataclass(frozen=True)
class CampaignCost:
    gpu_seconds: float  # GPU-queue stage runs, claim to finish
    delivered: int  # results, every review round
    gpu_seconds_per_image: float | None  # None until something was delivered
    usd_per_image: float | None
    gpu_price_usd_per_hour: float
    gpu_seconds_by_stage: dict[str, float] = field(default_factory=dict)
    # The generator's own time per the candidates' generation records (gpu_seconds, else cpu_seconds), and the
    # devices they name: how much of the GPU time was the model.
    generation_seconds: float = 0.0
    devices: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def campaign_cost(session: Session, tenant_id: uuid.UUID, campaign_id: uuid.UUID, settings: Settings) -> CampaignCost:
    """The campaign's GPU-seconds per delivered image and its price (three aggregate queries, tenant-scoped)."""
    by_stage = _gpu_seconds_by_stage(session, tenant_id, campaign_id)
    generation, devices = _generation(session, tenant_id, campaign_id)
    delivered = session.scalar(
        select(func.count()).select_from(Result).where(Result.tenant_id == tenant_id, Result.campaign_id == campaign_id)
    )
    return cost_of(by_stage, int(delivered or 0), settings.gpu_price_usd_per_hour, generation, devices)


def cost_of(
    by_stage: dict[str, float],
    delivered: int,
    price_per_hour: float,
    generation_seconds: float = 0.0,
    devices: list[str] | None = None,
) -> CampaignCost:
    """The arithmetic alone: per image = GPU-seconds / delivered; dollars = that x price / 3600."""
    total = sum(by_stage.values())
    per_image = total / delivered if delivered else None
    return CampaignCost(
        gpu_seconds=round(total, 3),
        delivered=delivered,
        gpu_seconds_per_image=None if per_image is None else round(per_image, 3),
        usd_per_image=None if per_image is None else round(per_image * price_per_hour / 3600, 6),
        gpu_price_usd_per_hour=price_per_hour,
        gpu_seconds_by_stage={stage: round(seconds, 3) for stage, seconds in sorted(by_stage.items())},
        generation_seconds=round(generation_seconds, 3),
        devices=sorted(devices or []),
    )


def _gpu_seconds_by_stage(session: Session, tenant_id: uuid.UUID, campaign_id: uuid.UUID) -> dict[str, float]:
    seconds = func.sum(func.extract("epoch", StageRun.finished_at - StageRun.started_at))
    rows = session.execute(
        select(StageRun.stage, seconds)
        .where(
            StageRun.tenant_id == tenant_id,
            StageRun.campaign_id == campaign_id,
            StageRun.stage.in_(GPU_STAGES),
            StageRun.started_at.is_not(None),
            StageRun.finished_at.is_not(None),
        )
        .group_by(StageRun.stage)
    ).all()
    return {stage: max(0.0, float(total or 0.0)) for stage, total in rows}


def _generation(session: Session, tenant_id: uuid.UUID, campaign_id: uuid.UUID) -> tuple[float, list[str]]:
    record = Candidate.generation
    seconds = func.coalesce(record["gpu_seconds"].as_float(), record["cpu_seconds"].as_float(), 0.0)
    device = func.coalesce(record["device"].as_string(), "unknown")
    rows = session.execute(
        select(device, func.sum(seconds))
        .where(Candidate.tenant_id == tenant_id, Candidate.campaign_id == campaign_id)
        .group_by(device)
    ).all()
    return sum(float(total or 0.0) for _, total in rows), [str(name) for name, _ in rows]
