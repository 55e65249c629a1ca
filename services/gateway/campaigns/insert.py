"""A new campaign's rows in one statement: the campaign, its quota ledger row, its first event's outbox rows and its
Idempotency-Key, with the brand's existence checked in the same statement.

The ORM's unit of work costs a flush per table plus the reads before them (several round trips and most of a
creation's CPU); here data-modifying CTEs write everything in one statement, committed in the same round trip
(shared.db.aio.write), and return what the response needs (the server's timestamps). The rows are committed together
or not at all (a quota refused at commit, migration 0018, rolls all of it back).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from typing import Any

from psycopg.types.json import Jsonb

from shared.config import Settings
from shared.db import aio
from shared.db.models import OutboxStatus

# The campaign's columns the statement writes.
CAMPAIGN_COLUMNS = (
    "id",
    "tenant_id",
    "brand_id",
    "brief",
    "product_asset_ids",
    "sizes",
    "safe_zones",
    "copy",
    "top_k",
    "qc_policy",
    "max_retry_attempts",
    "max_prompt_revisions",
    "priority",
    "webhook_url",
    "webhook_secret",
    "event_sequence",
    "push_urls",
    "status",
    "round",
    "review_round",
    "state",
    "loop",
    "screening",
)
_JSON = (
    "product_asset_ids",
    "sizes",
    "safe_zones",
    "copy",
    "push_urls",
    "state",
    "loop",
    "screening",
    "admitted_under",
    "payload",
    "targets",
)


def _param(name: str) -> str:
    return f"%({name})s"


_SQL = f"""
WITH brand AS (
    SELECT id FROM brands WHERE id = %(brand_id)s AND tenant_id = %(tenant_id)s
), campaign AS (
    INSERT INTO campaigns ({", ".join(CAMPAIGN_COLUMNS)})
    SELECT {", ".join("brand.id" if c == "brand_id" else _param(c) for c in CAMPAIGN_COLUMNS)} FROM brand
    RETURNING id, created_at, updated_at
), ledger AS (
    INSERT INTO image_usage (id, tenant_id, campaign_id, reserved, admitted_under)
    SELECT %(usage_id)s, %(tenant_id)s, campaign.id, %(reserved)s, %(admitted_under)s FROM campaign
), deliveries AS (
    -- An endpoint's row only while it exists and is enabled, to its current URL: the list of endpoints may come
    -- from a process's cache (tenant_config), the row never goes to an endpoint disabled or deleted since.
    INSERT INTO webhook_deliveries (id, tenant_id, campaign_id, url, endpoint_id, event_id, event_type, payload,
        status, attempts, next_attempt_at, leased_until)
    SELECT d.id, %(tenant_id)s, campaign.id, coalesce(e.url, d.url), d.endpoint_id, %(event_id)s, %(event_type)s,
        %(payload)s, '{OutboxStatus.PENDING.value}', 0, %(now)s, %(leased_until)s
    FROM campaign
    CROSS JOIN jsonb_to_recordset(%(targets)s) AS d(id uuid, url text, endpoint_id uuid)
    LEFT JOIN webhook_endpoints e ON e.id = d.endpoint_id AND e.tenant_id = %(tenant_id)s AND e.enabled
    WHERE d.endpoint_id IS NULL OR e.id IS NOT NULL
    RETURNING id
){{claim}}
SELECT campaign.created_at, campaign.updated_at, ARRAY(SELECT id FROM deliveries) AS deliveries,
    -- Commit without waiting for the disk when the quota lock is taken at commit (aio.write flushes after).
    CASE WHEN %(defer_flush)s THEN set_config('synchronous_commit', 'off', true) END AS deferred
FROM campaign
"""
_CLAIM = """, claim AS (
    -- Waits on a concurrent request's uncommitted key, then fails (IDEMPOTENCY_KEY_TAKEN) if that one committed.
    INSERT INTO idempotency_keys (tenant_id, key, request_hash, campaign_id)
    SELECT %(tenant_id)s, %(key)s, %(request_hash)s, campaign.id FROM campaign
)"""
IDEMPOTENCY_KEY_TAKEN = "idempotency_keys_pkey"  # the constraint a concurrent request with the same key violates


@cache
def _statement(with_key: bool) -> str:
    return _SQL.replace("{claim}", _CLAIM if with_key else "")


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
    """Write it all and commit; None (nothing written) when the brand is not the tenant's. `campaign`: the values
    of CAMPAIGN_COLUMNS. Refused at commit: the quota's error (shared.limits.refusal reads it). With `claim`, a
    psycopg.errors.UniqueViolation on IDEMPOTENCY_KEY_TAKEN says a concurrent request took the key."""
    params: dict[str, Any] = {name: campaign[name] for name in CAMPAIGN_COLUMNS}
    params |= {
        "usage_id": uuid.uuid4(),
        "reserved": reserved,
        "admitted_under": admitted_under,
        "event_id": event.event_id,
        "event_type": event.event_type,
        "payload": event.payload,
        "now": event.now,
        "leased_until": event.leased_until,
        "targets": event.targets,
        "defer_flush": admitted_under is not None,
    }
    if claim is not None:
        params |= {"key": claim.key, "request_hash": claim.request_hash}
    for name in _JSON:
        if params[name] is not None:
            params[name] = Jsonb(params[name])
    statement = aio.Read(_statement(claim is not None), params)
    rows = await aio.write(settings, statement, flush_wal=admitted_under is not None)
    if not rows:
        return None
    created_at, updated_at, deliveries, _ = rows[0]
    return Inserted(created_at, updated_at, list(deliveries))
