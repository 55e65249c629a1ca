"""/v1/webhook-endpoints"""
from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from services.gateway.deps import SessionDep, SettingsDep, TenantDep
from services.gateway.pagination import CursorQuery, LimitQuery, Page
from services.gateway.webhook_endpoints import service
from services.gateway.webhook_endpoints.schemas import (
    WebhookEndpointCreate,
    WebhookEndpointCreated,
    WebhookEndpointRead,
)
from services.gateway.webhook_targets import check_target

router = APIRouter(prefix="/v1/webhook-endpoints", tags=["webhook-endpoints"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=WebhookEndpointCreated)
def create_webhook_endpoint(
    body: WebhookEndpointCreate, session: SessionDep, tenant_id: TenantDep, settings: SettingsDep
) -> WebhookEndpointCreated:
    check_target(body.url, "url", settings)
    endpoint = service.create(session, tenant_id, body)
    return WebhookEndpointCreated(**service.to_read(endpoint).model_dump(), secret=endpoint.secret)


@router.get("", response_model=Page[WebhookEndpointRead])
def list_webhook_endpoints(session: SessionDep, tenant_id: TenantDep, limit: LimitQuery = 20,
                           cursor: CursorQuery = None) -> Page[WebhookEndpointRead]:
    endpoints, next_cursor = service.list_page(session, tenant_id, limit, cursor)
    return Page[WebhookEndpointRead](items=[service.to_read(e) for e in endpoints], next_cursor=next_cursor)


@router.get("/{endpoint_id}", response_model=WebhookEndpointRead)
def get_webhook_endpoint(endpoint_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep) -> WebhookEndpointRead:
    return service.to_read(service.get(session, tenant_id, endpoint_id))


@router.delete("/{endpoint_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def delete_webhook_endpoint(endpoint_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep) -> Response:
    service.delete(session, tenant_id, endpoint_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
