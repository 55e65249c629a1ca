"""Operational routes: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging
from typing import Any

import redis
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from sqlalchemy import text

from services.gateway.errors import problem_response
from shared import metrics as shared_metrics
from shared.config import Settings
from shared.db.session import get_engine

log = logging.getLogger(__name__)
router = APIRouter(tags=["system"])

PROBE_TIMEOUT_S = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (no dependency is checked: a DB outage must not restart every pod). async: answered on
    the event loop, without a hop to the thread pool."""
    return {"status": "ok"}


def _check_database() -> str:
    try:
        with get_engine().connect() as connection:
            connection.execute(text("SELECT 1"))
    except Exception as exc:
        log.warning("readiness: database check failed: %s", exc)
        return "unavailable"
    return "ok"


def _broker_client(request: Request, settings: Settings) -> redis.Redis:
    client = getattr(request.app.state, "broker_client", None)
    if client is None:  # one client (and connection pool) per app, created on first probe
        client = redis.Redis.from_url(
            settings.broker_url, socket_connect_timeout=PROBE_TIMEOUT_S, socket_timeout=PROBE_TIMEOUT_S
        )
        request.app.state.broker_client = client
    return client


def _check_broker(request: Request, settings: Settings) -> str:
    try:
        _broker_client(request, settings).ping()
    except Exception as exc:  # includes "no Redis configured" (RuntimeError)
        log.warning("readiness: broker check failed: %s", exc)
        return "unavailable"
    return "ok"


@router.get("/readyz", responses={503: {"description": "The database or the broker is unreachable."}})
def readyz(request: Request) -> Any:
    settings: Settings = request.app.state.settings
    checks = {"database": _check_database(), "broker": _check_broker(request, settings)}
    if all(v == "ok" for v in checks.values()):
        return {"status": "ok", "checks": checks}
    failed = ", ".join(name for name, v in checks.items() if v != "ok")
    return problem_response(request, 503, "not_ready", "Not ready", f"Unavailable: {failed}.", extra={"checks": checks})


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """This process's metrics, then the queue depths read from the broker now (left out, and
    logged, when the broker does not answer: a scrape must not fail with it)."""
    body = generate_latest(REGISTRY)
    try:
        body += generate_latest(
            shared_metrics.registry_of(
                shared_metrics.QueueCollector(_broker_client(request, request.app.state.settings))
            )
        )
    except Exception as exc:
        log.warning("metrics: queue depth unavailable: %s", exc)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
