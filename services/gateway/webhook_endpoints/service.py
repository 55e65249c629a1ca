"""Webhook endpoints: tenant-wide receivers of campaign events."""
from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.gateway.errors import not_found
from services.gateway.pagination import created_keys, paginate
from services.gateway.webhook_endpoints.schemas import WebhookEndpointCreate, WebhookEndpointRead
from shared.db.models import WebhookEndpoint
from shared.webhooks import new_secret


def to_read(endpoint: WebhookEndpoint) -> WebhookEndpointRead:
    return WebhookEndpointRead(id=endpoint.id, url=endpoint.url, event_types=endpoint.event_types,
                               description=endpoint.description, enabled=endpoint.enabled,
                               created_at=endpoint.created_at)


def create(session: Session, tenant_id: uuid.UUID, body: WebhookEndpointCreate) -> WebhookEndpoint:
    endpoint = WebhookEndpoint(id=uuid.uuid4(), tenant_id=tenant_id, url=str(body.url), secret=new_secret(),
                               event_types=list(dict.fromkeys(body.event_types)), description=body.description,
                               enabled=True)
    session.add(endpoint)
    session.flush()
    return endpoint


def get(session: Session, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> WebhookEndpoint:
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id, WebhookEndpoint.tenant_id == tenant_id)
    endpoint = session.scalar(stmt)
    if endpoint is None:
        raise not_found("Webhook endpoint")
    return endpoint


def delete(session: Session, tenant_id: uuid.UUID, endpoint_id: uuid.UUID) -> None:
    # Its pending deliveries go with it (ON DELETE CASCADE): a removed receiver gets nothing more.
    session.delete(get(session, tenant_id, endpoint_id))


def list_page(
    session: Session, tenant_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[WebhookEndpoint], str | None]:
    stmt = select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)
    return paginate(session, stmt, created_keys(WebhookEndpoint), limit, cursor)
