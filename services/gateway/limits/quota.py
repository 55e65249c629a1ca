"""The tenant's quotas at campaign creation, as problem responses."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from services.gateway.errors import ProblemError
from services.gateway.unit_of_work import release_locks_before_flush
from shared import limits
from shared.config import Settings, get_settings


def admit_campaign(
    session: Session,
    tenant_id: uuid.UUID,
    campaign_id: uuid.UUID,
    products: int,
    sizes: int,
    settings: Settings | None = None,
    tenant_limits: limits.Limits | None = None,
) -> None:
    """Reserve the campaign's images in the usage ledger; with limits on, the database checks the concurrent-
    campaigns and images quotas when this transaction commits (shared.limits.reserve): commit it in refusals()."""
    settings = settings or get_settings()
    images = limits.expected_images(products, sizes, settings)
    own = None
    if settings.limits_enabled:
        own = tenant_limits or limits.tenant_limits(session, tenant_id, settings)
    limits.reserve(session, tenant_id, campaign_id, images, own)  # the ledger is kept when limits are off too
    if own is not None:
        release_locks_before_flush(session)


@contextmanager
def refusals() -> Iterator[None]:
    """A commit the quotas refused, as its problem: over the concurrent limit 429 concurrent_campaigns_limit (it
    frees up as campaigns finish); over an images quota 402 quota_exceeded with the period and its reset (it frees
    up only when the period ends). Nothing of the request was written."""
    try:
        yield
    except DBAPIError as exc:
        refused = limits.refusal(exc)
        if refused is None:
            raise
        if refused.code == "concurrent_campaigns_limit":
            raise ProblemError(
                429, refused.code, "Too many running campaigns", refused.detail, extra=refused.extra
            ) from exc
        raise ProblemError(402, refused.code, "Quota exceeded", refused.detail, extra=refused.extra) from exc
