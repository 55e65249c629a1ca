"""API keys read once per gateway process for a few seconds, with revocation honoured on the next request.

The gateway authenticates every request. Reading the key and its tenant's limits from Postgres each time costs a
round trip per request, so each process keeps what it read for `auth_cache_ttl_s`. Whatever can turn a valid key
invalid or change a tenant's limits (revocation, rotation, limit overrides; shared.tenants, shared.limits) increments
the key epoch in Redis once its transaction commits. The rate limiter's script, which every authenticated request
runs anyway, returns the epoch with its decision: a process that sees a new epoch empties its cache and reads the key
again before answering, so a revoked key is refused on its next request in every process at no extra round trip.
Expiry is checked against the cached expires_at on every request. When Redis cannot be reached (the limiter fails
open), an entry lives at most auth_cache_ttl_s.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import redis
from sqlalchemy import event
from sqlalchemy.orm import Session

from shared.config import Settings, get_settings

log = logging.getLogger(__name__)

KEY_EPOCH = "onbrand:keys:epoch"
_ANNOUNCED = "onbrand.key_epoch_announced"
MAX_ENTRIES = 10_000  # keys a process holds at once; more and it starts over (a flood of distinct valid keys)


@dataclass(frozen=True)
class Caller:
    """Who sent a request: the valid key's id, tenant, prefix, scopes and expiry, and the tenant's limit overrides
    (tenants.limits), as read from Postgres."""

    key_id: uuid.UUID
    tenant_id: uuid.UUID
    prefix: str
    scopes: frozenset[str]
    last_used_at: datetime | None
    expires_at: datetime | None
    limit_overrides: dict[str, Any] | None

    def valid_at(self, now: datetime) -> bool:
        return self.expires_at is None or self.expires_at > now


@dataclass(frozen=True)
class _Entry:
    caller: Caller
    epoch: int | None  # the key epoch this process knew when it read the caller
    read_at: float  # time.monotonic()


class KeyCache:
    """key hash -> Caller, per process, thread-safe (the gateway's sync dependencies run in a thread pool)."""

    def __init__(self, ttl_s: float) -> None:
        self.ttl_s = ttl_s
        self.epoch: int | None = None  # the newest key epoch this process has seen
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> Caller | None:
        entry = self._entries.get(key_hash)
        if entry is None or entry.epoch != self.epoch or time.monotonic() - entry.read_at > self.ttl_s:
            return None
        return entry.caller

    def put(self, key_hash: str, caller: Caller, epoch: int | None) -> None:
        """Keep `caller`, read from Postgres while `epoch` was the newest key epoch seen (taken before the read)."""
        if self.ttl_s <= 0:
            return
        with self._lock:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[key_hash] = _Entry(caller, epoch, time.monotonic())

    def used(self, key_hash: str, at: datetime) -> None:
        """The key's last_used_at was recorded: keep the cached caller from writing it again this minute."""
        with self._lock:
            entry = self._entries.get(key_hash)
            if entry is not None:
                self._entries[key_hash] = replace(entry, caller=replace(entry.caller, last_used_at=at))

    def saw_epoch(self, epoch: int) -> bool:
        """Record the epoch the limiter returned; True when it moved since this process last looked (the cache
        was emptied: callers read before may be stale)."""
        with self._lock:
            if epoch == self.epoch:
                return False
            moved = self.epoch is not None
            self.epoch = epoch
            self._entries.clear()
            return moved


def announce_change(session: Session) -> None:
    """Increment the key epoch once `session` commits: every gateway process re-reads its keys."""
    if session.info.get(_ANNOUNCED):
        return
    session.info[_ANNOUNCED] = True
    event.listen(session, "after_commit", _bump, once=True)


def _bump(session: Session) -> None:
    session.info.pop(_ANNOUNCED, None)
    bump_epoch(get_settings())


def bump_epoch(settings: Settings) -> None:
    try:
        with redis.Redis.from_url(settings.broker_url, socket_timeout=2, socket_connect_timeout=2) as client:
            client.incr(KEY_EPOCH)
    except (redis.RedisError, RuntimeError, OSError) as exc:
        # The change is committed; gateways see it when their cached entries expire (auth_cache_ttl_s).
        log.warning("key epoch not announced (Redis unavailable), cached keys expire on their own: %s", exc)
