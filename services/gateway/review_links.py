"""Review links: a signed, expiring, single-campaign token that opens the review page, so no API key
ever reaches a browser.

The token is `<link id hex>.<expiry unix>.<base64url HMAC-SHA256>` keyed by settings.secret_key; it is
shown once and never stored. A valid signature is not enough: the link row must exist, be unrevoked
and unexpired (revocation takes effect on the next request), and its campaign must still exist.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db.models import Campaign, ReviewLink

MAX_TTL = timedelta(days=30)


class LinkProblem(StrEnum):
    """Why a token does not open a page (each gets its own page and stable code)."""

    INVALID = "review_link_invalid"  # malformed, bad signature, or no such link
    EXPIRED = "review_link_expired"
    REVOKED = "review_link_revoked"


class LinkError(Exception):
    def __init__(self, problem: LinkProblem) -> None:
        super().__init__(problem.value)
        self.problem = problem


@dataclass(frozen=True)
class OpenLink:
    link: ReviewLink
    campaign: Campaign


def _signature(secret: str, link_id: uuid.UUID, expires: int) -> str:
    digest = hmac.new(secret.encode(), f"review-link:{link_id.hex}:{expires}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def token_for(link: ReviewLink, settings: Settings) -> str:
    expires = int(link.expires_at.timestamp())
    return f"{link.id.hex}.{expires}.{_signature(settings.secret_key, link.id, expires)}"


def create(
    session: Session, campaign: Campaign, reviewer: str, ttl: timedelta, settings: Settings
) -> tuple[ReviewLink, str]:
    """A new link for the campaign (the caller has checked the tenant owns it) and its token."""
    if not timedelta(minutes=1) <= ttl <= MAX_TTL:
        raise ValueError(f"ttl must be between 1 minute and {MAX_TTL.days} days")
    expires_at = datetime.now(UTC).replace(microsecond=0) + ttl
    link = ReviewLink(
        id=uuid.uuid4(),
        tenant_id=campaign.tenant_id,
        campaign_id=campaign.id,
        reviewer=reviewer.strip(),
        expires_at=expires_at,
    )
    session.add(link)
    session.flush()
    return link, token_for(link, settings)


def _parse(token: str, settings: Settings) -> tuple[uuid.UUID, int]:
    parts = token.split(".")
    if len(parts) != 3 or not parts[1].isdigit() or len(parts[0]) != 32:
        raise LinkError(LinkProblem.INVALID)
    try:
        link_id = uuid.UUID(hex=parts[0])
    except ValueError:
        raise LinkError(LinkProblem.INVALID) from None
    expires = int(parts[1])
    if not hmac.compare_digest(parts[2], _signature(settings.secret_key, link_id, expires)):
        raise LinkError(LinkProblem.INVALID)
    return link_id, expires


def resolve(session: Session, token: str, settings: Settings, *, touch: bool = True) -> OpenLink:
    """The link and campaign a token opens, or LinkError saying why not."""
    link_id, expires = _parse(token, settings)
    row = session.execute(
        select(ReviewLink, Campaign)
        .join(Campaign, (Campaign.id == ReviewLink.campaign_id) & (Campaign.tenant_id == ReviewLink.tenant_id))
        .where(ReviewLink.id == link_id)
    ).first()
    if row is None:
        raise LinkError(LinkProblem.INVALID)
    link, campaign = row
    now = datetime.now(UTC)
    if link.revoked_at is not None:
        raise LinkError(LinkProblem.REVOKED)
    if int(link.expires_at.timestamp()) != expires:
        raise LinkError(LinkProblem.INVALID)
    if link.expires_at <= now:
        raise LinkError(LinkProblem.EXPIRED)
    if touch:
        link.last_used_at = now
    return OpenLink(link, campaign)


def revoke(link: ReviewLink) -> None:
    if link.revoked_at is None:
        link.revoked_at = datetime.now(UTC)
