"""The GPU pool as the dispatcher (workers.engine.dispatch) sees it: how many GPU stage runs can be in flight.

Each worker that consumes a GPU queue registers its node name, queues and concurrency in Redis under a key that
expires unless renewed. A worker that starts (an autoscaler adding a GPU pod) adds its slots without configuration;
one that is killed drops out within POOL_TTL_S. ONBRAND_GPU_DISPATCH_SLOTS fixes the number instead.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import redis

from shared.config import Settings
from shared.queue import GPU_QUEUES

log = logging.getLogger("onbrand.dispatch")

KEY_PREFIX = "onbrand:gpu-pool:"
POOL_TTL_S = 30
RENEW_S = 10


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


def register(settings: Settings, node: str, queues: Iterable[str], concurrency: int) -> bool:
    """Announce (or renew) a worker's GPU slots; False when it consumes no GPU queue (nothing registered)."""
    gpu = sorted(set(queues) & set(GPU_QUEUES))
    if not gpu:
        return False
    value = json.dumps({"queues": gpu, "concurrency": concurrency})
    _client(settings.broker_url).set(KEY_PREFIX + node, value, ex=POOL_TTL_S)
    return True


def unregister(settings: Settings, node: str) -> None:
    _client(settings.broker_url).delete(KEY_PREFIX + node)


def capacity(settings: Settings) -> Capacity:
    """The fixed slots when configured, else the registered workers' concurrency; at least one slot, so that with
    no GPU worker alive one run per free slot still waits in its queue (a queue-length autoscaler sees work)."""
    if settings.gpu_dispatch_slots is not None:
        return Capacity.uniform(settings.gpu_dispatch_slots)
    client = _client(settings.broker_url)
    keys = list(client.scan_iter(match=KEY_PREFIX + "*", count=500))
    workers = [json.loads(raw) for raw in client.mget(keys) if raw is not None] if keys else []
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
