"""One database transaction per request, with hooks that run after it commits or rolls back.

Services never commit. They register what must happen once their writes are durable
(sending tasks: a worker must never look for a row that is not committed yet) and what
undoes side effects outside the database (stored objects) if the transaction fails.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from functools import partial

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy.orm import Session

from shared import queue
from shared.db.session import AUTOCOMMIT, new_session
from shared.limits import SAFE_METHODS

log = logging.getLogger(__name__)

Hook = Callable[[], None]
_AFTER_COMMIT = "after-commit"
_ON_ROLLBACK = "rollback"


def after_commit(session: Session, hook: Hook) -> None:
    session.info.setdefault(_AFTER_COMMIT, []).append(hook)


def on_rollback(session: Session, hook: Hook) -> None:
    session.info.setdefault(_ON_ROLLBACK, []).append(hook)


def enqueue(session: Session, task: str, *ids: object, priority: int | None = None) -> None:
    """Send task `task` with id arguments once this request's transaction has committed."""
    after_commit(session, partial(_send, task, *ids, priority=priority))


def _send(task: str, *ids: object, priority: int | None = None) -> None:
    # Looked up on the module at call time so tests can replace shared.queue.send.
    if priority is None:
        queue.send(task, *ids)
    else:
        queue.send(task, *ids, priority=priority)


def _run(hooks: list[Hook], what: str) -> None:
    # The transaction's outcome is final here; one failing hook must not stop the others
    # nor turn a committed request into an error response (sweepers re-drive lost sends).
    for hook in hooks:
        try:
            hook()
        except Exception:
            log.exception("%s hook failed", what)


async def transaction(request: Request) -> AsyncIterator[Session]:
    """Yield the request's session (commit on success, roll back otherwise), then run the hooks for the outcome.

    GET, HEAD and OPTIONS only read (or write in one statement): their session runs each statement in autocommit,
    which spares the BEGIN and COMMIT round trips. async, so that a request costs no thread-pool hop to open its
    session, nor to close one with nothing to wait for (a read, or a session that wrote nothing): a real
    commit or rollback, or hooks to run (they send tasks), go to the thread pool."""
    session = new_session(read_only=request.method in SAFE_METHODS)
    try:
        yield session
    except BaseException:
        await _end(session, _rollback, _ON_ROLLBACK)
        raise
    await _end(session, _commit, _AFTER_COMMIT)


async def _end(session: Session, end: Callable[[Session], None], hooks: str) -> None:
    def finish() -> None:
        end(session)
        _run(session.info.pop(hooks, []), hooks)

    autocommit = session.get_bind().get_execution_options().get("isolation_level") == AUTOCOMMIT
    if (session.in_transaction() and not autocommit) or session.info.get(hooks):
        await run_in_threadpool(finish)
    else:
        finish()  # nothing here waits: an autocommit "commit" and closing a session that has none are no-ops


def _commit(session: Session) -> None:
    try:
        session.commit()
    except BaseException:
        session.rollback()
        _run(session.info.pop(_ON_ROLLBACK, []), _ON_ROLLBACK)
        raise
    finally:
        session.close()


def _rollback(session: Session) -> None:
    try:
        session.rollback()
    finally:
        session.close()
