"""The GPU pool as the dispatcher (workers.engine.dispatch) sees it: how many GPU stage runs can be in flight.

Each worker that consumes a GPU queue registers its node name, queues and concurrency in Redis, in one hash (a field
per node) with an expiry that renewals push forward. A worker that starts (an autoscaler adding a GPU pod) adds its
slots without configuration; one that is killed drops out within POOL_TTL_S. ONBRAND_GPU_DISPATCH_SLOTS fixes the
number instead.

Why one hash and not a key per node: the dispatcher reads the pool whenever a GPU run ends. Finding per-node keys
takes a SCAN of the whole keyspace (queues, rate-limit tokens, idempotency keys, query replies): O(keys in Redis) per
GPU run, 0.8 ms of CPU at 5,000 keys and growing with them. The hash is one round trip whatever else Redis holds.
Expiry is judged by Redis's clock (TIME, inside the scripts), so the workers' clocks need not agree.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import redis

from shared.config import Settings
from shared.queue import GPU_QUEUES

log = logging.getLogger("onbrand.dispatch")

POOL_KEY = "onbrand:gpu-pool"  # hash: node -> {"queues": [...], "concurrency": n, "expires": Redis time in s}
# The registry of the release before (2026-12): a key per node, found by SCAN. Still written, not read, so that its
# dispatchers count this release's workers during a rollout (expand, then contract: docs/operations.md); the next
# release stops writing it.
LEGACY_PREFIX = "onbrand:gpu-pool:"
POOL_TTL_S = 30
RENEW_S = 10

# Both scripts' `now`: Redis's clock, in seconds.
_NOW = """
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1e6
"""
# KEYS[1] the pool, ARGV node, entry (JSON, no expiry), TTL: the node's entry with its expiry set from Redis's
# clock, expired entries of killed nodes removed, and the hash itself expiring when no node renews. Writes after TIME
# need effects replication: the default from Redis 5, asked for on older ones (a no-op, or absent, on newer ones).
_REGISTER = (
    "if redis.replicate_commands then redis.replicate_commands() end\n"  # before TIME
    + _NOW
    + """local fields = redis.call('HGETALL', KEYS[1])
for i = 1, #fields, 2 do
  if fields[i] ~= ARGV[1] and cjson.decode(fields[i + 1]).expires <= now then redis.call('HDEL', KEYS[1], fields[i]) end
end
local entry = cjson.decode(ARGV[2])
entry.expires = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], ARGV[1], cjson.encode(entry))
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""
)
# KEYS[1] the pool: the entries not yet expired by Redis's clock.
_LIVE = (
    _NOW
    + """local fields = redis.call('HGETALL', KEYS[1])
local live = {}
for i = 2, #fields, 2 do
  if cjson.decode(fields[i]).expires > now then live[#live + 1] = fields[i] end
end
return live
"""
)


@dataclass(frozen=True)
class Capacity:
    """GPU stage runs that may be in flight: in all, and per GPU queue (the workers that consume it)."""

    total: int
    per_queue: dict[str, int]

    @classmethod
    def uniform(cls, slots: int) -> Capacity:
        return cls(slots, {queue: slots for queue in GPU_QUEUES})


@lru_cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)


@lru_cache
def _script(url: str, source: str) -> Any:
    """The script registered on the URL's client: sent by its SHA, loaded again if Redis restarted without it."""
    return _client(url).register_script(source)


def register(settings: Settings, node: str, queues: Iterable[str], concurrency: int) -> bool:
    """Announce (or renew) a worker's GPU slots; False when it consumes no GPU queue (nothing registered)."""
    gpu = sorted(set(queues) & set(GPU_QUEUES))
    if not gpu:
        return False
    entry = json.dumps({"queues": gpu, "concurrency": concurrency})
    _script(settings.broker_url, _REGISTER)(keys=[POOL_KEY], args=[node, entry, POOL_TTL_S])
    _client(settings.broker_url).set(LEGACY_PREFIX + node, entry, ex=POOL_TTL_S)
    return True


def unregister(settings: Settings, node: str) -> None:
    client = _client(settings.broker_url)
    client.hdel(POOL_KEY, node)
    client.delete(LEGACY_PREFIX + node)


def capacity(settings: Settings) -> Capacity:
    """The fixed slots when configured, else the registered workers' concurrency; at least one slot, so that with
    no GPU worker alive one run per free slot still waits in its queue (a queue-length autoscaler sees work)."""
    if settings.gpu_dispatch_slots is not None:
        return Capacity.uniform(settings.gpu_dispatch_slots)
    workers = [json.loads(raw) for raw in _script(settings.broker_url, _LIVE)(keys=[POOL_KEY])]
    per_queue = {q: sum(w["concurrency"] for w in workers if q in w["queues"]) for q in GPU_QUEUES}
    total = sum(w["concurrency"] for w in workers)
    if total == 0:
        return Capacity.uniform(1)
    return Capacity(total, per_queue)


def keep_registered(settings: Settings, node: str, queues: Iterable[str], concurrency: int) -> threading.Event:
    """Register now and renew every RENEW_S from a daemon thread until the returned event is set."""
    queues = list(queues)
    stop = threading.Event()

    def renew() -> None:
        while True:
            try:
                if not register(settings, node, queues, concurrency):
                    return
            except redis.RedisError as exc:  # Redis restarting: the next renewal registers again
                log.warning("GPU pool registration of %s failed: %s", node, exc)
            if stop.wait(RENEW_S):
                return

    threading.Thread(target=renew, name="onbrand-gpu-pool", daemon=True).start()
    return stop
