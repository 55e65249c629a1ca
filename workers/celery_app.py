"""The Celery application of the workers. Queues and routing come from shared.queue."""
from __future__ import annotations

import logging

from celery import Celery
from celery.signals import worker_process_init

from shared.config import get_settings
from shared.queue import configure

app = Celery("onbrand", include=["workers.tasks"])
configure(app, get_settings())


@worker_process_init.connect
def _fresh_connections(**_: object) -> None:
    # A forked child must not share the parent's DB connections.
    from shared.db.session import get_engine

    get_engine().dispose(close=False)
    logging.getLogger("onbrand").setLevel(get_settings().log_level)
