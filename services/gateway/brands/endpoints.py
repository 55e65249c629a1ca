"""/v1/brands"""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response, status

from services.gateway.brands import service
from services.gateway.brands.schemas import BrandCreate, BrandRead, BrandUpdate
from services.gateway.deps import SessionDep, SettingsDep, TenantDep
from services.gateway.pagination import CursorQuery, LimitQuery, Page

router = APIRouter(prefix="/v1/brands", tags=["brands"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=BrandRead)
def create_brand(body: BrandCreate, session: SessionDep, tenant_id: TenantDep, settings: SettingsDep) -> BrandRead:
    return service.to_read(service.create(session, tenant_id, body, settings))


@router.get("/{brand_id}", response_model=BrandRead)
async def get_brand(brand_id: uuid.UUID, tenant_id: TenantDep, settings: SettingsDep) -> BrandRead:
    return await service.read(settings, tenant_id, brand_id)


@router.patch("/{brand_id}", response_model=BrandRead)
def update_brand(
    brand_id: uuid.UUID, body: BrandUpdate, session: SessionDep, tenant_id: TenantDep, settings: SettingsDep
) -> BrandRead:
    return service.to_read(service.update(session, tenant_id, brand_id, body, settings))


@router.get("", response_model=Page[BrandRead])
def list_brands(
    session: SessionDep, tenant_id: TenantDep, limit: LimitQuery = 20, cursor: CursorQuery = None
) -> Page[BrandRead]:
    brands, next_cursor = service.list_page(session, tenant_id, limit, cursor)
    return Page[BrandRead](items=[service.to_read(b) for b in brands], next_cursor=next_cursor)


@router.delete(
    "/{brand_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={409: {"description": "brand_in_use: a campaign of the brand is still running."}},
)
def delete_brand(brand_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep) -> Response:
    service.delete(session, tenant_id, brand_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
