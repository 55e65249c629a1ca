"""/v1/assets"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile, status

from services.gateway.assets import service
from services.gateway.assets.schemas import (
    KPI_PATTERN,
    MAX_BATCH_FILES,
    AssetImport,
    AssetKind,
    AssetRead,
    BatchItemRead,
    BatchRead,
    SearchMode,
    SearchParams,
    SearchResults,
)
from services.gateway.deps import SessionDep, SettingsDep, StorageDep, TenantDep
from services.gateway.errors import validation_problem
from services.gateway.pagination import CursorQuery, LimitQuery, Page
from shared.db.models import Asset

router = APIRouter(prefix="/v1/assets", tags=["assets"])

TagsQuery = Annotated[list[str], Query(description="Only assets with all these tags (repeat, or comma-separate).")]
BoostQuery = Annotated[str | None, Query(pattern=KPI_PATTERN, description="KPI that lifts top performers, e.g. ctr")]
METADATA_DOC = (
    'JSON: {"kind": "product"|"background"|"reference", "title", "description", "tags": [str], '
    '"brand_id", "attributes": {}, "kpis": {name: number}}'
)


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
    return _created_or_existing(asset, created, response, storage)


def _created_or_existing(asset: Asset, created: bool, response: Response, storage: StorageDep) -> AssetRead:
    if created:
        response.headers["Location"] = f"/v1/assets/{asset.id}"
    else:
        response.status_code = status.HTTP_200_OK
    return service.to_read(asset, storage)


@router.post(
    "/import",
    status_code=status.HTTP_201_CREATED,
    response_model=AssetRead,
    responses={200: {"model": AssetRead, "description": "The same bytes were stored before: the existing asset."}},
)
def import_asset(
    body: AssetImport,
    response: Response,
    session: SessionDep,
    tenant_id: TenantDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> AssetRead:
    """Fetch an image by URL (public http/https addresses only, no redirects into private ranges)."""
    asset, created = service.import_url(session, storage, settings, tenant_id, body)
    return _created_or_existing(asset, created, response, storage)


@router.post("/batch", response_model=BatchRead)
def upload_batch(
    files: Annotated[list[UploadFile], File(description=f"Up to {MAX_BATCH_FILES} PNG, JPEG or WebP images.")],
    metadata: Annotated[str, Form(max_length=5_000_000, description="JSON array: one metadata object per file.")],
    session: SessionDep,
    tenant_id: TenantDep,
    storage: StorageDep,
    settings: SettingsDep,
) -> BatchRead:
    """Bulk ingest: each item is created, found existing (same bytes) or failed with its own problem."""
    if len(files) > MAX_BATCH_FILES:
        raise validation_problem(
            [
                {
                    "loc": ("body", "files"),
                    "type": "too_long",
                    "msg": f"at most {MAX_BATCH_FILES} files per batch, got {len(files)}",
                }
            ]
        )
    result = service.create_batch(session, storage, settings, tenant_id, [f.file for f in files], metadata)
    items = [
        BatchItemRead(
            index=i.index,
            status=i.status,
            problem=i.problem,
            asset=service.to_read(i.asset, storage) if i.asset else None,
        )
        for i in result.items
    ]
    return BatchRead(created=result.created, existing=result.existing, failed=result.failed, items=items)


@router.get("/search", response_model=SearchResults)
def search_assets(
    session: SessionDep,
    tenant_id: TenantDep,
    storage: StorageDep,
    settings: SettingsDep,
    q: Annotated[str, Query(min_length=1, max_length=500, description="What to look for, in words.")],
    kind: Annotated[AssetKind | None, Query()] = None,
    brand_id: Annotated[uuid.UUID | None, Query()] = None,
    tags: TagsQuery = [],  # noqa: B006 - FastAPI copies query defaults
    k: Annotated[int, Query(ge=1, le=100)] = 10,
    boost: BoostQuery = None,
    mode: Annotated[SearchMode, Query()] = "hybrid",
) -> SearchResults:
    """Vector similarity + full-text keyword match (+ optional KPI boost), each part reported."""
    if not q.strip():
        raise validation_problem([{"loc": ("query", "q"), "type": "value_error", "msg": "q must not be blank"}])
    wanted = tuple(t.strip() for tag in tags for t in tag.split(",") if t.strip())
    params = SearchParams(q=q.strip(), kind=kind, brand_id=brand_id, tags=wanted, k=k, boost=boost, mode=mode)
    return service.search_assets(session, storage, settings, tenant_id, params)


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


@router.delete(
    "/{asset_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses={409: {"description": "asset_in_use: a running campaign uses the asset."}},
)
def delete_asset(asset_id: uuid.UUID, session: SessionDep, tenant_id: TenantDep) -> Response:
    service.delete(session, tenant_id, asset_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
