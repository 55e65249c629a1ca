"""Fixtures of the worker tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
from celery import Celery

from tests.factories import FakeOpenAI


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    """A loopback OpenAI-compatible server answering what it is scripted to (see FakeOpenAI)."""
    fake = FakeOpenAI()
    thread = threading.Thread(target=fake.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()


@pytest.fixture
def worker_app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    """The worker's Celery app with every task registered; its broker is never contacted."""
    monkeypatch.setenv("ONBRAND_REDIS_URL", "redis://127.0.0.1:1/0")
    from shared.config import get_settings

    get_settings.cache_clear()
    import workers.tasks  # noqa: F401 - registers the tasks
    from workers.celery_app import app

    yield app
    get_settings.cache_clear()
