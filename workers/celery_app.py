"""The Celery application of the workers. Queues and routing come from shared.queue."""

from __future__ import annotations

import logging
import os
import threading

from celery import Celery
from celery.signals import worker_process_init, worker_ready, worker_shutdown

from shared.config import get_settings
from shared.queue import configure
from workers import observability

app = Celery("onbrand", include=["workers.tasks"])
configure(app, get_settings())
observability.install(app)


_pool_registration: threading.Event | None = None


@worker_ready.connect
def _join_gpu_pool(sender: object, **_: object) -> None:
    """A worker that consumes GPU queues announces its slots to the fair dispatcher (workers.engine.gpu_pool)."""
    from workers.engine import gpu_pool

    global _pool_registration
    controller = sender.controller  # type: ignore[attr-defined]
    queues = list(sender.app.amqp.queues.consume_from)  # type: ignore[attr-defined]
    _pool_registration = gpu_pool.keep_registered(get_settings(), controller.hostname, queues, controller.concurrency)


@worker_shutdown.connect
def _leave_gpu_pool(sender: object, **_: object) -> None:
    """Leave at once rather than when the registration expires: the dispatcher stops counting these slots."""
    from workers.engine import gpu_pool

    if _pool_registration is not None:
        _pool_registration.set()
        try:
            gpu_pool.unregister(get_settings(), sender.hostname)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - Redis away: the registration expires on its own
            logging.getLogger("onbrand").warning("could not leave the GPU pool", exc_info=True)


@worker_process_init.connect
def _fresh_connections(**_: object) -> None:
    # A forked child must not share the parent's DB connections.
    from shared.db.session import get_engine

    get_engine().dispose(close=False)
    logging.getLogger("onbrand").setLevel(get_settings().log_level)
    if get_settings().warm_models:
        threading.Thread(target=warm_models, name="onbrand-warm", daemon=True).start()


def warm_models() -> None:
    """Load this worker's embedded models in the background, so the first campaign does not
    wait ~20 s for the LLM. The adapters' own locks make a task that arrives meanwhile wait."""
    queues = set(os.environ.get("ONBRAND_WORKER_QUEUES", "").split(","))
    try:
        if "llm" in queues:
            from workers.models import llm_local

            llm_local.load()
        if "retrieval" in queues:
            from workers.models import text_embedder

            text_embedder.load()
        _warm_gpu_models(queues)
    except Exception:  # a broken model must fail the task that needs it, loudly, not the worker
        logging.getLogger("onbrand").exception("model warm-up failed")


def _warm_gpu_models(queues: set[str]) -> None:
    """Segmenter, generator, DINOv2 and the aesthetic scorer once per pool process; every task then reuses
    them (registry caches)."""
    from shared.model_specs import aesthetic_spec, fidelity_spec, generate_spec, segment_spec
    from workers.models import registry

    settings = get_settings()
    wanted = {
        "segment": segment_spec(settings),
        "generate": generate_spec(settings),
        "qc": fidelity_spec(settings),
        "scoring": aesthetic_spec(settings),
    }
    for queue, spec in wanted.items():
        if queue in queues and spec is not None:
            registry.load(spec)
