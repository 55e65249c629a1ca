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

from shared.config import Settings
from shared.db import aio

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


_READ = """SELECT t.blocked_terms, e.id, e.event_types FROM tenants t
    LEFT JOIN webhook_endpoints e ON e.tenant_id = t.id AND e.enabled
    WHERE t.id = %(tenant_id)s
    ORDER BY e.created_at"""  # the order emit() uses: outbox rows in the endpoints' creation order


async def read(settings: Settings, tenant_id: uuid.UUID) -> TenantConfig:
    """The tenant's blocked terms and enabled webhook endpoints, in one statement."""
    rows = await aio.fetch(settings, aio.Read(_READ, {"tenant_id": tenant_id}))
    terms = tuple(str(t) for t in (rows[0][0] or [])) if rows else ()
    endpoints = tuple(Endpoint(eid, tuple(types or ())) for _, eid, types in rows if eid is not None)
    return TenantConfig(terms, endpoints)


async def get(settings: Settings, tenant_id: uuid.UUID, epoch: int | None) -> TenantConfig:
    """The cached config when it was read under `epoch` (the newest key epoch this process has seen) less than
    auth_cache_ttl_s ago; else read now and kept. auth_cache_ttl_s <= 0: read every time."""
    ttl_s = settings.auth_cache_ttl_s
    entry = _entries.get(tenant_id)
    if entry is not None and entry.epoch == epoch and time.monotonic() - entry.read_at <= ttl_s:
        return entry.config
    config = await read(settings, tenant_id)
    if ttl_s > 0:
        with _lock:
            if len(_entries) >= MAX_ENTRIES:
                _entries.clear()
            _entries[tenant_id] = _Entry(config, epoch, time.monotonic())
    return config


def clear() -> None:
    with _lock:
        _entries.clear()
