"""The Celery application of the workers. Queues and routing come from shared.queue."""

from __future__ import annotations

import logging
import os
import threading
import time

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
    """Load this pool process's stage modules and models in the background (workers.warmup), so that no campaign
    waits ~20 s for the LLM or a first import. A task that arrives meanwhile waits on the adapters' own locks.
    A background thread, not worker_process_init itself: Celery kills a child that takes over
    worker_proc_alive_timeout (4 s) to start. onbrand_model_warmup_seconds says when it is done, and how long."""
    from shared import heap, metrics
    from workers import warmup

    queues = {q for q in os.environ.get("ONBRAND_WORKER_QUEUES", "").split(",") if q}
    started = time.perf_counter()
    done = warmup.run(warmup.steps(queues, get_settings()))
    heap.freeze_start_up_heap()  # the models and modules just loaded stay out of every later full collection
    seconds = time.perf_counter() - started
    metrics.MODEL_WARMUP.labels("ok" if all(d.ok for d in done) else "error").observe(seconds)
    parts = ", ".join(f"{d.name} {d.seconds:.1f} s{'' if d.ok else ' (failed)'}" for d in done)
    logging.getLogger("onbrand").info("warm-up of %s in %.1f s: %s", ",".join(sorted(queues)), seconds, parts)
