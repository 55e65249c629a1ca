"""Sending outbox rows (webhooks queue). Signed per Standard Webhooks; retried with backoff.

First form: loopback/private targets need ONBRAND_WEBHOOK_ALLOW_LOOPBACK (issue F replaces
this check with the full SSRF guard). The event id stays the same across retries.
"""
from __future__ import annotations

import ipaddress
import logging
import random
import socket
import uuid
from datetime import timedelta
from urllib.parse import urlsplit

import httpx
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import webhooks
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
    """Why this URL may not be called, or None. Resolves the host once."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "only http and https URLs are allowed"
    if settings.webhook_allow_loopback:
        return None
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or 80, proto=socket.IPPROTO_TCP)
    except OSError:
        return "host does not resolve"
    for info in infos:
        addr = ipaddress.ip_address(info[4][0])
        if not addr.is_global:
            return "target address is not public"
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
        refused = target_refused(row.url, settings)
        code, error = (None, refused) if refused else _post(row, secret, settings)
        return _record(row, code, error, settings)


def _post(row: WebhookDelivery, secret: str, settings: Settings) -> tuple[int | None, str | None]:
    body = webhooks.encode_body(row.event_type, row.payload, row.created_at.isoformat())
    headers = webhooks.signed_headers(secret, row.event_id, body)
    try:
        with httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False) as client:
            response = client.post(row.url, content=body.encode(), headers=headers)
    except httpx.HTTPError as exc:
        return None, f"connection error ({type(exc).__name__})"  # no internal details echoed
    return response.status_code, None if response.is_success else f"HTTP {response.status_code}"


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
