"""/v1/webhook-endpoints: receivers, secret rotation, the delivery log, replays and test events."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status

from services.gateway.deps import SessionDep, SettingsDep, TenantDep
from services.gateway.pagination import CursorQuery, LimitQuery, Page
from services.gateway.webhook_endpoints import service
from services.gateway.webhook_endpoints.schemas import (
    DeliveryRead,
    DeliveryStatusQuery,
    RotateSecret,
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointRead,
    WebhookEndpointUpdate,
)
from services.gateway.webhook_targets import check_target
from shared.db.models import WebhookEndpoint

router = APIRouter(prefix="/v1/webhook-endpoints", tags=["webhook-endpoints"])


def _with_secret(endpoint: WebhookEndpoint) -> WebhookEndpointCreated:
    return WebhookEndpointCreated(**service.to_read(endpoint).model_dump(), secret=endpoint.secret)


@router.post("", status_code=status.HTTP_201_CREATED, response_model=WebhookEndpointCreated)
def create_webhook_endpoint(
    body: WebhookEndpointCreate, session: SessionDep, tenant_id: TenantDep, settings: SettingsDep
) -> WebhookEndpointCreated:
    check_target(body.url, "url", settings)
    return _with_secret(service.create(session, tenant_id, body))


@router.get("", response_model=Page[WebhookEndpointRead])
def list_webhook_endpoints(
    session: SessionDep, tenant_id: TenantDep, limit: LimitQuery = 20, cursor: CursorQuery = None
) -> Page[WebhookEndpointRead]:
    endpoints, next_cursor = service.list_page(session, tenant_id, limit, cursor)
    return Page[WebhookEndpointRead](items=[service.to_read(e) for e in endpoints], next_cursor=next_cursor)


@router.get("/{endpoint_id}", response_model=WebhookEndpointRead)
def get_webhook_endpoint(endpoint_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep) -> WebhookEndpointRead:
    return service.to_read(service.get(session, tenant_id, endpoint_id))


@router.patch("/{endpoint_id}", response_model=WebhookEndpointRead)
def update_webhook_endpoint(
    endpoint_id: uuid.UUID,
    body: WebhookEndpointUpdate,
    session: SessionDep,
    tenant_id: TenantDep,
    settings: SettingsDep,
) -> WebhookEndpointRead:
    if body.url is not None:
        check_target(body.url, "url", settings)
    return service.to_read(service.update(session, tenant_id, endpoint_id, body))


@router.delete("/{endpoint_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def delete_webhook_endpoint(endpoint_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep) -> Response:
    service.delete(session, tenant_id, endpoint_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{endpoint_id}/rotate-secret", response_model=WebhookEndpointCreated)
def rotate_webhook_secret(
    endpoint_id: uuid.UUID,
    session: SessionDep,
    tenant_id: TenantDep,
    settings: SettingsDep,
    body: RotateSecret | None = None,
) -> WebhookEndpointCreated:
    """A new secret (and v1a key). The old one keeps signing alongside it for the grace period."""
    grace = body.grace_period_seconds if body is not None else None
    return _with_secret(service.rotate_secret(session, tenant_id, endpoint_id, grace, settings))


@router.post("/{endpoint_id}/test", status_code=status.HTTP_202_ACCEPTED, response_model=DeliveryRead)
def send_test_event(endpoint_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep) -> DeliveryRead:
    """Queue a `webhook.test` event to this endpoint; follow it in the delivery log."""
    return service.send_test(session, tenant_id, endpoint_id)


@router.get("/{endpoint_id}/deliveries", response_model=Page[DeliveryRead])
def list_deliveries(
    endpoint_id: uuid.UUID,
    session: SessionDep,
    tenant_id: TenantDep,
    limit: LimitQuery = 20,
    cursor: CursorQuery = None,
    status_filter: Annotated[DeliveryStatusQuery | None, Query(alias="status")] = None,
) -> Page[DeliveryRead]:
    """Deliveries to this endpoint, oldest first, each with its attempt log."""
    items, next_cursor = service.deliveries_page(session, tenant_id, endpoint_id, limit, cursor, status_filter)
    return Page[DeliveryRead](items=items, next_cursor=next_cursor)


@router.get("/{endpoint_id}/deliveries/{delivery_id}", response_model=DeliveryRead)
def get_delivery(
    endpoint_id: uuid.UUID, delivery_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep
) -> DeliveryRead:
    return service.get_delivery(session, tenant_id, endpoint_id, delivery_id)


@router.post(
    "/{endpoint_id}/deliveries/{delivery_id}/replay", status_code=status.HTTP_202_ACCEPTED, response_model=DeliveryRead
)
def replay_delivery(
    endpoint_id: uuid.UUID, delivery_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep
) -> DeliveryRead:
    """Send the event again (same event id, new delivery); works for delivered and failed ones alike."""
    return service.replay(session, tenant_id, endpoint_id, delivery_id)
