"""/v1/brands/{brand_id}/delivery-targets"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from services.gateway.delivery_targets import service
from services.gateway.delivery_targets.schemas import DeliveryTargetCreate, DeliveryTargetRead
from services.gateway.deps import SessionDep, SettingsDep, TenantDep
from services.gateway.pagination import CursorQuery, LimitQuery, Page
from services.gateway.webhook_targets import check_target

router = APIRouter(prefix="/v1/brands/{brand_id}/delivery-targets", tags=["delivery-targets"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DeliveryTargetRead)
def create_delivery_target(
    brand_id: uuid.UUID, body: DeliveryTargetCreate, session: SessionDep, tenant_id: TenantDep, settings: SettingsDep
) -> DeliveryTargetRead:
    if body.endpoint_url is not None:  # a literal private address is refused now; a name, at push time
        check_target(body.endpoint_url, "endpoint_url", settings, "S3 endpoint URL")
    return service.to_read(service.create(session, tenant_id, brand_id, body))


@router.get("", response_model=Page[DeliveryTargetRead])
def list_delivery_targets(
    brand_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep, limit: LimitQuery = 20, cursor: CursorQuery = None
) -> Page[DeliveryTargetRead]:
    targets, next_cursor = service.list_page(session, tenant_id, brand_id, limit, cursor)
    return Page[DeliveryTargetRead](items=[service.to_read(t) for t in targets], next_cursor=next_cursor)


@router.get("/{target_id}", response_model=DeliveryTargetRead)
def get_delivery_target(
    brand_id: uuid.UUID, target_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep
) -> DeliveryTargetRead:
    return service.to_read(service.get(session, tenant_id, brand_id, target_id))


@router.delete("/{target_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def delete_delivery_target(
    brand_id: uuid.UUID, target_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep
) -> Response:
    service.delete(session, tenant_id, brand_id, target_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
