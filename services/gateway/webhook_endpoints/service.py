"""Webhook endpoints: tenant-wide receivers of campaign events, their delivery log, replays and tests."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.gateway.errors import conflict, not_found
from services.gateway.pagination import created_keys, paginate
from services.gateway.unit_of_work import enqueue
from services.gateway.webhook_endpoints.schemas import (
    AttemptRead,
    DeliveryRead,
    WebhookEndpointCreate,
    WebhookEndpointRead,
    WebhookEndpointUpdate,
)
from shared import key_cache, webhooks
from shared.config import Settings
from shared.db.models import OutboxStatus, WebhookAttempt, WebhookDelivery, WebhookEndpoint


def to_read(endpoint: WebhookEndpoint) -> WebhookEndpointRead:
    return WebhookEndpointRead(
        id=endpoint.id,
        url=endpoint.url,
        event_types=endpoint.event_types,
        description=endpoint.description,
        enabled=endpoint.enabled,
        disabled_at=endpoint.disabled_at,
        disabled_reason=endpoint.disabled_reason,
        failing_since=endpoint.failing_since,
        public_key=webhooks.public_key(endpoint.signing_key) if endpoint.signing_key else None,
        previous_secret_expires_at=endpoint.previous_secret_expires_at,
        created_at=endpoint.created_at,
    )


def create(session: Session, tenant_id: uuid.UUID, body: WebhookEndpointCreate) -> WebhookEndpoint:
    endpoint = WebhookEndpoint(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        url=str(body.url),
        secret=webhooks.new_secret(),
        event_types=list(dict.fromkeys(body.event_types)),
        description=body.description,
        enabled=True,
        signing_key=webhooks.new_signing_key() if body.v1a else None,
    )
    session.add(endpoint)
    session.flush()
    _announce(session)
    return endpoint


def get(session: Session, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, for_update: bool = False) -> WebhookEndpoint:
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.tenant_id == tenant_id)
    endpoint = session.scalar(stmt.with_for_update() if for_update else stmt)
    if endpoint is None:
        raise not_found("Webhook endpoint")
    return endpoint


def update(
    session: Session, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, body: WebhookEndpointUpdate
) -> WebhookEndpoint:
    endpoint = get(session, tenant_id, endpoint_id, for_update=True)
    if body.url is not None:
        endpoint.url = str(body.url)
    if body.event_types is not None:
        endpoint.event_types = list(dict.fromkeys(body.event_types))
    if body.description is not None:
        endpoint.description = body.description
    if body.enabled is not None:
        _set_enabled(endpoint, body.enabled)
    _announce(session)
    return endpoint


def _announce(session: Session) -> None:
    """Once this commits, gateways read the tenant's endpoints again: a campaign creation takes them from its
    process's cache (services/gateway/campaigns/tenant_config.py)."""
    key_cache.announce_change(session)


def _set_enabled(endpoint: WebhookEndpoint, enabled: bool) -> None:
    if enabled and not endpoint.enabled:  # a fresh start: the failure clock and the reason go
        endpoint.disabled_at = endpoint.disabled_reason = endpoint.failing_since = None
    elif not enabled and endpoint.enabled:
        endpoint.disabled_at, endpoint.disabled_reason = datetime.now(UTC), "disabled through the API"
    endpoint.enabled = enabled


def rotate_secret(
    session: Session, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, grace_seconds: int | None, settings: Settings
) -> WebhookEndpoint:
    endpoint = get(session, tenant_id, endpoint_id, for_update=True)
    grace = settings.webhook_rotation_grace_seconds if grace_seconds is None else grace_seconds
    webhooks.rotate(endpoint, datetime.now(UTC), grace)
    return endpoint


def delete(session: Session, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> None:
    # Its pending deliveries go with it (ON DELETE CASCADE): a removed receiver gets nothing more.
    session.delete(get(session, tenant_id, endpoint_id))
    _announce(session)


def list_page(
    session: Session, tenant_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[WebhookEndpoint], str | None]:
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)
    return paginate(session, stmt, created_keys(WebhookEndpoint), limit, cursor)


# ----------------------------------------------------------------------------- delivery log


def deliveries_page(
    session: Session, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, limit: int, cursor: str | None, status: str | None
) -> tuple[list[DeliveryRead], str | None]:
    get(session, tenant_id, endpoint_id)
    stmt = select(WebhookDelivery).where(
        WebhookDelivery.tenant_id == tenant_id, WebhookDelivery.endpoint_id == endpoint_id
    )
    if status is not None:
        stmt = stmt.where(WebhookDelivery.status == status)
    rows, next_cursor = paginate(session, stmt, created_keys(WebhookDelivery), limit, cursor)
    return _with_attempts(session, tenant_id, rows), next_cursor


def _with_attempts(session: Session, tenant_id: uuid.UUID, rows: list[WebhookDelivery]) -> list[DeliveryRead]:
    """The deliveries with their attempt logs, in one query for the whole page."""
    attempts: dict[uuid.UUID, list[AttemptRead]] = defaultdict(list)
    for a in session.scalars(
        select(WebhookAttempt)
        .where(WebhookAttempt.tenant_id == tenant_id, WebhookAttempt.delivery_id.in_([r.id for r in rows]))
        .order_by(WebhookAttempt.attempt)
    ):
        attempts[a.delivery_id].append(AttemptRead.model_validate(a, from_attributes=True))
    return [_delivery_read(r, attempts[r.id]) for r in rows]


def _delivery_read(row: WebhookDelivery, attempts: list[AttemptRead]) -> DeliveryRead:
    return DeliveryRead(
        id=row.id,
        event_id=row.event_id,
        event_type=row.event_type,
        campaign_id=row.campaign_id,
        status=row.status,
        attempts=row.attempts,
        next_attempt_at=row.next_attempt_at if row.status == OutboxStatus.PENDING else None,
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        replay_of=row.replay_of,
        created_at=row.created_at,
        delivered_at=row.delivered_at,
        attempt_log=attempts,
    )


def get_delivery(
    session: Session, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, delivery_id: uuid.UUID
) -> DeliveryRead:
    row = _delivery(session, tenant_id, endpoint_id, delivery_id)
    return _with_attempts(session, tenant_id, [row])[0]


def _delivery(
    session: Session, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, delivery_id: uuid.UUID
) -> WebhookDelivery:
    row = session.scalar(
        select(WebhookDelivery).where(
            WebhookDelivery.tenant_id == tenant_id,
            WebhookDelivery.endpoint_id == endpoint_id,
            WebhookDelivery.id == delivery_id,
        )
    )
    if row is None:
        raise not_found("Webhook delivery")
    return row


def _enabled(session: Session, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    endpoint = get(session, tenant_id, endpoint_id)
    if not endpoint.enabled:
        raise conflict("The endpoint is disabled; re-enable it (PATCH enabled=true) first.")
    return endpoint


def replay(session: Session, tenant_id: uuid.UUID, endpoint_id: uuid.UUID, delivery_id: uuid.UUID) -> DeliveryRead:
    """Send an event again, as a new delivery with the same event id (receivers deduplicate on it)."""
    endpoint = _enabled(session, tenant_id, endpoint_id)
    original = _delivery(session, tenant_id, endpoint_id, delivery_id)
    [row] = webhooks.outbox_rows(
        original.event_id,
        original.event_type,
        original.payload,
        tenant_id,
        original.campaign_id,
        [(endpoint.url, endpoint.id)],
    )
    row.replay_of = original.id
    return _queued(session, row)


def send_test(session: Session, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> DeliveryRead:
    endpoint = _enabled(session, tenant_id, endpoint_id)
    data = {
        "endpoint_id": str(endpoint.id),
        "message": "A test event from Onbrand: your endpoint is reachable and can verify our signatures.",
    }
    [row] = webhooks.outbox_rows(
        webhooks.new_event_id(), webhooks.TEST_EVENT, data, tenant_id, None, [(endpoint.url, endpoint.id)]
    )
    return _queued(session, row)


def _queued(session: Session, row: WebhookDelivery) -> DeliveryRead:
    session.add(row)
    session.flush()
    enqueue(session, "onbrand.send_webhook", row.id)
    return _delivery_read(row, [])
