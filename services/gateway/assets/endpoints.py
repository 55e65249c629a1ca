"""/v1/assets"""
from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile, status

from services.gateway.assets import service
from services.gateway.assets.schemas import AssetKind, AssetRead
from services.gateway.deps import SessionDep, SettingsDep, StorageDep, TenantDep
from services.gateway.pagination import CursorQuery, LimitQuery, Page

router = APIRouter(prefix="/v1/assets", tags=["assets"])

METADATA_DOC = ('JSON: {"kind": "product"|"background"|"reference", "title", "description", "tags": [str], '
                '"brand_id", "attributes": {}, "kpis": {name: number}}')


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=AssetRead,
    responses={200: {"model": AssetRead, "description": "The same bytes were uploaded before: the existing asset."}},
)
def upload_asset(
    file: Annotated[UploadFile, File(description="PNG, JPEG or WebP image.")],
    metadata: Annotated[str, Form(max_length=100_000, description=METADATA_DOC)],
    response: Response,
    session: SessionDep,
    tenant_id: TenantDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> AssetRead:
    asset, created = service.create(session, storage, settings, tenant_id, file.file, metadata)
    if created:
        response.headers["Location"] = f"/v1/assets/{asset.id}"
    else:
        response.status_code = status.HTTP_200_OK
    return service.to_read(asset, storage)


@router.get("/{asset_id}", response_model=AssetRead)
def get_asset(asset_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep, storage: StorageDep) -> AssetRead:
    return service.to_read(service.get(session, tenant_id, asset_id), storage)


@router.get("", response_model=Page[AssetRead])
def list_assets(
    session: SessionDep,
    tenant_id: TenantDep,
    storage: StorageDep,
    kind: Annotated[AssetKind | None, Query()] = None,
    brand_id: Annotated[uuid.UUID | None, Query()] = None,
    limit: LimitQuery = 20,
    cursor: CursorQuery = None,
) -> Page[AssetRead]:
    assets, next_cursor = service.list_page(session, tenant_id, limit, cursor, kind, brand_id)
    return Page[AssetRead](items=[service.to_read(a, storage) for a in assets], next_cursor=next_cursor)
