"""Tenants and API keys. Keys are shown once and stored as a sha256 hash.

A key carries scopes (read, write, admin), may be revoked, and may expire: rotating a key issues a
new one with the same name and scopes and lets the old one work for an overlap, then it expires.
The gateway (API) and `onbrand keys` (operator CLI, straight on the database) share these functions.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Literal, get_args

from sqlalchemy import any_, or_, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from shared.db.models import ApiKey, Tenant
from shared.db.session import session_scope
from shared.key_cache import Caller, announce_change

KEY_PREFIX = "onb_"
Scope = Literal["read", "write", "admin"]
SCOPES: tuple[Scope, ...] = get_args(Scope)
DEFAULT_OVERLAP_S = 86_400  # a rotated key keeps working for a day unless told otherwise
MAX_OVERLAP_S = 7 * 86_400
# last_used_at is for people ("is this key still in use?"): minute resolution spares a write per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


class KeyNotFoundError(LookupError):
    """No such key in this tenant (another tenant's key is reported the same way)."""


class KeyInactiveError(ValueError):
    """The key is revoked or expired: it cannot be rotated."""


class LastAdminKeyError(ValueError):
    """Revoking this key would leave the tenant without an admin key."""


def hash_key(api_key: str) -> str:
    # API keys are 256-bit random tokens, so a fast hash is enough (no password stretching needed).
    return hashlib.sha256(api_key.encode()).hexdigest()


def normalize_scopes(scopes: Iterable[str]) -> list[str]:
    """Known scopes, each once, in the canonical order read, write, admin."""
    wanted = set(scopes)
    unknown = wanted - set(SCOPES)
    if unknown:
        raise ValueError(f"unknown scopes: {', '.join(sorted(unknown))}; known: {', '.join(SCOPES)}")
    if not wanted:
        raise ValueError("a key needs at least one scope")
    return [scope for scope in SCOPES if scope in wanted]


def create_tenant(session: Session, name: str) -> tuple[uuid.UUID, str]:
    if not name.strip():
        raise ValueError("name must not be empty")
    tenant = Tenant(id=uuid.uuid4(), name=name.strip())
    session.add(tenant)
    session.flush()  # no ORM relationships, so insert the parent before its key explicitly
    api_key = issue_key(session, tenant.id)
    return tenant.id, api_key


def issue_key(session: Session, tenant_id: uuid.UUID) -> str:
    """A tenant's first key: every scope, named "default"."""
    return new_key(session, tenant_id, "default", SCOPES)[1]


def new_key(session: Session, tenant_id: uuid.UUID, name: str, scopes: Sequence[str]) -> tuple[ApiKey, str]:
    """A new key row (flushed) and the key itself, which is never stored and must be shown once."""
    if not name.strip():
        raise ValueError("name must not be empty")
    api_key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        prefix=api_key[:12],
        key_hash=hash_key(api_key),
        name=name.strip(),
        scopes=normalize_scopes(scopes),
    )
    session.add(row)
    session.flush()
    session.refresh(row)  # created_at comes from the server
    return row, api_key


def _valid_at(now: datetime) -> ColumnElement[bool]:
    return ApiKey.revoked_at.is_(None) & or_(ApiKey.expires_at.is_(None), ApiKey.expires_at > now)


def is_active(key: ApiKey, now: datetime | None = None) -> bool:
    now = now or datetime.now(UTC)
    return key.revoked_at is None and (key.expires_at is None or key.expires_at > now)


def read_caller(session: Session, api_key: str) -> Caller | None:
    """The caller of a key, with its tenant's limit overrides, in one statement; None unless the key exists and is
    neither revoked nor expired. The gateway caches it (shared.key_cache) and checks expiry on every request."""
    row = session.execute(
        select(ApiKey.id, ApiKey.tenant_id, ApiKey.prefix, ApiKey.scopes, ApiKey.last_used_at, ApiKey.expires_at)
        .add_columns(Tenant.limits)
        .join(Tenant, Tenant.id == ApiKey.tenant_id)
        .where(ApiKey.key_hash == hash_key(api_key), _valid_at(datetime.now(UTC)))
    ).first()
    if row is None:
        return None
    scopes = frozenset(row.scopes)
    return Caller(row.id, row.tenant_id, row.prefix, scopes, row.last_used_at, row.expires_at, row.limits)


def last_use_due(caller: Caller, now: datetime) -> bool:
    """The key's stored last use is older than LAST_USED_RESOLUTION (or absent): touch_last_used would write."""
    return caller.last_used_at is None or caller.last_used_at <= now - LAST_USED_RESOLUTION


def touch_last_used(caller: Caller, now: datetime | None = None) -> bool:
    """Record the key's use if the stored time is older than LAST_USED_RESOLUTION; True when it was due (written
    here, or by a concurrent request: the WHERE clause makes them write it once), False when nothing was needed.

    Its own short transaction, not the request's: the request's would hold the key's row lock until the
    request ends (serialising that key's concurrent requests) and roll the time back on any error.
    """
    now = now or datetime.now(UTC)
    if not last_use_due(caller, now):
        return False
    cutoff = now - LAST_USED_RESOLUTION
    with session_scope() as session:
        session.execute(
            update(ApiKey)
            .where(ApiKey.id == caller.key_id, or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= cutoff))
            .values(last_used_at=now)
            .execution_options(synchronize_session=False)
        )
    return True


def list_keys(session: Session, tenant_id: uuid.UUID) -> list[ApiKey]:
    """Every key of the tenant, revoked and expired ones included, oldest first."""
    stmt = select(ApiKey).where(ApiKey.tenant_id == tenant_id).order_by(ApiKey.created_at, ApiKey.id)
    return list(session.scalars(stmt))


def get_key(session: Session, tenant_id: uuid.UUID, key_id: uuid.UUID, for_update: bool = False) -> ApiKey:
    stmt = select(ApiKey).where(ApiKey.id == key_id, ApiKey.tenant_id == tenant_id)
    key = session.scalar(stmt.with_for_update() if for_update else stmt)
    if key is None:
        raise KeyNotFoundError(str(key_id))
    return key


def revoke_key(
    session: Session, tenant_id: uuid.UUID, key_id: uuid.UUID, caller_key_id: uuid.UUID | None = None
) -> ApiKey:
    """Revoke a key (idempotent: an already revoked key keeps its revoked_at).

    caller_key_id is the key making the request (None for the operator CLI): a key may not revoke itself
    when it is the tenant's last active admin key, or nobody could manage the tenant's keys any more.
    """
    key = get_key(session, tenant_id, key_id, for_update=True)
    if key.revoked_at is not None:
        return key
    if key_id == caller_key_id and not _other_admin_keys(session, tenant_id, key_id):
        raise LastAdminKeyError(str(key_id))
    key.revoked_at = datetime.now(UTC)
    session.flush()
    announce_change(session)  # gateways drop their cached copy of it on their next request
    return key


def _other_admin_keys(session: Session, tenant_id: uuid.UUID, key_id: uuid.UUID) -> list[uuid.UUID]:
    # FOR UPDATE: two admin keys revoking themselves at once must not both see the other as the survivor.
    stmt = (
        select(ApiKey.id)
        .where(
            ApiKey.tenant_id == tenant_id,
            ApiKey.id != key_id,
            any_(ApiKey.scopes) == "admin",
            _valid_at(datetime.now(UTC)),
        )
        .with_for_update()
    )
    return list(session.scalars(stmt))


def rotate_key(
    session: Session, tenant_id: uuid.UUID, key_id: uuid.UUID, overlap_seconds: int = DEFAULT_OVERLAP_S
) -> tuple[ApiKey, str]:
    """A new key with the old one's name and scopes; the old key expires after overlap_seconds
    (never later than it already would). Returns the new row and the new key (shown once)."""
    if not 0 <= overlap_seconds <= MAX_OVERLAP_S:
        raise ValueError(f"overlap_seconds must be between 0 and {MAX_OVERLAP_S}")
    old = get_key(session, tenant_id, key_id, for_update=True)
    now = datetime.now(UTC)
    if not is_active(old, now):
        raise KeyInactiveError(str(key_id))
    expires = now + timedelta(seconds=overlap_seconds)
    old.expires_at = min(expires, old.expires_at) if old.expires_at else expires
    announce_change(session)  # gateways cached the old expiry
    return new_key(session, tenant_id, old.name, old.scopes)
