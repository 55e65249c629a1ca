"""What a campaign creation reads of its tenant's settings, kept per gateway process.

A creation screens the brief against the tenant's blocked terms and writes an outbox row for each enabled webhook
endpoint subscribed to campaign.queued. Reading both costs a statement on every creation, although they change
rarely; so each process keeps them for `auth_cache_ttl_s`, like the API keys (shared.key_cache), and on the same
terms: whatever changes them (PUT /v1/guardrails/blocked-terms, the webhook endpoints' create, update and delete)
announces the change through the key epoch (shared.key_cache.announce_change), which every process hears on its
key-changes subscription (or checks per request while that is down), so the change applies from the next request
on, in every process. When Redis cannot be reached an entry lives at most auth_cache_ttl_s.

An endpoint listed here is only a candidate receiver: the insert re-reads it (enabled, URL) in its own statement
(services/gateway/campaigns/insert.py), so an endpoint disabled by a worker, or deleted, never gets a row.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

from sqlalchemy import and_, select
from sqlalchemy.orm import Session

from shared.db.models import Tenant, WebhookEndpoint

MAX_ENTRIES = 10_000  # tenants a process holds at once; more and it starts over


@dataclass(frozen=True)
class Endpoint:
    """An enabled webhook endpoint: its id and the event patterns it subscribes to."""

    id: uuid.UUID
    patterns: tuple[str, ...]


@dataclass(frozen=True)
class TenantConfig:
    blocked_terms: tuple[str, ...]
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True)
class _Entry:
    config: TenantConfig
    epoch: int | None  # the key epoch this process knew before it read the config
    read_at: float  # time.monotonic()


_entries: dict[uuid.UUID, _Entry] = {}
_lock = threading.Lock()


def read(session: Session, tenant_id: uuid.UUID) -> TenantConfig:
    """The tenant's blocked terms and enabled webhook endpoints, in one statement."""
    rows = session.execute(
        select(Tenant.blocked_terms, WebhookEndpoint.id, WebhookEndpoint.event_types)
        .outerjoin(WebhookEndpoint, and_(WebhookEndpoint.tenant_id == Tenant.id, WebhookEndpoint.enabled.is_(True)))
        .where(Tenant.id == tenant_id)
        .order_by(WebhookEndpoint.created_at)  # the order emit() used: outbox rows in creation order
    ).all()
    terms = tuple(str(t) for t in (rows[0].blocked_terms or [])) if rows else ()
    endpoints = tuple(Endpoint(r.id, tuple(r.event_types or ())) for r in rows if r.id is not None)
    return TenantConfig(terms, endpoints)


def get(session: Session, tenant_id: uuid.UUID, epoch: int | None, ttl_s: float) -> TenantConfig:
    """The cached config when it was read under `epoch` (the newest key epoch this process has seen) less than
    ttl_s ago; else read now and kept. ttl_s <= 0: read every time."""
    entry = _entries.get(tenant_id)
    if entry is not None and entry.epoch == epoch and time.monotonic() - entry.read_at <= ttl_s:
        return entry.config
    config = read(session, tenant_id)
    if ttl_s > 0:
        with _lock:
            if len(_entries) >= MAX_ENTRIES:
                _entries.clear()
            _entries[tenant_id] = _Entry(config, epoch, time.monotonic())
    return config


def clear() -> None:
    with _lock:
        _entries.clear()
