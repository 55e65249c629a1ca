"""Producer routing (shared.queue) and the worker app's registered tasks agree."""

from __future__ import annotations

from celery import Celery

from shared.queue import CPU_QUEUES, GPU_QUEUES, TASK_QUEUES
from shared.stages import PIPELINE


def test_every_routed_task_is_registered_and_vice_versa(worker_app: Celery) -> None:
    registered = {name for name in worker_app.tasks if name.startswith("onbrand.")}
    assert registered == set(TASK_QUEUES)


def test_queues_and_reliability_settings(worker_app: Celery) -> None:
    assert set(TASK_QUEUES.values()) <= set(CPU_QUEUES) | set(GPU_QUEUES)
    assert {TASK_QUEUES[f"onbrand.{s}"] for s in ("segment", "generate", "qc")} <= set(GPU_QUEUES)
    assert {TASK_QUEUES[f"onbrand.{s}"] for s in ("decompose", "caption", "retrieve", "rank")} <= set(CPU_QUEUES)
    conf = worker_app.conf
    assert conf.task_acks_late and conf.task_reject_on_worker_lost and conf.worker_prefetch_multiplier == 1
    for stage in PIPELINE:
        task = worker_app.tasks[f"onbrand.{stage}"]
        assert task.acks_late and task.reject_on_worker_lost
