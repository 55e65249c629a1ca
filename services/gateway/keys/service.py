"""API keys of the caller's tenant: the shared key functions (shared.tenants), their errors as problems."""

from __future__ import annotations

import uuid
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.gateway.errors import ProblemError, conflict, not_found
from services.gateway.keys.schemas import KeyCreate, KeyCreated, KeyRead
from services.gateway.pagination import created_keys, paginate
from shared import tenants
from shared.db.models import ApiKey
from shared.key_cache import Caller


def to_read(key: ApiKey) -> KeyRead:
    return KeyRead(
        id=key.id,
        prefix=key.prefix,
        name=key.name,
        scopes=cast(Any, key.scopes),  # stored through shared.tenants.normalize_scopes: known scopes only
        created_at=key.created_at,
        last_used_at=key.last_used_at,
        expires_at=key.expires_at,
        revoked_at=key.revoked_at,
    )


def _created(key: ApiKey, secret: str) -> KeyCreated:
    return KeyCreated(**to_read(key).model_dump(), key=secret)


def create(session: Session, tenant_id: uuid.UUID, body: KeyCreate) -> KeyCreated:
    return _created(*tenants.new_key(session, tenant_id, body.name, body.scopes))


def list_page(
    session: Session, tenant_id: uuid.UUID, limit: int, cursor: str | None
) -> tuple[list[KeyRead], str | None]:
    stmt = select(ApiKey).where(ApiKey.tenant_id == tenant_id)
    keys, next_cursor = paginate(session, stmt, created_keys(ApiKey), limit, cursor)
    return [to_read(k) for k in keys], next_cursor


def get(session: Session, tenant_id: uuid.UUID, key_id: uuid.UUID) -> KeyRead:
    try:
        return to_read(tenants.get_key(session, tenant_id, key_id))
    except tenants.KeyNotFoundError:
        raise not_found("API key") from None


def revoke(session: Session, caller: Caller, key_id: uuid.UUID) -> KeyRead:
    try:
        return to_read(tenants.revoke_key(session, caller.tenant_id, key_id, caller_key_id=caller.key_id))
    except tenants.KeyNotFoundError:
        raise not_found("API key") from None
    except tenants.LastAdminKeyError:
        raise ProblemError(
            409,
            "last_admin_key",
            "Last admin key",
            "This is the tenant's last admin key: create or rotate another admin key before revoking it.",
        ) from None


def rotate(session: Session, tenant_id: uuid.UUID, key_id: uuid.UUID, overlap_seconds: int) -> KeyCreated:
    try:
        return _created(*tenants.rotate_key(session, tenant_id, key_id, overlap_seconds))
    except tenants.KeyNotFoundError:
        raise not_found("API key") from None
    except tenants.KeyInactiveError:
        raise conflict("The key is revoked or expired; create a new key instead.") from None
