"""Sending outbox rows (webhooks queue): one signed attempt per call, the retry scheduled in Postgres.

Every target goes through the egress guard (shared.egress): resolved once, refused when any address
is private unless ONBRAND_EGRESS_ALLOWLIST allows it, connected to the pinned address, redirects not
followed. The event id stays the same across retries. The row is locked (FOR UPDATE SKIP LOCKED) for
the whole attempt, so two workers never send it at once; a worker killed mid-attempt rolls back and
the redelivered task (or the dispatcher, once the lease lapses) sends it again: one recorded success.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import egress, logs, metrics, outbox, webhooks
from shared.config import Settings, get_settings
from shared.db.models import Campaign, OutboxStatus, WebhookAttempt, WebhookDelivery, WebhookEndpoint
from shared.db.session import session_scope
from shared.queue import send

log = logging.getLogger("onbrand.webhooks")
RESPONSE_LOG_BYTES = 2048


@dataclass
class Outcome:
    """What one HTTP attempt came to."""

    status_code: int | None
    error: str | None  # stable code + client-safe sentence; None on 2xx
    latency_ms: float
    body: str | None = None
    retry_after: str | None = None


def target_refused(url: str, settings: Settings) -> str | None:
    """Why this URL may not be called (a client-safe sentence), or None. Resolves the host once."""
    try:
        egress.pin(url, settings.egress_allowlist)
    except egress.EgressRefused as exc:
        return exc.detail
    return None


def _endpoint(session: Session, row: WebhookDelivery) -> WebhookEndpoint | None:
    return session.scalars(
        select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == row.tenant_id, WebhookEndpoint.id == row.endpoint_id)
    ).first()


def _signers(session: Session, row: WebhookDelivery, at: datetime) -> tuple[list[str], list[str]] | None:
    """Who signs: the endpoint's secrets (both during a rotation) or the campaign's own for its webhook_url."""
    if row.endpoint_id is not None:
        endpoint = _endpoint(session, row)
        return webhooks.endpoint_signers(endpoint, at) if endpoint is not None and endpoint.enabled else None
    campaign = session.scalars(
        select(Campaign).where(Campaign.tenant_id == row.tenant_id, Campaign.id == row.campaign_id)
    ).first()
    return ([campaign.webhook_secret], []) if campaign is not None and campaign.webhook_secret else None


def _lock(session: Session, delivery_id: str) -> WebhookDelivery | None:
    return session.scalars(
        select(WebhookDelivery).where(WebhookDelivery.id == uuid.UUID(delivery_id)).with_for_update(skip_locked=True)
    ).first()


def deliver(delivery_id: str, at: datetime | None = None) -> str:
    """Attempt one delivery if it is due: delivered | retry | failed | skipped."""
    outcome = _deliver(delivery_id, at)
    metrics.WEBHOOK_DELIVERIES.labels(outcome).inc()
    return outcome


def _deliver(delivery_id: str, at: datetime | None) -> str:
    settings, at = get_settings(), at or outbox.utcnow()
    with session_scope() as session:
        row = _lock(session, delivery_id)
        if row is None or not outbox.is_due(row, at):
            return "skipped"  # done, not yet due (a stale duplicate send) or in flight elsewhere
        logs.bind(tenant_id=row.tenant_id, campaign_id=row.campaign_id)
        signers = _signers(session, row, at)
        if signers is None:
            row.status, row.leased_until = OutboxStatus.FAILED, None
            row.last_error = "endpoint_disabled: endpoint disabled or deleted"
            return "failed"
        result, follow_ups = _record(session, row, _post(row, signers, settings), at, settings)
    for follow_up in follow_ups:  # after commit: an endpoint.disabled notice to the tenant's other endpoints
        send("onbrand.send_webhook", follow_up)
    return result


def _post(row: WebhookDelivery, signers: tuple[list[str], list[str]], settings: Settings) -> Outcome:
    body = webhooks.encode_body(row.event_type, row.payload, row.created_at.isoformat())
    headers = webhooks.signed_headers(signers[0], row.event_id, body, signing_keys=signers[1])
    started = time.monotonic()
    try:
        response = egress.post(
            row.url,
            content=body.encode(),
            headers=headers,
            timeout_s=settings.webhook_timeout_seconds,
            allowlist=settings.egress_allowlist,
            max_response_bytes=RESPONSE_LOG_BYTES,
        )
    except egress.EgressRefused as exc:  # refused, unreachable or timed out: code + client-safe detail only
        return Outcome(None, f"{exc.code}: {exc.detail}", _ms(started))
    ok = 200 <= response.status < 300
    return Outcome(
        response.status,
        None if ok else f"HTTP {response.status}",
        _ms(started),
        response.body.decode("utf-8", "replace"),
        response.headers.get("retry-after"),
    )


def _ms(started: float) -> float:
    return round((time.monotonic() - started) * 1000, 1)


def _record(
    session: Session, row: WebhookDelivery, result: Outcome, at: datetime, settings: Settings
) -> tuple[str, list[uuid.UUID]]:
    """Log the attempt, settle the row and the endpoint's health; (outcome, follow-up delivery ids)."""
    row.attempts += 1
    row.last_status_code, row.last_error, row.leased_until = result.status_code, result.error, None
    endpoint = _endpoint(session, row) if row.endpoint_id is not None else None
    follow_ups: list[uuid.UUID] = []
    if result.error is None:
        outcome, retry_in = _delivered(row, endpoint, at), None
    elif result.status_code == 410:  # Gone: the receiver asks us to stop
        outcome, retry_in = "failed", None
        follow_ups = _gone(session, row, endpoint, at)
    else:
        outcome, retry_in, follow_ups = _failed(session, row, endpoint, result, at, settings)
    session.add(
        WebhookAttempt(
            tenant_id=row.tenant_id,
            delivery_id=row.id,
            attempt=row.attempts,
            outcome=outcome,
            status_code=result.status_code,
            latency_ms=result.latency_ms,
            error=result.error,
            response_body=result.body,
            retry_in_seconds=retry_in,
        )
    )
    return outcome, follow_ups


def _delivered(row: WebhookDelivery, endpoint: WebhookEndpoint | None, at: datetime) -> str:
    row.status, row.delivered_at = OutboxStatus.DELIVERED, at
    if endpoint is not None:
        endpoint.failing_since = None
    return "delivered"


def _gone(session: Session, row: WebhookDelivery, endpoint: WebhookEndpoint | None, at: datetime) -> list[uuid.UUID]:
    row.status = OutboxStatus.FAILED
    if endpoint is None:
        return []
    follow_ups = webhooks.endpoint_disabled(session, endpoint, "the receiver answered 410 Gone", at)
    row.last_error = "HTTP 410: the receiver answered 410 Gone; endpoint disabled"
    return follow_ups


def _failed(
    session: Session,
    row: WebhookDelivery,
    endpoint: WebhookEndpoint | None,
    result: Outcome,
    at: datetime,
    settings: Settings,
) -> tuple[str, int | None, list[uuid.UUID]]:
    """Schedule the retry (Retry-After honoured on 429/503) or give up; disable a long-failing endpoint."""
    if endpoint is not None:
        endpoint.failing_since = endpoint.failing_since or at
        if at - endpoint.failing_since >= timedelta(seconds=settings.webhook_disable_after_seconds):
            days = settings.webhook_disable_after_seconds / 86400
            reason = f"every delivery failed for {days:g} days"
            follow_ups = webhooks.endpoint_disabled(session, endpoint, reason, at)
            row.last_error = f"{result.error}; endpoint disabled: {reason}"
            return "failed", None, follow_ups
    hint = outbox.retry_hint(result.status_code, result.retry_after, at)
    retry_in = outbox.settle_failure(row, at, settings.webhook_max_attempts, hint)
    if retry_in is None:
        log.warning(
            "webhook %s (%s) failed for good after %d attempts: %s", row.event_id, row.id, row.attempts, result.error
        )
        return "failed", None, []
    return "retry", retry_in, []


def dispatch_due(at: datetime | None = None) -> int:
    """Send the deliveries whose retry is due, and any whose send after commit was lost (beat)."""
    at = at or outbox.utcnow()
    lease = outbox.lease_seconds(get_settings().webhook_timeout_seconds)
    with session_scope() as session:
        due = outbox.claim_due(session, WebhookDelivery, at, lease)
    for delivery_id in due:
        send("onbrand.send_webhook", delivery_id)
    return len(due)
