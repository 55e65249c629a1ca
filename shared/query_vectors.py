"""Query embeddings for gateway search: a cache in Redis, else a short RPC to the retrieval queue.

The gateway holds no models (torch lives only in workers), so it asks a worker: it sends
onbrand.embed_query with the query and a one-off reply key, and waits on that key with BLPOP.
Vectors are cached per (configured models, query) so repeated and popular queries cost one
Redis GET. When no worker answers in time, search degrades to its keyword part and says so.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from functools import lru_cache
from typing import Any

import redis

from shared import queue
from shared.config import Settings
from shared.search import Modality, Space

CACHE_TTL_S = 24 * 3600
REPLY_TTL_S = 60
PREFIX = "onbrand:qvec:v1:"


@lru_cache
def _client(url: str) -> redis.Redis:
    return redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=2)


def _cache_key(q: str, settings: Settings) -> str:
    models = f"{settings.text_embedding_model}\0{settings.image_embedding_model}\0{q}"
    return PREFIX + hashlib.sha256(models.encode()).hexdigest()


def reply(settings: Settings, reply_key: str, payload: dict[str, Any]) -> None:
    """Worker side: hand the vectors back to the waiting gateway request."""
    pipe = _client(settings.broker_url).pipeline()
    # one statement per command: redis-py types a pipeline's commands as returning their reply, not the pipeline
    pipe.rpush(reply_key, json.dumps(payload))
    pipe.expire(reply_key, REPLY_TTL_S)
    pipe.execute()


def _ask(q: str, settings: Settings, timeout_s: float) -> dict[str, Any] | None:
    reply_key = f"onbrand:reply:{uuid.uuid4().hex}"
    # expires: a query nobody waits for any more is dropped instead of computed later.
    queue.send("onbrand.embed_query", q, reply_key, expires=timeout_s + 5)
    # The socket must outwait the BLPOP: the shared client's 10 s read timeout under a longer wait was a 500.
    waiting = redis.Redis.from_url(settings.broker_url, socket_timeout=timeout_s + 5, socket_connect_timeout=2)
    try:
        answer = waiting.blpop([reply_key], timeout=timeout_s)
    finally:
        waiting.close()
    return None if answer is None else json.loads(answer[1])


def _space(payload: dict[str, Any] | None, modality: Modality) -> Space | None:
    if not payload:
        return None
    return Space(model=payload["model"], dim=int(payload["dim"]), vector=payload["vector"], modality=modality)


def query_spaces(q: str, settings: Settings) -> tuple[Space | None, Space | None]:
    """(text space, image space) for q; (None, None) when no worker answered in time."""
    client = _client(settings.broker_url)
    key = _cache_key(q, settings)
    cached = client.get(key)
    payload = json.loads(cached) if cached else _ask(q, settings, settings.search_embed_timeout_seconds)
    if payload is None:
        return None, None
    if not cached:
        client.set(key, json.dumps(payload), ex=CACHE_TTL_S)
    return _space(payload.get("text"), "text"), _space(payload.get("image"), "image")
