"""Brands: a tenant's palette and written guidelines."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, NamedTuple, cast

from psycopg.rows import class_row
from sqlalchemy import select
from sqlalchemy import update as sql_update
from sqlalchemy.orm import Session

from services.gateway.brands.schemas import BrandCreate, BrandRead, BrandUpdate, Guideline
from services.gateway.errors import ProblemError, not_found
from services.gateway.guardrails import screen as guard
from services.gateway.pagination import created_keys, paginate
from services.gateway.unit_of_work import enqueue
from shared.config import Settings
from shared.db import aio
from shared.db.models import TERMINAL_STATUSES, AssetEmbedding, Brand, Campaign, DamPushPolicy
from shared.deletions import CLEANUP_TASK, schedule
from shared.qc import DEFAULT_UNCHECKED, UncheckedPolicy


class BrandRow(NamedTuple):
    """The columns a BrandRead shows, as the async read path (shared.db.aio) loads them."""

    id: uuid.UUID
    name: str
    palette: list[Any]
    guidelines: list[Any]
    forbidden_terms: list[Any]
    qc_thresholds: dict[str, Any]
    unchecked: str
    dam_push: str
    created_at: datetime


_READ = """SELECT id, name, palette, guidelines, forbidden_terms, qc_thresholds, unchecked, dam_push, created_at
FROM brands WHERE id = %(id)s AND tenant_id = %(tenant_id)s"""


async def read(settings: Settings, tenant_id: uuid.UUID, brand_id: uuid.UUID) -> BrandRead:
    """GET /v1/brands/{id}: one prepared statement on the event loop."""
    rows = await aio.fetch(settings, aio.Read(_READ, {"id": brand_id, "tenant_id": tenant_id}, class_row(BrandRow)))
    if not rows:
        raise not_found("Brand")
    return to_read(rows[0])


def to_read(brand: Brand | BrandRow) -> BrandRead:
    guidelines = [Guideline.model_validate(g) for g in brand.guidelines]
    return BrandRead(
        id=brand.id,
        name=brand.name,
        palette=brand.palette,
        guidelines=guidelines,
        forbidden_terms=list(brand.forbidden_terms or []),
        qc_thresholds=dict(brand.qc_thresholds or {}),
        unchecked=cast(UncheckedPolicy, brand.unchecked or DEFAULT_UNCHECKED),
        dam_push=DamPushPolicy(brand.dam_push or DamPushPolicy.ON_COMPLETION),
        created_at=brand.created_at,
    )


def create(session: Session, tenant_id: uuid.UUID, body: BrandCreate, settings: Settings | None = None) -> Brand:
    texts = [g.text for g in body.guidelines]
    guard.brand(session, guard.with_settings(settings), tenant_id, body.name, texts)  # 422 input_refused
    brand = Brand(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        name=body.name,
        palette=body.palette,
        guidelines=[g.model_dump() for g in body.guidelines],
        forbidden_terms=list(dict.fromkeys(body.forbidden_terms)),
        qc_thresholds=body.qc_thresholds,
        unchecked=body.unchecked,
        dam_push=body.dam_push,
    )
    session.add(brand)
    session.flush()  # fills the server-side created_at for the response
    return brand


def update(
    session: Session, tenant_id: uuid.UUID, brand_id: uuid.UUID, body: BrandUpdate, settings: Settings | None = None
) -> Brand:
    """Campaigns already running keep what their stages read; the next stage reads the new values."""
    brand = get(session, tenant_id, brand_id)
    texts = [g.text for g in body.guidelines or []]
    guard.brand(session, guard.with_settings(settings), tenant_id, body.name, texts)  # what changes, screened
    changes = body.model_dump(exclude_unset=True, exclude_none=True)  # guidelines come out as plain dicts
    if "forbidden_terms" in changes:
        changes["forbidden_terms"] = list(dict.fromkeys(changes["forbidden_terms"]))
    for name, value in changes.items():
        setattr(brand, name, value)
    session.flush()
    return brand


def get(session: Session, tenant_id: uuid.UUID, brand_id: uuid.UUID) -> Brand:
    brand = session.scalar(select(Brand).where(Brand.id == brand_id, Brand.tenant_id == tenant_id))
    if brand is None:
        raise not_found("Brand")
    return brand


def exists(session: Session, tenant_id: uuid.UUID, brand_id: uuid.UUID) -> bool:
    found = session.scalar(select(Brand.id).where(Brand.id == brand_id, Brand.tenant_id == tenant_id))
    return found is not None


def list_page(session: Session, tenant_id: uuid.UUID, limit: int, cursor: str | None) -> tuple[list[Brand], str | None]:
    stmt = select(Brand).where(Brand.tenant_id == tenant_id)
    return paginate(session, stmt, created_keys(Brand), limit, cursor)


def delete(session: Session, tenant_id: uuid.UUID, brand_id: uuid.UUID) -> None:
    """The brand, its campaigns (and all theirs: candidates, results, reviews, outbox rows, objects), delivery
    targets and ranker go; its assets stay in the tenant's library, no longer tied to a brand.

    The campaigns are locked first: none starts a review round (running again) while it is being deleted."""
    brand = session.scalar(select(Brand).where(Brand.id == brand_id, Brand.tenant_id == tenant_id).with_for_update())
    if brand is None:
        raise not_found("Brand")
    stmt = select(Campaign).where(Campaign.tenant_id == tenant_id, Campaign.brand_id == brand.id)
    campaigns = list(session.scalars(stmt.with_for_update()))
    running = [str(c.id) for c in campaigns if c.status not in TERMINAL_STATUSES]
    if running:
        raise ProblemError(
            409,
            "brand_in_use",
            "Brand in use",
            f"{len(running)} campaign(s) of this brand are still running: cancel them or let them finish first.",
            extra={"campaign_ids": running},
        )
    deletions = [schedule(session, tenant_id, "campaign", c.id) for c in campaigns]
    deletions.append(schedule(session, tenant_id, "brand", brand.id))  # the kit's logos and fonts
    # Embeddings copy the asset's brand_id (no foreign key: filters run inside the index scan); unlink them too.
    session.execute(
        sql_update(AssetEmbedding)
        .where(AssetEmbedding.tenant_id == tenant_id, AssetEmbedding.brand_id == brand.id)
        .values(brand_id=None)
    )
    session.delete(brand)  # campaigns, delivery targets, ranker: ON DELETE CASCADE; assets: SET NULL
    session.flush()
    for deletion in deletions:
        enqueue(session, CLEANUP_TASK, deletion.id)
