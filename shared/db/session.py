"""Engine and session factory. Commit only at the request or task boundary."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from shared.config import get_settings
from shared.db import json_columns

_IDLE_SINCE = "onbrand_idle_since"
AUTOCOMMIT = "AUTOCOMMIT"


def sqlalchemy_url(url: str) -> str:
    """Accept plain postgres:// URLs and use psycopg 3."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


@lru_cache
def get_engine() -> Engine:
    settings = get_settings()
    engine = create_engine(
        sqlalchemy_url(settings.db_url),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        connect_args={"connect_timeout": 5},
        json_serializer=json_columns.dumps,
        json_deserializer=json_columns.loads,
    )
    ping_when_idle(engine, settings.db_ping_idle_s)
    return engine


def ping_when_idle(engine: Engine, idle_s: float) -> None:
    """Ping a pooled connection before use only when it sat idle longer than idle_s.

    pool_pre_ping would ping on every checkout: a round trip per request on the gateway's hottest paths. A connection
    in steady use needs none, and a disconnect seen on one invalidates the whole pool (SQLAlchemy's disconnect
    handling), so after a Postgres restart one statement fails and every later checkout gets a fresh connection.
    """

    @event.listens_for(engine, "checkin")
    def _idle_from(dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get(_IDLE_SINCE)
        if since is None or time.monotonic() - since <= idle_s:
            return  # new, or in steady use
        try:
            alive = engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error as exc:
            alive = not engine.dialect.is_disconnect(exc, dbapi_connection, None)
        if not alive:
            raise DisconnectionError("idle connection did not answer a ping")  # the pool replaces it


@lru_cache
def _factory(read_only: bool = False) -> sessionmaker[Session]:
    # Reads run in autocommit on the same pool: no BEGIN and COMMIT round trips around a request that only reads.
    # Under READ COMMITTED each statement sees its own snapshot either way, so a read loses nothing by it.
    engine = get_engine()
    return sessionmaker(
        engine.execution_options(isolation_level=AUTOCOMMIT) if read_only else engine, expire_on_commit=False
    )


def new_session(read_only: bool = False) -> Session:
    return _factory(read_only)()


@contextmanager
def session_scope() -> Iterator[Session]:
    """A unit of work: commits on success, rolls back on error."""
    session = new_session()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
