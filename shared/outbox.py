"""Retry schedule and dispatch leases shared by the two outboxes: webhook deliveries and DAM pushes.

Rows are written in the transaction of the state change they announce. A row is sent once after
commit, and again by the beat's dispatcher when its scheduled retry is due. The schedule lives in
Postgres (`next_attempt_at`), not in Celery countdowns: Redis re-delivers a countdown task only after
visibility_timeout, and a worker restart must not lose or repeat a 10-hour wait.

`leased_until` is set whenever a send is made, so the dispatcher does not send a row again while the
first send is still queued or running; a send that was lost (or a worker that died) lets it lapse.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from shared.db.models import DamPush, OutboxStatus, WebhookDelivery

# The two outboxes' rows: the same status, attempt and lease columns.
OutboxRow = WebhookDelivery | DamPush

# Standard Webhooks' schedule: the wait before attempt n+1, after attempt n failed.
SCHEDULE = (0, 5, 5 * 60, 30 * 60, 2 * 3600, 5 * 3600, 10 * 3600, 14 * 3600, 20 * 3600, 24 * 3600)
JITTER = 0.1  # +-10 %: receivers coming back from an outage are not hit by every sender at once
MAX_RETRY_AFTER = 24 * 3600  # a receiver cannot park a delivery for longer than the schedule's longest wait


def utcnow() -> datetime:
    return datetime.now(UTC)


def retry_delay(attempts: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
    """Seconds to wait after the `attempts`-th attempt failed; None-safe for the last one (caller checks).

    A receiver's Retry-After (429/503) is honoured when it asks for longer than the schedule would wait.
    """
    base = SCHEDULE[min(attempts, len(SCHEDULE) - 1)]
    delay = base * (rng or random).uniform(1 - JITTER, 1 + JITTER)
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


RETRY_AFTER_STATUSES = frozenset({429, 503})  # the statuses whose Retry-After a sender honours


def settle_failure(row: OutboxRow, at: datetime, max_attempts: int, retry_after: float | None = None) -> int | None:
    """After a failed (and counted) attempt: mark the row failed for good, or schedule its retry.
    Returns the wait in seconds, or None when it gave up."""
    if row.attempts >= max_attempts:
        row.status = OutboxStatus.FAILED
        return None
    wait = int(round(retry_delay(row.attempts, retry_after)))
    row.next_attempt_at = at + timedelta(seconds=wait)
    return wait


def retry_hint(status_code: int | None, header: str | None, at: datetime) -> float | None:
    """The receiver's Retry-After in seconds, honoured on 429 and 503 only."""
    return parse_retry_after(header, at) if status_code in RETRY_AFTER_STATUSES else None


def parse_retry_after(value: str | None, at: datetime) -> float | None:
    """Retry-After as seconds: delta-seconds or an HTTP-date (RFC 9110 10.2.3); None when absent/invalid."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - at).total_seconds())


def lease_seconds(timeout_s: float) -> float:
    """How long a sent row is left alone: the attempt's time limit plus room for a queue backlog."""
    return timeout_s + 60.0


def claim_due(
    session: Session, model: type[OutboxRow], at: datetime, lease_s: float, limit: int = 500
) -> list[uuid.UUID]:
    """Ids of pending rows whose attempt is due and not leased; leases them. Concurrent dispatchers
    (two beats by mistake) skip each other's rows instead of sending them twice."""
    due = (
        select(model.id)
        .where(
            model.status == OutboxStatus.PENDING,
            model.next_attempt_at <= at,
            (model.leased_until.is_(None)) | (model.leased_until < at),
        )
        .order_by(model.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    ids = list(session.scalars(due))
    if ids:
        session.execute(update(model).where(model.id.in_(ids)).values(leased_until=at + timedelta(seconds=lease_s)))
    return ids


def is_due(row: OutboxRow, at: datetime) -> bool:
    """A pending row whose attempt time has come (a stale duplicate send finds it not due)."""
    return row.status == OutboxStatus.PENDING and row.next_attempt_at <= at + timedelta(seconds=1)
