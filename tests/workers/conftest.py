"""Fixtures of the worker tests."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

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
