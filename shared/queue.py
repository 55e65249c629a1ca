"""Task names, queues and the producer side of Celery, shared by gateway and workers.

The gateway sends tasks by name (it never imports workers/). Tasks take ids only and
are sent only after the transaction that created their state has committed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
import uuid
import weakref
from bisect import bisect_right
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import redis
import redis.asyncio
from celery import Celery
from opentelemetry.trace import SpanKind

from shared import tracing
from shared.config import Settings, get_settings
from shared.stages import STAGES

CPU_QUEUES = ("llm", "retrieval", "scoring", "webhooks")
GPU_QUEUES = ("segment", "generate", "qc")

# Tasks that are not pipeline stages -> queue. Routing is by task name so a producer needs nothing but the name.
SERVICE_TASK_QUEUES: dict[str, str] = {
    "onbrand.embed_assets": "retrieval",
    "onbrand.embed_query": "retrieval",
    "onbrand.sweep_embeddings": "retrieval",
    "onbrand.reembed": "retrieval",
    "onbrand.send_webhook": "webhooks",
    "onbrand.sweep_outbox": "webhooks",
    "onbrand.push_results": "webhooks",
    "onbrand.sweep_stalled": "llm",
    "onbrand.route_feedback": "llm",  # a hosted LLM may read the reviewer's words
    "onbrand.learn_ranking": "scoring",
    "onbrand.delete_objects": "webhooks",  # storage I/O after a DELETE (shared.deletions)
    "onbrand.sweep_deletions": "webhooks",
}
# Every task -> its queue: the stages' from the stage table, then the service tasks.
TASK_QUEUES: dict[str, str] = {**{s.task: s.queue for s in STAGES}, **SERVICE_TASK_QUEUES}


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Periodic tasks (run by `onbrand worker --beat`). sweep-outbox sends the webhook deliveries and DAM
    pushes whose scheduled retry is due (retries live in Postgres, not as Celery countdowns) and any
    whose send after commit was lost; the others are safety nets for lost sends."""
    return {
        "sweep-outbox": {"task": "onbrand.sweep_outbox", "schedule": settings.outbox_dispatch_seconds},
        # Re-sends stage runs past their lease: what recovers a dead worker's or a lost message's work.
        "sweep-stalled": {"task": "onbrand.sweep_stalled", "schedule": settings.stalled_sweep_seconds},
        "sweep-embeddings": {"task": "onbrand.sweep_embeddings", "schedule": 60.0},
        "sweep-deletions": {"task": "onbrand.sweep_deletions", "schedule": 60.0},
    }


def configure(app: Celery, settings: Settings) -> None:
    app.conf.update(
        broker_url=settings.broker_url,
        task_routes={name: {"queue": queue} for name, queue in TASK_QUEUES.items()},
        task_default_queue="llm",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_transport_options={
            "visibility_timeout": settings.broker_visibility_timeout,
            "unacked_restore_throttle": settings.broker_restore_throttle,
        },
        worker_hijack_root_logger=False,
        # SIGTERM (`onbrand worker` remaps it to Celery's cold shutdown, REMAP_SIGTERM=SIGQUIT): while a
        # task runs, the worker waits this long (all of it: Celery sleeps), then cancels what is left and
        # returns it to its queue at once, not after the visibility timeout. An idle worker stops at once.
        worker_soft_shutdown_timeout=settings.worker_soft_shutdown_seconds,
        beat_schedule=beat_schedule(settings),
    )


@lru_cache
def producer() -> Celery:
    app = Celery("onbrand-producer")
    configure(app, get_settings())
    return app


# Redis queues are polled by priority step (0 first, kombu's default steps 0/3/6/9): bulk work such
# as embedding a 50k-asset import goes last so a search query or a campaign stage never waits on it.
BULK_PRIORITY = 9
# Message header with the send time (epoch seconds): the worker observes the wait (onbrand_task_queue_wait_seconds).
SENT_AT_HEADER = "onbrand_sent_at"


def send(name: str, *args: Any, priority: int | None = None, expires: float | None = None) -> None:
    """Send a task by name with id arguments only. Call after commit."""
    with _producer_span(name):
        task_args, task_id, headers = _task(name, args)
        url = get_settings().broker_url
        if url.startswith(REDIS_SCHEMES):
            _broker(url).lpush(*redis_message(name, task_args, task_id, priority, expires, headers))
        else:  # a broker URL only kombu reads
            producer().send_task(
                name, args=task_args, task_id=task_id, priority=priority, expires=expires, headers=headers
            )


async def send_all(tasks: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
    """Send tasks (name, id arguments) from an event loop, without blocking it, each message as send() builds it;
    returns once Redis has them. Call after commit."""
    url = get_settings().broker_url
    if not url.startswith(REDIS_SCHEMES):  # a broker URL only kombu reads: its blocking client, off the loop
        for name, args in tasks:
            await asyncio.to_thread(send, name, *args)
        return
    messages = []
    for name, args in tasks:
        with _producer_span(name):
            task_args, task_id, headers = _task(name, args)
            messages.append(redis_message(name, task_args, task_id, None, None, headers))
    await _async_pusher(url).push(messages)


REDIS_SCHEMES = ("redis://", "rediss://")


def _producer_span(name: str) -> AbstractContextManager[Any]:
    """A producer span: its context goes into the message headers (_task), and the task's span becomes its child."""
    if name not in TASK_QUEUES:
        raise KeyError(f"unknown task {name!r}")
    return tracing.tracer().start_as_current_span(
        f"send {name}", kind=SpanKind.PRODUCER, attributes={"messaging.destination.name": TASK_QUEUES[name]}
    )


def _task(name: str, args: tuple[Any, ...]) -> tuple[list[Any], str | None, dict[str, str]]:
    """(the message's arguments, the task id, its headers), inside the producer span."""
    task_args = [str(a) if not isinstance(a, int) else a for a in args]
    return task_args, stage_task_id(name, *args), {**tracing.inject(), SENT_AT_HEADER: f"{time.time():.6f}"}


class _Pusher:
    """One event loop's LPUSHes to one Redis, grouped: the messages of every caller that arrives while a round trip
    is under way go out together in the next (one pipeline), as a database groups concurrent commits. A burst of
    creations then costs the loop one round trip per group, not one per creation; a lone caller waits for no one."""

    def __init__(self, client: redis.asyncio.Redis) -> None:
        self.client = client
        self.waiting: list[tuple[list[tuple[str, str]], asyncio.Future[None]]] = []
        self.draining: asyncio.Task[None] | None = None

    async def push(self, messages: list[tuple[str, str]]) -> None:
        done = asyncio.get_running_loop().create_future()
        self.waiting.append((messages, done))
        if self.draining is None:
            self.draining = asyncio.create_task(self._drain())
        await done

    async def _drain(self) -> None:
        try:
            while self.waiting:
                group, self.waiting = self.waiting, []
                outcome = await self._send([m for messages, _ in group for m in messages])
                for _, done in group:
                    if done.done():
                        continue  # its caller was cancelled: the messages went out all the same
                    if outcome is None:
                        done.set_result(None)
                    else:
                        done.set_exception(outcome)
        finally:
            self.draining = None

    async def _send(self, messages: list[tuple[str, str]]) -> Exception | None:
        try:
            if len(messages) == 1:  # a pipeline's bookkeeping costs more than the push itself
                await self.client.lpush(*messages[0])
            else:
                pipe = self.client.pipeline(transaction=False)
                for message in messages:
                    pipe.lpush(*message)
                await pipe.execute()
        except Exception as exc:  # each caller gets it (and logs it: its row waits for the sweeps)
            return exc
        return None


# One pusher (one asyncio client) per event loop and URL: a client's connections belong to the loop that opened them.
_PUSHERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Pusher]] = weakref.WeakKeyDictionary()


def _async_pusher(url: str) -> _Pusher:
    pushers = _PUSHERS.setdefault(asyncio.get_running_loop(), {})
    if url not in pushers:
        pushers[url] = _Pusher(redis.asyncio.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5))
    return pushers[url]


async def close_async_brokers() -> None:
    """Close this event loop's clients (the gateway's shutdown)."""
    for pusher in _PUSHERS.pop(asyncio.get_running_loop(), {}).values():
        await pusher.client.aclose()


@lru_cache
def _broker(url: str) -> redis.Redis:
    # Thread-safe (a connection pool): the gateway's after-commit hooks send from its thread pool.
    return redis.Redis.from_url(url)


# Fields of a task message Celery's sender sets the same way for every task we send (protocol 2).
_FIXED_HEADERS: dict[str, Any] = {
    "lang": "py",
    "shadow": None,
    "eta": None,
    "group": None,
    "group_index": None,
    "retries": 0,
    "timelimit": [None, None],
    "parent_id": None,
    "kwargsrepr": "{}",
    "ignore_result": None,
    "replaced_task_nesting": 0,
    "stamped_headers": None,
    "stamps": {},
}
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}
_REPLY_TO = str(uuid.uuid4())  # Celery's reply queue for results: none are kept (task_ignore_result)
_PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport: a priority's list is "<queue>\x06\x16<priority>"
_PRIORITY_STEPS = (0, 3, 6, 9)  # ... for the priority rounded down to one of these steps (its default)


@lru_cache(maxsize=4)
def _origin(pid: int) -> str:
    # Per process (the pid changes in a forked worker); the host name is a system call otherwise made per message.
    return f"gen{pid}@{socket.gethostname()}"


def redis_message(
    name: str,
    args: list[Any],
    task_id: str | None,
    priority: int | None,
    expires: float | None,
    headers: dict[str, str],
) -> tuple[str, str]:
    """(the Redis list, the message) that Celery's send_task would push through kombu's Redis transport: a Celery
    protocol 2 task message (celery.app.amqp.as_task_v2) in kombu's envelope (kombu.transport.virtual's
    basic_publish, kombu.transport.redis's _put). Built here because Celery and kombu spend more CPU on a send than
    the rest of a campaign creation; tests/shared/test_queue.py holds it equal to what they send."""
    task_id = task_id or str(uuid.uuid4())
    queue = TASK_QUEUES[name]
    expiry = (datetime.now(UTC) + timedelta(seconds=expires)).isoformat() if expires is not None else None
    body = json.dumps([args, {}, _EMBED]).encode()
    message: dict[str, Any] = {
        "body": base64.b64encode(body).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            **_FIXED_HEADERS,
            "task": name,
            "id": task_id,
            "expires": expiry,
            "root_id": task_id,
            "argsrepr": repr(args),
            "origin": _origin(os.getpid()),
            **headers,
        },
        "properties": {
            "correlation_id": task_id,
            "reply_to": _REPLY_TO,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": priority or 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    if expires is not None:
        message["properties"]["expiration"] = str(int(max(expires, 0) * 1000))  # kombu's per-message TTL, ms
    step = _PRIORITY_STEPS[bisect_right(_PRIORITY_STEPS, min(max(priority or 0, 0), 9)) - 1]
    return (f"{queue}{_PRIORITY_SEP}{step}" if step else queue), json.dumps(message)


STAGE_TASK_NAMES = frozenset(s.task for s in STAGES)
# Stages on the GPU queues: their runs wait in Postgres for the fair dispatcher (workers/engine/dispatch.py).
GPU_STAGES = frozenset(s.name for s in STAGES if s.queue in GPU_QUEUES)
GPU_STAGE_TASKS = frozenset(s.task for s in STAGES if s.queue in GPU_QUEUES)


def stage_task_id(name: str, *args: Any) -> str | None:
    """A stage task's Celery id, derived from its stage run (campaign:task:round:item), so cancel can revoke
    a campaign's work by id without storing ids; None (a random id) for any other task."""
    if name not in STAGE_TASK_NAMES or not args:
        return None
    campaign, rnd, item = (list(args) + [0, 0])[:3]
    return f"{campaign}:{name}:{rnd}:{item}"


def revoke(task_ids: list[str], *, terminate: bool = False) -> None:
    """Revoke tasks on every worker: a queued one is dropped when it arrives, a running one (terminate) has its
    pool process killed (SIGKILL: a GPU task may not return to the interpreter for seconds). Workers keep the
    ids in memory; one started later does not know them, which is why the claim also skips terminal campaigns."""
    if task_ids:
        producer().control.revoke(task_ids, terminate=terminate, signal="SIGKILL")
