"""shared.queue.send pushes the task message itself (not through Celery's send_task): it must be the message Celery
and kombu would have pushed, field for field, on the same Redis list. Workers consuming it: tests/e2e."""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
import redis
import redis.asyncio
from celery import Celery

from shared import queue
from shared.config import get_settings

DB = 12  # a database of this test's own: end-to-end workers consume the server's db 0


@pytest.fixture
def broker(servers: tuple[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    if not servers[1].startswith("redis://"):
        pytest.skip("needs a TCP Redis URL")
    url = servers[1].rsplit("/", 1)[0] + f"/{DB}"
    redis.Redis.from_url(url).flushdb()
    monkeypatch.setenv("ONBRAND_REDIS_URL", url)
    get_settings.cache_clear()
    yield url
    redis.Redis.from_url(url).flushdb()
    get_settings.cache_clear()


def _pushed(url: str) -> dict[str, list[dict[str, Any]]]:
    """Every list in the database: key -> its messages, oldest first (LPUSH: the list's tail)."""
    client = redis.Redis.from_url(url)
    lists = [k for k in client.keys("*") if client.type(k) == b"list"]
    found = {k.decode(): [json.loads(m) for m in reversed(client.lrange(k, 0, -1))] for k in lists}
    client.flushdb()
    return found


def _comparable(message: dict[str, Any]) -> dict[str, Any]:
    """The message less what differs between any two sends (a fresh delivery tag, the sender's reply queue, the
    send time), its body decoded and its expiry to the second."""
    out = json.loads(json.dumps(message))
    props, headers = out["properties"], out["headers"]
    assert uuid.UUID(props.pop("delivery_tag")) and uuid.UUID(props.pop("reply_to"))
    assert float(headers.pop(queue.SENT_AT_HEADER)) > 0
    if headers["expires"] is not None:
        headers["expires"] = datetime.fromisoformat(headers["expires"]).replace(microsecond=0).isoformat()
    out["body"] = json.loads(base64.b64decode(out["body"]))
    return out


CASES: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("onbrand.decompose", (uuid.uuid4(),), {}),  # a stage: its id derives from the run
    ("onbrand.generate", (uuid.uuid4(), 1, 3), {}),  # ints stay ints
    ("onbrand.send_webhook", (uuid.uuid4(),), {}),  # a random id
    ("onbrand.embed_assets", (uuid.uuid4(),), {"priority": queue.BULK_PRIORITY}),  # its own priority list
    ("onbrand.embed_query", (uuid.uuid4(), "reply-key"), {"expires": 30.0}),
]


def test_send_pushes_what_celery_would(broker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    celery = Celery("reference")
    queue.configure(celery, get_settings())
    stage_task_id = queue.stage_task_id
    for name, args, options in CASES:
        # One fixed random id for both senders (send() draws one for a non-stage task).
        task_id = stage_task_id(name, *args) or str(uuid.uuid4())
        monkeypatch.setattr(queue, "stage_task_id", lambda *_, tid=task_id: tid)
        queue.send(name, *args, **options)
        ours = _pushed(broker)
        celery.send_task(
            name,
            args=[a if isinstance(a, int) else str(a) for a in args],
            task_id=task_id,
            headers={queue.SENT_AT_HEADER: "1.0"},
            **options,
        )
        theirs = _pushed(broker)
        assert list(ours) == list(theirs) and len(ours) == 1, (name, ours, theirs)
        key = next(iter(ours))
        assert len(ours[key]) == len(theirs[key]) == 1
        assert _comparable(ours[key][0]) == _comparable(theirs[key][0]), name
    celery.close()


def test_send_all_pushes_what_send_does(broker: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The event loop's sender (the campaign creation's: its decompose and webhook deliveries at once) pushes the
    messages send() pushes, each on its own queue's list, in the order given."""
    tasks = [(name, args) for name, args, options in CASES if not options]
    ids = {name: queue.stage_task_id(name, *args) or str(uuid.uuid4()) for name, args in tasks}
    monkeypatch.setattr(queue, "stage_task_id", lambda name, *_: ids[name])
    for batch in (tasks[:1], tasks):  # one message (a single push), several (a pipeline)
        for name, args in batch:
            queue.send(name, *args)
        one_by_one = _pushed(broker)
        asyncio.run(queue.send_all(batch))
        together = _pushed(broker)
        assert sorted(together) == sorted(one_by_one) and sum(map(len, together.values())) == len(batch)
        for key, messages in one_by_one.items():
            assert [_comparable(m) for m in together[key]] == [_comparable(m) for m in messages], key


def test_concurrent_send_all_share_round_trips_and_each_learns_the_outcome(
    broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Callers arriving while a push is under way go out together in the next one; every caller returns once its
    own messages are in Redis, or gets the error when the push fails."""
    ids = [uuid.uuid4() for _ in range(40)]

    async def burst() -> int:
        await asyncio.gather(*(queue.send_all([("onbrand.send_webhook", (i,))]) for i in ids))
        return sum(len(p.waiting) for p in queue._PUSHERS[asyncio.get_running_loop()].values())

    assert asyncio.run(burst()) == 0
    pushed = _pushed(broker)["webhooks"]
    assert sorted(json.loads(base64.b64decode(m["body"]))[0][0] for m in pushed) == sorted(map(str, ids))

    async def refused() -> list[BaseException | None]:
        results = await asyncio.gather(
            *(queue.send_all([("onbrand.send_webhook", (i,))]) for i in ids[:5]), return_exceptions=True
        )
        return list(results)

    async def down(self: Any, *args: Any, **kwargs: Any) -> Any:
        raise redis.ConnectionError("Redis is down")

    monkeypatch.setattr(redis.asyncio.Redis, "execute_command", down)  # a single push
    monkeypatch.setattr(redis.asyncio.client.Pipeline, "execute", down)
    outcomes = asyncio.run(refused())
    assert all(isinstance(o, redis.ConnectionError) for o in outcomes), outcomes
