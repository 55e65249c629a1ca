"""Whether a database error means "the database is unreachable" (retry later) rather than "this query is wrong".

The gateway answers such errors with 503 + Retry-After; workers never fail a campaign because of one (the run's
lease lapses and the stalled sweep re-sends it once Postgres is back)."""

from __future__ import annotations

from psycopg import OperationalError as PsycopgOperationalError
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

# SQLSTATEs of a server that is there but cannot serve: shutting down, crashed, starting up (class 08 is the
# connection's own failures; a missing SQLSTATE means the connection never got an answer).
_UNAVAILABLE_SQLSTATES = frozenset({"57P01", "57P02", "57P03"})


def database_unavailable(exc: BaseException) -> bool:
    """A connection-level database failure (refused, dropped, pool exhausted): it may succeed when retried.
    Query errors (a constraint, a bad statement, a deadlock) are not."""
    if isinstance(exc, PoolTimeoutError):
        return True
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    orig = exc.orig if isinstance(exc, DBAPIError) else exc
    if not isinstance(orig, PsycopgOperationalError):
        return False
    sqlstate = getattr(orig, "sqlstate", None)
    return sqlstate is None or sqlstate.startswith("08") or sqlstate in _UNAVAILABLE_SQLSTATES
