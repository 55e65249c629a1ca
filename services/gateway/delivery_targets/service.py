"""Delivery targets: where a brand's results are pushed (credentials stored encrypted, never returned)."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.gateway.brands import service as brands
from services.gateway.delivery_targets.schemas import DeliveryTargetCreate, DeliveryTargetRead, S3Config
from services.gateway.errors import not_found
from services.gateway.pagination import created_keys, paginate
from shared.crypto import encrypt_json
from shared.db.models import DeliveryTarget

CONFIG_KEYS = ("bucket", "prefix", "region", "endpoint_url")


def mask(key_id: str) -> str:
    return "****" + (key_id[-4:] if len(key_id) > 4 else "")


def to_read(target: DeliveryTarget) -> DeliveryTargetRead:
    config = S3Config.model_validate({k: target.config.get(k) for k in CONFIG_KEYS})
    return DeliveryTargetRead(
        id=target.id,
        brand_id=target.brand_id,
        kind=target.kind,
        name=target.name,
        config=config,
        access_key_id=target.config.get("access_key_id_masked") or "****",
        enabled=target.enabled,
        created_at=target.created_at,
    )


def _credentials(body: DeliveryTargetCreate) -> dict[str, str]:
    creds = {"access_key_id": body.access_key_id, "secret_access_key": body.secret_access_key.get_secret_value()}
    if body.session_token is not None:
        creds["session_token"] = body.session_token.get_secret_value()
    return creds


def create(session: Session, tenant_id: uuid.UUID, brand_id: uuid.UUID, body: DeliveryTargetCreate) -> DeliveryTarget:
    brands.get(session, tenant_id, brand_id)  # 404 for another tenant's brand
    # The masked key id lives in config so that reads never need to decrypt the credentials.
    config = {
        "bucket": body.bucket,
        "prefix": body.prefix,
        "region": body.region,
        "endpoint_url": str(body.endpoint_url) if body.endpoint_url else None,
        "access_key_id_masked": mask(body.access_key_id),
    }
    target = DeliveryTarget(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        brand_id=brand_id,
        kind=body.kind,
        name=body.name,
        config=config,
        credentials=encrypt_json(_credentials(body)),
        enabled=True,
    )
    session.add(target)
    session.flush()
    return target


def get(session: Session, tenant_id: uuid.UUID, brand_id: uuid.UUID, target_id: uuid.UUID) -> DeliveryTarget:
    brands.get(session, tenant_id, brand_id)
    target = session.scalar(
        select(DeliveryTarget).where(
            DeliveryTarget.tenant_id == tenant_id, DeliveryTarget.brand_id == brand_id, DeliveryTarget.id == target_id
        )
    )
    if target is None:
        raise not_found("Delivery target")
    return target


def delete(session: Session, tenant_id: uuid.UUID, brand_id: uuid.UUID, target_id: uuid.UUID) -> None:
    # Its push history stays (target_id SET NULL); pending pushes to it fail: a removed bucket gets nothing more.
    session.delete(get(session, tenant_id, brand_id, target_id))


def list_page(
    session: Session, tenant_id: uuid.UUID, brand_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[DeliveryTarget], str | None]:
    brands.get(session, tenant_id, brand_id)  # 404, not an empty list, for another tenant's brand
    stmt = select(DeliveryTarget).where(DeliveryTarget.tenant_id == tenant_id, DeliveryTarget.brand_id == brand_id)
    return paginate(session, stmt, created_keys(DeliveryTarget), limit, cursor)
