"""Sending outbox rows (webhooks queue). Signed per Standard Webhooks; retried with backoff.

Every target goes through the egress guard (shared.egress): resolved once, refused when any
address is private unless ONBRAND_EGRESS_ALLOWLIST allows it, connected to the pinned address,
redirects not followed. The event id stays the same across retries.
"""
from __future__ import annotations

import logging
import random
import uuid
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import egress, webhooks
from shared.config import Settings, get_settings
from shared.db.models import Campaign, WebhookDelivery, WebhookEndpoint
from shared.db.session import session_scope
from shared.queue import send
from workers.stages.runner import now

log = logging.getLogger("onbrand.webhooks")
# Standard Webhooks' suggested schedule (seconds after the previous attempt), first ones shortened
# to keep first-form retries inside a worker's patience; issue F moves long waits to Postgres.
SCHEDULE = (0, 5, 30, 120, 600, 1800, 3600, 7200)


def target_refused(url: str, settings: Settings) -> str | None:
    """Why this URL may not be called (a client-safe sentence), or None. Resolves the host once."""
    try:
        egress.pin(url, settings.egress_allowlist)
    except egress.EgressRefused as exc:
        return exc.detail
    return None


def _secret(session: Session, row: WebhookDelivery) -> str | None:
    """The signing secret: the endpoint's, or the campaign's own for its webhook_url."""
    if row.endpoint_id is not None:
        endpoint = session.scalars(select(WebhookEndpoint).where(
            WebhookEndpoint.tenant_id == row.tenant_id, WebhookEndpoint.id == row.endpoint_id)).first()
        return endpoint.secret if endpoint is not None and endpoint.enabled else None
    campaign = session.scalars(select(Campaign).where(
        Campaign.tenant_id == row.tenant_id, Campaign.id == row.campaign_id)).first()
    return campaign.webhook_secret if campaign is not None else None


def deliver(delivery_id: str) -> tuple[str, int | None]:
    """Attempt one delivery. Returns (outcome, seconds until retry or None)."""
    settings = get_settings()
    with session_scope() as session:
        row = session.scalars(select(WebhookDelivery).where(WebhookDelivery.id == uuid.UUID(delivery_id))
                              .with_for_update(skip_locked=True)).first()
        if row is None or row.status != "pending":
            return "skipped", None
        secret = _secret(session, row)
        if secret is None:
            row.status, row.last_error = "failed", "endpoint disabled or deleted"
            return "failed", None
        code, error = _post(row, secret, settings)
        return _record(row, code, error, settings)


def _post(row: WebhookDelivery, secret: str, settings: Settings) -> tuple[int | None, str | None]:
    """(status code, error or None). The guard pins the address it checked, so a name cannot
    resolve to a public address for the check and to a private one for the request."""
    body = webhooks.encode_body(row.event_type, row.payload, row.created_at.isoformat())
    headers = webhooks.signed_headers(secret, row.event_id, body)
    try:
        response = egress.post(row.url, content=body.encode(), headers=headers,
                               timeout_s=settings.webhook_timeout_seconds, allowlist=settings.egress_allowlist)
    except egress.EgressRefused as exc:  # refused, unreachable or timed out: code + client-safe detail only
        return None, f"{exc.code}: {exc.detail}"
    return response.status, None if 200 <= response.status < 300 else f"HTTP {response.status}"


def _record(row: WebhookDelivery, code: int | None, error: str | None, settings: Settings) -> tuple[str, int | None]:
    row.attempts += 1
    row.last_status_code, row.last_error = code, error
    if error is None:
        row.status, row.delivered_at = "delivered", now()
        return "delivered", None
    if row.attempts >= min(settings.webhook_max_attempts, len(SCHEDULE)):
        row.status = "failed"
        log.warning("webhook %s to %s failed for good: %s", row.event_id, row.url, error)
        return "failed", None
    delay = int(SCHEDULE[row.attempts] * random.uniform(0.9, 1.1)) + 1  # jitter spreads retry storms
    row.next_attempt_at = now() + timedelta(seconds=delay)
    return "retry", delay


def sweep() -> int:
    """Re-send pending deliveries that are overdue (their send after commit may have been lost)."""
    with session_scope() as session:
        due = session.scalars(select(WebhookDelivery.id).where(
            WebhookDelivery.status == "pending", WebhookDelivery.next_attempt_at < now() - timedelta(seconds=60)
        ).limit(500)).all()
    for delivery_id in due:
        send("onbrand.send_webhook", delivery_id)
    return len(due)
