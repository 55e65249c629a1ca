"""Postgres unreachable: the gateway answers 503 database_unavailable with Retry-After, never 500."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError

from shared.db.outage import database_unavailable
from tests.factories import Tenant
from tests.system import clear_caches


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])  # closed when the block ends: connections are refused


@pytest.fixture
def outage(env: dict[str, str], acme: Tenant, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient]:
    """The gateway of a migrated database with a real key, whose database URL then points at a closed port."""
    dead = make_url(env["ONBRAND_DATABASE_URL"]).set(host="127.0.0.1", port=closed_port())
    monkeypatch.setenv("ONBRAND_DATABASE_URL", dead.render_as_string(hide_password=False))
    clear_caches()
    from services.gateway.app import create_app

    with TestClient(create_app(), raise_server_exceptions=False) as client:
        yield client
    monkeypatch.setenv("ONBRAND_DATABASE_URL", env["ONBRAND_DATABASE_URL"])
    clear_caches()


@pytest.mark.parametrize("path", ["/v1/campaigns", "/v1/brands", "/v1/assets"])
def test_reads_answer_503_with_retry_after(outage: TestClient, acme: Tenant, path: str) -> None:
    response = outage.get(path, headers=acme.auth)
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "5"
    body: dict[str, Any] = response.json()
    assert body["code"] == "database_unavailable" and body["status"] == 503
    assert "127.0.0.1" not in (body["detail"] or "")  # no connection detail leaks


def test_writes_answer_503_and_readyz_is_not_ready(outage: TestClient, acme: Tenant) -> None:
    created = outage.post("/v1/brands", json={"name": "Stride"}, headers=acme.auth)
    assert created.status_code == 503 and created.json()["code"] == "database_unavailable"
    ready = outage.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["database"] == "unavailable"


def test_only_connection_failures_count_as_an_outage() -> None:
    refused = psycopg.OperationalError("connection refused")  # no SQLSTATE: the server never answered
    assert database_unavailable(OperationalError("SELECT 1", {}, refused))
    assert database_unavailable(refused)
    shutting_down = psycopg.errors.AdminShutdown("terminating connection due to administrator command")
    assert database_unavailable(OperationalError("SELECT 1", {}, shutting_down))
    # A query's own error is a bug or a conflict, not an outage: it stays a 500 (or its own problem).
    assert not database_unavailable(IntegrityError("INSERT", {}, psycopg.errors.UniqueViolation("duplicate")))
    assert not database_unavailable(OperationalError("SELECT", {}, psycopg.errors.DeadlockDetected("deadlock")))
    assert not database_unavailable(ValueError("not a database error"))
