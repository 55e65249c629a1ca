"""Idempotency-Key for the review writes (decisions, feedback, review links and their revocation).

The key is recorded before the write (a savepoint insert: a concurrent request with the same key waits on
ours and then replays it) and bound to the resource the write produced (IdempotencyKey.resource_id). The
request hash covers method, path and body, so one key cannot stand for two different writes. A write that
fails rolls back with its key: the retry runs again.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.gateway.errors import ProblemError, conflict
from shared.db.models import IdempotencyKey


@dataclass(frozen=True)
class Outcome:
    resource_id: uuid.UUID
    replayed: bool


def request_hash(method: str, path: str, body: BaseModel | None) -> str:
    """sha256 of method, path and the validated body as canonical JSON."""
    payload = body.model_dump(mode="json") if body is not None else None
    canonical = json.dumps([method.upper(), path, payload], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def earlier(session: Session, tenant_id: uuid.UUID, key: str, digest: str) -> IdempotencyKey | None:
    row = session.get(IdempotencyKey, (tenant_id, key), populate_existing=True)
    if row is not None and row.request_hash != digest:
        raise ProblemError(
            422,
            "idempotency_key_reused",
            "Idempotency key reused",
            "This Idempotency-Key was used with a different request (method, path or body).",
        )
    return row


def _replay(row: IdempotencyKey) -> Outcome:
    if row.resource_id is None:  # a campaign-creation key (its hash differs, so this is a defect guard)
        raise conflict("This Idempotency-Key belongs to another kind of request.")
    return Outcome(row.resource_id, replayed=True)


def run(
    session: Session,
    request: Request,
    tenant_id: uuid.UUID,
    campaign_id: uuid.UUID,
    key: str | None,
    body: BaseModel | None,
    write: Callable[[], uuid.UUID],
) -> Outcome:
    """Run `write` once per key: a replay returns the first write's resource id instead.
    The caller has checked that the tenant owns the campaign (the key row references it)."""
    if not key:
        return Outcome(write(), replayed=False)
    digest = request_hash(request.method, request.url.path, body)
    if (row := earlier(session, tenant_id, key, digest)) is not None:
        return _replay(row)
    row = IdempotencyKey(tenant_id=tenant_id, key=key, request_hash=digest, campaign_id=campaign_id)
    try:
        with session.begin_nested():  # waits on a concurrent insert of the same key, then fails
            session.add(row)
    except IntegrityError:
        if row in session:  # the savepoint's rollback expunges it already (SQLAlchemy 2)
            session.expunge(row)
        if (winner := earlier(session, tenant_id, key, digest)) is None:
            raise conflict("A concurrent request with this Idempotency-Key did not complete; retry.") from None
        return _replay(winner)
    row.resource_id = write()
    session.flush()
    return Outcome(row.resource_id, replayed=False)
