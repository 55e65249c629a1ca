"""The tenant's quotas at campaign creation, as problem responses."""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from services.gateway.errors import ProblemError
from shared import limits
from shared.config import Settings, get_settings


def admit_campaign(
    session: Session,
    tenant_id: uuid.UUID,
    campaign_id: uuid.UUID,
    products: int,
    sizes: int,
    settings: Settings | None = None,
) -> None:
    """Check the concurrent-campaigns and images quotas of the campaign just inserted, under the tenant's
    lock, and reserve its images in the usage ledger.

    Over the concurrent limit: 429 concurrent_campaigns_limit (it frees up as campaigns finish); over an
    images quota: 402 quota_exceeded with the period and its reset (it frees up only when the period ends)."""
    settings = settings or get_settings()
    images = limits.expected_images(products, sizes, settings)
    if settings.limits_enabled:
        _admit(session, tenant_id, campaign_id, images, settings)
    limits.reserve(session, tenant_id, campaign_id, images)  # the ledger is kept when limits are off too


def _admit(session: Session, tenant_id: uuid.UUID, campaign_id: uuid.UUID, images: int, settings: Settings) -> None:
    try:
        limits.admit(session, tenant_id, campaign_id, images, settings)
    except limits.LimitExceeded as exc:
        if exc.code == "concurrent_campaigns_limit":
            raise ProblemError(429, exc.code, "Too many running campaigns", exc.detail, extra=exc.extra) from exc
        raise ProblemError(402, exc.code, "Quota exceeded", exc.detail, extra=exc.extra) from exc
