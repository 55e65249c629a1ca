"""Storage cleanup after a DELETE: removes every object under a storage_deletions row's prefix.

The gateway sends `onbrand.delete_objects` after the commit that deleted the rows; the beat's
`onbrand.sweep_deletions` runs every row that is due (a lost send, a storage error's retry, a campaign's
second pass). A row is locked while its prefix is emptied, so two workers never race on it, and it is deleted
only once its last pass succeeded: until then the sweep keeps coming back.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import outbox
from shared.db.models import StorageDeletion
from shared.db.session import session_scope
from shared.deletions import SECOND_PASS_SECONDS
from shared.storage import get_storage

log = logging.getLogger("onbrand.cleanup")

SWEEP_LIMIT = 100  # rows per beat tick: a burst of deletions drains over a few ticks
MAX_BACKOFF_SECONDS = 3600


def _lock(session: Session, deletion_id: uuid.UUID) -> StorageDeletion | None:
    stmt = select(StorageDeletion).where(StorageDeletion.id == deletion_id).with_for_update(skip_locked=True)
    return session.scalar(stmt)


def delete_objects(deletion_id: str, at: datetime | None = None, second_pass: float = SECOND_PASS_SECONDS) -> str:
    """Empty one row's prefix if it is due: 'deleted' (row gone), 'again' (a pass left), 'retry', 'skipped'."""
    at = at or outbox.utcnow()
    with session_scope() as session:
        row = _lock(session, uuid.UUID(deletion_id))
        if row is None or row.next_attempt_at > at:
            return "skipped"  # done, held by another worker, or not due yet
        try:
            removed = get_storage().delete_prefix(row.prefix)
        except Exception as exc:  # noqa: BLE001 - any storage failure is retried; the rows are gone already
            row.attempts += 1
            row.last_error = f"{type(exc).__name__}: {exc}"[:2000]
            row.next_attempt_at = at + timedelta(seconds=min(30 * 2**row.attempts, MAX_BACKOFF_SECONDS))
            log.warning("deleting %s failed (attempt %d): %s", row.prefix, row.attempts, row.last_error)
            return "retry"
        log.info("deleted %d object(s) of %s %s", removed, row.resource, row.resource_id)
        row.passes_left -= 1
        if row.passes_left > 0:
            row.next_attempt_at, row.last_error = at + timedelta(seconds=second_pass), None
            return "again"
        session.delete(row)
        return "deleted"


def sweep(at: datetime | None = None) -> int:
    """Run every due row (oldest first, at most SWEEP_LIMIT); how many were run."""
    at = at or outbox.utcnow()
    with session_scope() as session:
        due = select(StorageDeletion.id).where(StorageDeletion.next_attempt_at <= at)
        ids = list(session.scalars(due.order_by(StorageDeletion.next_attempt_at).limit(SWEEP_LIMIT)))
    return sum(delete_objects(str(i), at) != "skipped" for i in ids)
