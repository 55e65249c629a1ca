"""The Celery application of the workers. Queues and routing come from shared.queue."""

from __future__ import annotations

import logging
import os
import threading

from celery import Celery
from celery.signals import worker_process_init

from shared.config import get_settings
from shared.queue import configure
from workers import observability

app = Celery("onbrand", include=["workers.tasks"])
configure(app, get_settings())
observability.install(app)


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
