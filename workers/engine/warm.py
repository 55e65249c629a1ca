"""The engine's hot-path statements compiled before a pool process takes its first task (workers.warmup).

SQLAlchemy compiles a statement the first time a process executes it and caches the result per engine: a new pool
process paid that in the claims and finishes of the first campaign it worked on (in-process, 11 of the 21
statements a campaign's engine compiled are these). Here each is executed once with parameters that match no row,
in a transaction that is rolled back: nothing is read or written, the compiled forms stay cached. Statements whose
shape depends on a stage's rows (their upserts, the ORM's flushes) are left to their first use.
"""

from __future__ import annotations

from shared import webhooks
from shared.db.session import new_session
from workers.engine import dispatch, records


def statements() -> None:
    """Execute the claim's, the finish's, the stage events' and the dispatcher's statements once each, rolled back."""
    session = new_session()
    try:
        dispatch.warm_up(session)
        records.warm_up(session)
        webhooks.warm_up(session)
    finally:
        session.rollback()
        session.close()
