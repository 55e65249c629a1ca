"""A new campaign's rows in one CALL (migration 0019, onbrand_create_campaign): the campaign, its quota ledger row,
its first event's outbox rows and its Idempotency-Key, with the brand's existence checked in the same statement,
committed and made durable before the CALL returns.

The request goes as one jsonb document, which Postgres reads into the rows' column types: the driver's work per
statement and per bound parameter was most of a creation's database cost on the client, with ~35 parameters and the
BEGIN, COMMIT and WAL-flush statements around them. The rows are committed together or not at all (a quota refused
at commit, migration 0018, rolls all of it back).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.config import Settings
from shared.db import aio, json_columns

IDEMPOTENCY_KEY_TAKEN = "idempotency_keys_pkey"  # the constraint a concurrent request with the same key violates
_CALL = "CALL onbrand_create_campaign($1::jsonb)"


@dataclass(frozen=True)
class Event:
    """The campaign's first event: its outbox rows' shared fields and their targets (id, url, endpoint id)."""

    event_id: str
    event_type: str
    payload: dict[str, Any] | None
    now: datetime
    leased_until: datetime
    targets: list[dict[str, str | None]]


@dataclass(frozen=True)
class Claim:
    key: str
    request_hash: str


@dataclass(frozen=True)
class Inserted:
    created_at: datetime
    updated_at: datetime
    deliveries: list[uuid.UUID]  # the outbox rows written (an endpoint disabled meanwhile has none)


async def insert(
    settings: Settings,
    campaign: dict[str, Any],
    reserved: int,
    admitted_under: dict[str, Any] | None,
    event: Event,
    claim: Claim | None,
) -> Inserted | None:
    """Write it all and commit; None (nothing written) when the brand is not the tenant's. `campaign`: its columns'
    values (the procedure's list). Refused at commit: the quota's error (shared.limits.refusal reads it). With
    `claim`, a psycopg.errors.UniqueViolation on IDEMPOTENCY_KEY_TAKEN says a concurrent request took the key."""
    request = {
        "campaign": campaign,
        "usage_id": uuid.uuid4(),
        "reserved": reserved,
        "admitted_under": admitted_under,
        "event": vars(event),
        "claim": vars(claim) if claim is not None else None,
    }
    # ids and times as text, which Postgres reads back into their columns
    rows = await aio.write(settings, aio.Call(_CALL, json_columns.dumps(request)))
    created_at, updated_at, deliveries = rows[0]
    if created_at is None:
        return None
    return Inserted(created_at, updated_at, list(deliveries))
