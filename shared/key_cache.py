"""API keys read once per gateway process for a few seconds, with revocation honoured on the next request.

The gateway authenticates every request. Reading the key and its tenant's limits from Postgres each time costs a
round trip per request, so each process keeps what it read for `auth_cache_ttl_s`. Whatever can turn a valid key
invalid or change a tenant's limits (revocation, rotation, limit overrides; shared.tenants, shared.limits) increments
the key epoch in Redis once its transaction commits, and publishes the new epoch on KEY_CHANGES in the same script.
Each gateway process subscribes to KEY_CHANGES on its event loop (EpochWatch, started by its first authenticated
request): a process that learns of a new epoch empties its cache and reads keys again. While the subscription is
live a cached key is trusted without asking Redis, so a revoked key is refused in every process as soon as the
publication reaches it (the revoking request's response waits for the publication; delivery takes a loop turn).
While it is not (not yet subscribed, dropped, Redis down, or no pong for STALE_S) each request checks the epoch
itself, as before: from the rate limiter's reply when it asked Redis, else with a GET. A (re)subscription reads the
epoch once it is listening, so what was announced while it was down is caught. Expiry is checked against the cached
expires_at on every request. When Redis cannot be reached at all, an entry lives at most auth_cache_ttl_s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import redis
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sqlalchemy import event
from sqlalchemy.orm import Session

from shared.config import Settings, get_settings

log = logging.getLogger(__name__)

KEY_EPOCH = "onbrand:keys:epoch"
KEY_CHANGES = "onbrand:keys:changes"  # pub/sub channel: the new epoch, published with each increment
# Increment and publish in one step, so that no subscriber can miss an increment the GET after its SUBSCRIBE missed.
_BUMP = "local epoch = redis.call('INCR', KEYS[1]) redis.call('PUBLISH', ARGV[1], epoch) return epoch"
PING_S = 1.0  # an idle subscription pings this often
CLOSE_S = 1.0  # the most a stopping subscription waits to close its connection
STALE_S = 3.0  # no message or pong for this long: the subscription counts as down (a silent network partition)
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
        self._watch: EpochWatch | None = None

    def subscribed(self, settings: Settings) -> bool:
        """True while this process's subscription to key changes is live, so that a cached key needs no check of
        the epoch. The first call on an event loop starts the subscription there (it is live a round trip or two
        later); the gateway's event loop calls this on every authenticated request."""
        if not settings.key_epoch_pubsub:
            return False
        watch, loop = self._watch, asyncio.get_running_loop()
        if watch is None or watch.loop is not loop or watch.stopped:
            watch = self._watch = EpochWatch(self, settings.broker_url, loop)
        return watch.live()

    async def close(self) -> None:
        """Stop the subscription (the app's shutdown)."""
        if self._watch is not None:
            await self._watch.stop()
            self._watch = None

    @property
    def live(self) -> bool:
        """Whether the subscription to key changes is live now (subscribed() without starting it)."""
        return self._watch is not None and self._watch.live()

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
            client.eval(_BUMP, 1, KEY_EPOCH, KEY_CHANGES)
    except (redis.RedisError, RuntimeError, OSError) as exc:
        # The change is committed; gateways see it when their cached entries expire (auth_cache_ttl_s).
        log.warning("key epoch not announced (Redis unavailable), cached keys expire on their own: %s", exc)


class EpochWatch:
    """One process's subscription to KEY_CHANGES, on the event loop it was started from; it feeds every epoch it
    hears to the cache and reconnects (with a fresh epoch read) after any failure."""

    def __init__(self, cache: KeyCache, url: str, loop: asyncio.AbstractEventLoop) -> None:
        self.cache, self.url, self.loop = cache, url, loop
        self.name = f"onbrand-key-epoch-{os.getpid()}-{uuid.uuid4().hex[:8]}"  # CLIENT LIST shows it
        self._up = False  # subscribed and the epoch read after subscribing
        self._heard = 0.0  # time.monotonic() of the last message or pong
        self._task = loop.create_task(self._run(), name=self.name)

    @property
    def stopped(self) -> bool:
        return self._task.done()

    def live(self) -> bool:
        return self._up and time.monotonic() - self._heard < STALE_S

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.wait({self._task}, timeout=CLOSE_S)

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            heard = self._heard
            try:
                await self._listen()
            except (redis.RedisError, OSError, ValueError) as exc:
                log.warning("key changes subscription down, cached keys checked per request: %s", exc)
            backoff = 0.1 if self._heard > heard else min(backoff * 2, 5.0)  # it was up a while: start over
            await asyncio.sleep(backoff)

    async def _listen(self) -> None:
        # No retries inside redis-py: its silent reconnect would resubscribe without this knowing what it missed.
        client = redis.asyncio.Redis.from_url(
            self.url, socket_timeout=2, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0), client_name=self.name
        )
        pubsub = client.pubsub()
        try:
            await pubsub.subscribe(KEY_CHANGES)
            confirmed = await pubsub.get_message(timeout=2)
            if confirmed is None or confirmed["type"] != "subscribe":
                raise redis.ConnectionError(f"no subscription confirmed: {confirmed!r}")
            # Listening now: this read catches whatever was announced before, every later increment is heard.
            self.cache.saw_epoch(int(await client.get(KEY_EPOCH) or 0))
            self._heard, self._up = time.monotonic(), True
            await self._receive(pubsub)
        finally:
            self._up = False
            # Closing what failed may fail again, or hang on the connection a cancelled read held: bounded, so that
            # a cancelled watch ends (an event loop closing waits for it).
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_S):
                    await pubsub.aclose()
                    await client.aclose()

    async def _receive(self, pubsub: redis.asyncio.client.PubSub) -> None:
        while True:
            message = await pubsub.get_message(timeout=PING_S)
            now = time.monotonic()
            if message is None:
                if now - self._heard > STALE_S:
                    raise redis.TimeoutError(f"no pong for {STALE_S} s")
                await pubsub.ping()
                continue
            self._heard = now
            if message["type"] == "message":
                self.cache.saw_epoch(int(message["data"]))
            elif message["type"] != "pong":  # a resubscription: what came meanwhile is unknown
                raise redis.ConnectionError(f"unexpected {message['type']} on {KEY_CHANGES}")
