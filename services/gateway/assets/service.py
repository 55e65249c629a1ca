"""Assets: product photos, backgrounds and references, stored as normalized PNG + thumbnail."""
from __future__ import annotations

import uuid
from functools import partial
from typing import BinaryIO, cast

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.gateway.assets import images
from services.gateway.assets.schemas import AssetKind, AssetMetadata, AssetRead
from services.gateway.brands import service as brands
from services.gateway.errors import conflict, not_found, unknown_reference
from services.gateway.pagination import created_keys, paginate
from services.gateway.unit_of_work import enqueue, on_rollback
from shared.config import Settings
from shared.db.models import Asset
from shared.storage import Storage, asset_key

PNG = "image/png"


def to_read(asset: Asset, storage: Storage) -> AssetRead:
    return AssetRead(
        id=asset.id, kind=cast(AssetKind, asset.kind), title=asset.title, description=asset.description,
        tags=list(asset.tags), brand_id=asset.brand_id, attributes=asset.attributes, kpis=asset.kpis, width=asset.width,
        height=asset.height, has_alpha=asset.has_alpha, content_type=asset.content_type, sha256=asset.sha256,
        byte_size=asset.byte_size, url=storage.url(asset.storage_key), thumbnail_url=storage.url(asset.thumb_key),
        created_at=asset.created_at,
    )


def parse_metadata(raw: str) -> AssetMetadata:
    try:
        return AssetMetadata.model_validate_json(raw)
    except ValidationError as exc:
        # Same 422 shape as body validation, with paths rooted at the multipart field.
        raise RequestValidationError([{**e, "loc": ("body", "metadata", *e["loc"])} for e in exc.errors()]) from None


def _check_brand(session: Session, tenant_id: uuid.UUID, brand_id: uuid.UUID | None) -> None:
    if brand_id is not None and not brands.exists(session, tenant_id, brand_id):
        raise unknown_reference("brand_id", f"Brand {brand_id} does not exist.")


def find_by_sha(session: Session, tenant_id: uuid.UUID, sha256: str) -> Asset | None:
    return session.scalar(select(Asset).where(Asset.tenant_id == tenant_id, Asset.sha256 == sha256))


def _new_asset(tenant_id: uuid.UUID, meta: AssetMetadata, image: images.CleanImage) -> Asset:
    asset_id = uuid.uuid4()
    return Asset(
        id=asset_id, tenant_id=tenant_id, brand_id=meta.brand_id, kind=meta.kind, title=meta.title,
        description=meta.description, tags=meta.tags, attributes=meta.attributes, kpis=meta.kpis,
        sha256=image.sha256, content_type=PNG, width=image.width, height=image.height, has_alpha=image.has_alpha,
        byte_size=len(image.png), storage_key=asset_key(tenant_id, asset_id, "original.png"),
        thumb_key=asset_key(tenant_id, asset_id, "thumb.png"),
    )


def _write_objects(session: Session, storage: Storage, asset: Asset, image: images.CleanImage) -> None:
    # Registered before writing: if anything later fails (a put, the insert, the commit) the
    # transaction's rollback deletes whatever was written, so no object outlives its row.
    for key in (asset.storage_key, asset.thumb_key):
        on_rollback(session, partial(storage.delete, key))
    storage.put(asset.storage_key, image.png, PNG)
    storage.put(asset.thumb_key, image.thumb_png, PNG)


def _delete_objects(storage: Storage, asset: Asset) -> None:
    for key in (asset.storage_key, asset.thumb_key):
        storage.delete(key)


def _insert(session: Session, storage: Storage, asset: Asset) -> tuple[Asset, bool]:
    """Insert the row; a concurrent upload of the same bytes wins the unique (tenant, sha256)."""
    try:
        with session.begin_nested():
            session.add(asset)
    except IntegrityError:
        _delete_objects(storage, asset)
        existing = find_by_sha(session, asset.tenant_id, asset.sha256)
        if existing is None:  # not the dedupe race (e.g. the brand was deleted meanwhile)
            raise conflict("The asset could not be stored because of a concurrent change; retry.") from None
        return existing, False
    return asset, True


def create(
    session: Session, storage: Storage, settings: Settings, tenant_id: uuid.UUID, file: BinaryIO, metadata: str
) -> tuple[Asset, bool]:
    """Validate and store an upload; return (asset, created). Same bytes again -> the existing asset."""
    meta = parse_metadata(metadata)
    _check_brand(session, tenant_id, meta.brand_id)
    data, fmt = images.read_image_upload(file, settings.max_upload_bytes)
    image = images.clean(data, fmt, settings.max_image_pixels)
    existing = find_by_sha(session, tenant_id, image.sha256)
    if existing is not None:
        return existing, False
    asset = _new_asset(tenant_id, meta, image)
    _write_objects(session, storage, asset, image)
    asset, created = _insert(session, storage, asset)
    if created:
        enqueue(session, "onbrand.embed_assets", asset.id)
    return asset, created


def get(session: Session, tenant_id: uuid.UUID, asset_id: uuid.UUID) -> Asset:
    asset = session.scalar(select(Asset).where(Asset.id == asset_id, Asset.tenant_id == tenant_id))
    if asset is None:
        raise not_found("Asset")
    return asset


def list_page(
    session: Session, tenant_id: uuid.UUID, limit: int, cursor: str | None,
    kind: AssetKind | None = None, brand_id: uuid.UUID | None = None,
) -> tuple[list[Asset], str | None]:
    stmt = select(Asset).where(Asset.tenant_id == tenant_id)
    if kind is not None:
        stmt = stmt.where(Asset.kind == kind)
    if brand_id is not None:
        stmt = stmt.where(Asset.brand_id == brand_id)
    return paginate(session, stmt, created_keys(Asset), limit, cursor)


def products_owned(session: Session, tenant_id: uuid.UUID, asset_ids: list[uuid.UUID]) -> set[uuid.UUID]:
    """The subset of asset_ids that are this tenant's product assets."""
    if not asset_ids:
        return set()
    stmt = select(Asset.id).where(Asset.tenant_id == tenant_id, Asset.kind == "product", Asset.id.in_(asset_ids))
    return set(session.scalars(stmt))
