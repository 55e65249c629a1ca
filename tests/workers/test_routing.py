"""Producer routing (shared.queue) and the worker app's registered tasks agree."""

from __future__ import annotations

import pytest

from shared.queue import CPU_QUEUES, GPU_QUEUES, TASK_QUEUES
from shared.stages import PIPELINE


@pytest.fixture
def worker_app(monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ONBRAND_REDIS_URL", "redis://127.0.0.1:1/0")  # never contacted
    from shared.config import get_settings

    get_settings.cache_clear()
    import workers.tasks  # noqa: F401 - registers the tasks
    from workers.celery_app import app

    yield app
    get_settings.cache_clear()


def test_every_routed_task_is_registered_and_vice_versa(worker_app) -> None:  # type: ignore[no-untyped-def]
    registered = {name for name in worker_app.tasks if name.startswith("onbrand.")}
    assert registered == set(TASK_QUEUES)


def test_queues_and_reliability_settings(worker_app) -> None:  # type: ignore[no-untyped-def]
    assert set(TASK_QUEUES.values()) <= set(CPU_QUEUES) | set(GPU_QUEUES)
    assert {TASK_QUEUES[f"onbrand.{s}"] for s in ("segment", "generate", "qc")} <= set(GPU_QUEUES)
    assert {TASK_QUEUES[f"onbrand.{s}"] for s in ("decompose", "caption", "retrieve", "rank")} <= set(CPU_QUEUES)
    conf = worker_app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    for stage in PIPELINE:
        task = worker_app.tasks[f"onbrand.{stage}"]
        assert task.acks_late and task.reject_on_worker_lost
