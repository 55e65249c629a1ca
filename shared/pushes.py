"""Queueing DAM pushes (the dam_pushes outbox): shared by the deliver stage (brands that push on completion)
and the review API (brands that push on approval). The upload itself is workers/jobs/push.py."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from shared import outbox
from shared.config import get_settings
from shared.db.models import (
    Brand,
    Campaign,
    DamPush,
    DamPushPolicy,
    DeliveryTarget,
    OutboxStatus,
    Result,
    ResultDecision,
)

TASK = "onbrand.push_results"


def policy(session: Session, campaign: Campaign) -> DamPushPolicy:
    """The campaign's brand's DAM push policy (on_completion when the brand row is gone)."""
    found = session.scalar(
        select(Brand.dam_push).where(Brand.tenant_id == campaign.tenant_id, Brand.id == campaign.brand_id)
    )
    return DamPushPolicy(found) if found is not None else DamPushPolicy.ON_COMPLETION


def queue_pushes(session: Session, campaign: Campaign, approved_only: bool) -> list[uuid.UUID]:
    """Outbox rows for a campaign with results of its current review round (approved ones only when
    `approved_only`); their ids. Sent right after commit, hence leased now."""
    if not _has_results(session, campaign, approved_only):
        return []
    at, settings = outbox.utcnow(), get_settings()
    lease = at + timedelta(seconds=outbox.lease_seconds(settings.dam_push_timeout_seconds))
    rows = [_new_push(campaign, "s3", target_id, at, lease) for target_id in _target_ids(session, campaign)]
    if campaign.push_urls:
        rows.append(_new_push(campaign, "presigned", None, at, lease))
    session.add_all(rows)
    session.flush()
    return [row.id for row in rows]


def _has_results(session: Session, campaign: Campaign, approved_only: bool) -> bool:
    stmt = select(func.count()).select_from(Result).where(Result.of_current_round(campaign))
    if approved_only:
        stmt = stmt.where(Result.decision == ResultDecision.APPROVED)
    return bool(session.scalar(stmt))


def _target_ids(session: Session, campaign: Campaign) -> list[uuid.UUID]:
    return list(
        session.scalars(
            select(DeliveryTarget.id)
            .where(
                DeliveryTarget.tenant_id == campaign.tenant_id,
                DeliveryTarget.brand_id == campaign.brand_id,
                DeliveryTarget.enabled.is_(True),
            )
            .order_by(DeliveryTarget.created_at, DeliveryTarget.id)
        )
    )


def _new_push(campaign: Campaign, kind: str, target_id: uuid.UUID | None, at: datetime, lease: datetime) -> DamPush:
    return DamPush(
        id=uuid.uuid4(),
        tenant_id=campaign.tenant_id,
        campaign_id=campaign.id,
        target_id=target_id,
        kind=kind,
        status=OutboxStatus.PENDING,
        attempts=0,
        next_attempt_at=at,
        leased_until=lease,
        objects=[],
    )
