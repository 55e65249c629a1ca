"""Assets: product photos, backgrounds and references, stored as normalized PNG + thumbnail."""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass, field
from functools import partial
from typing import Any, BinaryIO, Literal, cast

from fastapi.exceptions import RequestValidationError
from pydantic import TypeAdapter, ValidationError
from sqlalchemy import Text, or_, select
from sqlalchemy import cast as sql_cast
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.gateway.assets import images
from services.gateway.assets.schemas import (
    AssetImport,
    AssetKind,
    AssetMetadata,
    AssetRead,
    SearchHit,
    SearchParams,
    SearchResults,
)
from services.gateway.brands import service as brands
from services.gateway.errors import ProblemError, conflict, not_found, unknown_reference, validation_problem
from services.gateway.guardrails import screen as guard
from services.gateway.pagination import created_keys, paginate
from services.gateway.unit_of_work import enqueue, on_rollback
from shared import egress, query_vectors, search
from shared.config import Settings
from shared.db.models import TERMINAL_STATUSES, Asset, Campaign
from shared.deletions import CLEANUP_TASK, schedule
from shared.queue import BULK_PRIORITY
from shared.storage import Storage, asset_key

PNG = "image/png"
IMAGE_TYPES = "image/png, image/jpeg, image/webp"
EMBED_TASK_SIZE = 64  # assets per embed task (one MiniLM batch)
BATCH_METADATA = TypeAdapter(list[AssetMetadata])


@dataclass
class BatchItem:
    index: int
    status: Literal["created", "existing", "failed"]
    asset: Asset | None = None
    problem: dict[str, Any] | None = None


@dataclass
class BatchResult:
    items: list[BatchItem] = field(default_factory=list)
    created: int = 0
    existing: int = 0
    failed: int = 0


def to_read(asset: Asset, storage: Storage) -> AssetRead:
    return AssetRead(
        id=asset.id,
        kind=cast(AssetKind, asset.kind),
        title=asset.title,
        description=asset.description,
        tags=list(asset.tags),
        brand_id=asset.brand_id,
        attributes=asset.attributes,
        kpis=asset.kpis,
        width=asset.width,
        height=asset.height,
        has_alpha=asset.has_alpha,
        content_type=asset.content_type,
        sha256=asset.sha256,
        byte_size=asset.byte_size,
        url=storage.url(asset.storage_key),
        thumbnail_url=storage.url(asset.thumb_key),
        screening=asset.screening,
        created_at=asset.created_at,
    )


def parse_batch_metadata(raw: str, count: int) -> list[AssetMetadata]:
    """The `metadata` part of a batch: a JSON array with one object per file, in file order."""
    try:
        metas = BATCH_METADATA.validate_json(raw)
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("body", "metadata", *e["loc"])} for e in exc.errors()]) from None
    if len(metas) != count:
        raise validation_problem(
            [
                {
                    "loc": ("body", "metadata"),
                    "type": "value_error",
                    "msg": f"metadata has {len(metas)} entries for {count} files",
                }
            ]
        )
    return metas


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
        id=asset_id,
        tenant_id=tenant_id,
        brand_id=meta.brand_id,
        kind=meta.kind,
        title=meta.title,
        description=meta.description,
        tags=meta.tags,
        attributes=meta.attributes,
        kpis=meta.kpis,
        sha256=image.sha256,
        content_type=PNG,
        width=image.width,
        height=image.height,
        has_alpha=image.has_alpha,
        byte_size=len(image.png),
        storage_key=asset_key(tenant_id, asset_id, "original.png"),
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


def ingest(
    session: Session,
    storage: Storage,
    settings: Settings,
    tenant_id: uuid.UUID,
    meta: AssetMetadata,
    upload: tuple[bytes, str],
    source_url: str | None = None,
) -> tuple[Asset, bool]:
    """Store checked bytes as an asset; return (asset, created). Same bytes again -> the existing asset.

    Every check that can fail runs before the first object is written, so a refused item leaves
    nothing behind; a failure after that rolls the transaction back and its hooks delete the objects.
    """
    _check_brand(session, tenant_id, meta.brand_id)
    text_screen = guard.asset_text(session, settings, tenant_id, meta)  # 422 input_refused: nothing stored
    image = images.clean(*upload, settings.max_image_pixels)
    existing = find_by_sha(session, tenant_id, image.sha256)
    if existing is not None:
        return existing, False
    asset = _new_asset(tenant_id, meta, image)
    asset.source_url = source_url
    asset.screening = guard.record(text_screen, guard.image(settings, tenant_id, image.png))
    _write_objects(session, storage, asset, image)
    return _insert(session, storage, asset)


def create(
    session: Session, storage: Storage, settings: Settings, tenant_id: uuid.UUID, file: BinaryIO, metadata: str
) -> tuple[Asset, bool]:
    """One multipart upload; its embedding is computed on the retrieval queue after the commit."""
    meta = parse_metadata(metadata)
    asset, created = ingest(
        session, storage, settings, tenant_id, meta, images.read_image_upload(file, settings.max_upload_bytes)
    )
    if created:
        enqueue(session, "onbrand.embed_assets", asset.id)
    return asset, created


def import_url(
    session: Session, storage: Storage, settings: Settings, tenant_id: uuid.UUID, body: AssetImport
) -> tuple[Asset, bool]:
    """Fetch body.url through the egress guard, then ingest it like an upload."""
    url = str(body.url)
    data = _fetch(url, settings)
    meta = AssetMetadata.model_validate(body.model_dump(exclude={"url"}))
    asset, created = ingest(
        session,
        storage,
        settings,
        tenant_id,
        meta,
        images.read_image_upload(io.BytesIO(data), settings.max_upload_bytes),
        source_url=url,
    )
    if created:
        enqueue(session, "onbrand.embed_assets", asset.id)
    return asset, created


def _fetch(url: str, settings: Settings) -> bytes:
    try:
        return egress.fetch(
            url,
            max_bytes=settings.max_upload_bytes,
            timeout_s=settings.import_timeout_seconds,
            allowlist=settings.egress_allowlist,
            headers={"Accept": IMAGE_TYPES},
        ).body
    except egress.EgressRefused as exc:
        if exc.code == "url_too_large":
            raise images.too_large(exc.detail) from None
        raise ProblemError(
            422,
            exc.code,
            "URL refused or not fetchable",
            exc.detail,
            extra={"errors": [{"field": "url", "message": exc.detail}]},
        ) from None


def create_batch(
    session: Session, storage: Storage, settings: Settings, tenant_id: uuid.UUID, files: list[BinaryIO], metadata: str
) -> BatchResult:
    """Many uploads in one request; each item succeeds or fails on its own (no partial item)."""
    metas = parse_batch_metadata(metadata, len(files))
    items = [
        _batch_item(session, storage, settings, tenant_id, i, f, m)
        for i, (f, m) in enumerate(zip(files, metas, strict=True))
    ]
    new_ids = [item.asset.id for item in items if item.status == "created" and item.asset is not None]
    for start in range(0, len(new_ids), EMBED_TASK_SIZE):  # bulk priority: campaigns and queries go first
        enqueue(session, "onbrand.embed_assets", *new_ids[start : start + EMBED_TASK_SIZE], priority=BULK_PRIORITY)
    return BatchResult(items=items, **{s: sum(i.status == s for i in items) for s in ("created", "existing", "failed")})


def _batch_item(
    session: Session,
    storage: Storage,
    settings: Settings,
    tenant_id: uuid.UUID,
    index: int,
    file: BinaryIO,
    meta: AssetMetadata,
) -> BatchItem:
    try:
        asset, created = ingest(
            session, storage, settings, tenant_id, meta, images.read_image_upload(file, settings.max_upload_bytes)
        )
    except ProblemError as exc:
        problem = {"status": exc.status_code, "code": exc.code, "title": exc.title, "detail": exc.detail}
        return BatchItem(index=index, status="failed", problem=problem)
    return BatchItem(index=index, status="created" if created else "existing", asset=asset)


def get(session: Session, tenant_id: uuid.UUID, asset_id: uuid.UUID) -> Asset:
    asset = session.scalar(select(Asset).where(Asset.id == asset_id, Asset.tenant_id == tenant_id))
    if asset is None:
        raise not_found("Asset")
    return asset


def list_page(
    session: Session,
    tenant_id: uuid.UUID,
    limit: int,
    cursor: str | None,
    kind: AssetKind | None = None,
    brand_id: uuid.UUID | None = None,
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


def search_assets(
    session: Session, storage: Storage, settings: Settings, tenant_id: uuid.UUID, params: SearchParams
) -> SearchResults:
    """Hybrid search; without a query vector (no worker answered) hybrid degrades to keywords."""
    text_space, image_space = (
        (None, None) if params.mode == "keyword" else query_vectors.query_spaces(params.q, settings)
    )
    degraded = None
    if text_space is None and params.mode != "keyword":
        if params.mode == "vector":
            raise ProblemError(
                503,
                "search_unavailable",
                "Search unavailable",
                "No retrieval worker embedded the query in time; retry, or use mode=keyword.",
                headers={"Retry-After": "5"},
            )
        degraded = "query embedding unavailable (no retrieval worker answered in time): keyword match only"
    filters = search.Filters(tenant_id=tenant_id, kind=params.kind, brand_id=params.brand_id, tags=params.tags)
    hits = search.search(
        session,
        params.q,
        filters,
        text_space=text_space,
        image_space=image_space,
        k=params.k,
        mode=params.mode if text_space is not None else "keyword",
        boost=params.boost,
    )
    assets = {
        a.id: a
        for a in session.scalars(
            select(Asset).where(Asset.tenant_id == tenant_id, Asset.id.in_([h.asset_id for h in hits]))
        )
    }
    return SearchResults(
        query=params.q,
        mode=params.mode,
        k=params.k,
        boost=params.boost,
        degraded=degraded,
        models={"text": text_space.model if text_space else None, "image": image_space.model if image_space else None},
        items=[SearchHit(asset=to_read(assets[h.asset_id], storage), score=h.score, parts=h.parts) for h in hits],
    )


def campaigns_using(session: Session, tenant_id: uuid.UUID, asset_id: uuid.UUID) -> list[uuid.UUID]:
    """The tenant's campaigns still running that named the asset or whose stages picked it (retrieve's products
    and backgrounds are ids in the campaign's state): a later stage of theirs reads its objects."""
    ident = str(asset_id)
    stmt = select(Campaign.id).where(
        Campaign.tenant_id == tenant_id,
        Campaign.status.not_in(TERMINAL_STATUSES),
        or_(Campaign.product_asset_ids.contains([ident]), sql_cast(Campaign.state, Text).contains(ident)),
    )
    return list(session.scalars(stmt.order_by(Campaign.created_at)))


def delete(session: Session, tenant_id: uuid.UUID, asset_id: uuid.UUID) -> None:
    """The asset's rows go now (its embeddings cascade), its objects once this commits (shared.deletions).

    Finished campaigns keep their results: their candidates, cut-outs and layers are their own copies."""
    asset = session.scalar(select(Asset).where(Asset.id == asset_id, Asset.tenant_id == tenant_id).with_for_update())
    if asset is None:
        raise not_found("Asset")
    using = campaigns_using(session, tenant_id, asset.id)
    if using:
        raise ProblemError(
            409,
            "asset_in_use",
            "Asset in use",
            f"{len(using)} campaign(s) still running use this asset: delete it once they finished or were cancelled.",
            extra={"campaign_ids": [str(c) for c in using]},
        )
    deletion = schedule(session, tenant_id, "asset", asset.id)
    session.delete(asset)
    session.flush()
    enqueue(session, CLEANUP_TASK, deletion.id)
