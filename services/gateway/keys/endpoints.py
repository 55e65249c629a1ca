"""/v1/keys: the tenant's API keys (create, list, revoke, rotate with overlap). Every route needs the
admin scope (services.gateway.deps.required_scope)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from services.gateway.deps import CallerDep, SessionDep
from services.gateway.keys import service
from services.gateway.keys.schemas import KeyCreate, KeyCreated, KeyRead, KeyRotate
from services.gateway.pagination import CursorQuery, LimitQuery, Page
from shared.tenants import DEFAULT_OVERLAP_S

router = APIRouter(prefix="/v1/keys", tags=["keys"])


@router.post("", status_code=status.HTTP_201_CREATED, response_model=KeyCreated)
def create_key(body: KeyCreate, session: SessionDep, caller: CallerDep) -> KeyCreated:
    """A new key of the caller's tenant; the key is in this response only."""
    return service.create(session, caller.tenant_id, body)


@router.get("", response_model=Page[KeyRead])
def list_keys(
    session: SessionDep, caller: CallerDep, limit: LimitQuery = 20, cursor: CursorQuery = None
) -> Page[KeyRead]:
    """Every key of the tenant, revoked and expired ones included, oldest first (never a key or its hash)."""
    items, next_cursor = service.list_page(session, caller.tenant_id, limit, cursor)
    return Page[KeyRead](items=items, next_cursor=next_cursor)


@router.get("/{key_id}", response_model=KeyRead)
def get_key(key_id: uuid.UUID, session: SessionDep, caller: CallerDep) -> KeyRead:
    return service.get(session, caller.tenant_id, key_id)


@router.post("/{key_id}/revoke", response_model=KeyRead)
def revoke_key(key_id: uuid.UUID, session: SessionDep, caller: CallerDep) -> KeyRead:
    """Revoke the key: its next request is 401. A key cannot revoke itself while it is the tenant's last
    admin key (409 `last_admin_key`)."""
    return service.revoke(session, caller, key_id)


@router.post("/{key_id}/rotate", status_code=status.HTTP_201_CREATED, response_model=KeyCreated)
def rotate_key(key_id: uuid.UUID, session: SessionDep, caller: CallerDep, body: KeyRotate | None = None) -> KeyCreated:
    """A new key with the same name and scopes; the old key keeps working for `overlap_seconds`, then expires."""
    overlap = body.overlap_seconds if body is not None else DEFAULT_OVERLAP_S
    return service.rotate(session, caller.tenant_id, key_id, overlap)
