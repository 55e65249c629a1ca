"""Tenants and API keys. Keys are shown once and stored as a sha256 hash."""

from __future__ import annotations

import hashlib
import secrets
import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import ApiKey, Tenant

KEY_PREFIX = "onb_"


def hash_key(api_key: str) -> str:
    # API keys are 256-bit random tokens, so a fast hash is enough (no password stretching needed).
    return hashlib.sha256(api_key.encode()).hexdigest()


def create_tenant(session: Session, name: str) -> tuple[uuid.UUID, str]:
    if not name.strip():
        raise ValueError("name must not be empty")
    tenant = Tenant(id=uuid.uuid4(), name=name.strip())
    session.add(tenant)
    session.flush()  # no ORM relationships, so insert the parent before its key explicitly
    api_key = issue_key(session, tenant.id)
    return tenant.id, api_key


def issue_key(session: Session, tenant_id: uuid.UUID) -> str:
    api_key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(tenant_id=tenant_id, prefix=api_key[:12], key_hash=hash_key(api_key)))
    return api_key


def tenant_for_key(session: Session, api_key: str) -> uuid.UUID | None:
    found = key_owner(session, api_key)
    return found[0] if found else None


def key_owner(session: Session, api_key: str) -> tuple[uuid.UUID, str] | None:
    """(tenant id, key prefix) of a valid key: the prefix names who decided in a review (never the key)."""
    row = session.execute(
        select(ApiKey.tenant_id, ApiKey.prefix).where(ApiKey.key_hash == hash_key(api_key), ApiKey.revoked_at.is_(None))
    ).first()
    return (row[0], row[1]) if row else None
