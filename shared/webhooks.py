"""Webhooks: Standard Webhooks signing, the event catalogue and the transactional outbox.

`emit` writes one outbox row per receiver in the caller's transaction, so an event exists exactly
when the state change it announces does. The webhooks queue sends the rows (workers/jobs/webhooks.py)
after commit, and the beat's dispatcher re-sends them when a scheduled retry is due (shared.outbox).

Signing follows https://www.standardwebhooks.com: headers webhook-id / webhook-timestamp /
webhook-signature; `v1,` + base64 HMAC-SHA256 of `{id}.{timestamp}.{body}` with the endpoint's
`whsec_` secret; optionally `v1a,` + base64 ed25519 over the same bytes (public key `whpk_`).
Several signatures are space-separated: during a secret rotation the old and the new secret both
sign, so a receiver still holding the old one keeps verifying.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import DateTime, String, bindparam, column, inspect, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import UUID as PG_UUID
from sqlalchemy.orm import Session

from shared import crypto, outbox
from shared.config import get_settings
from shared.db.models import Campaign, OutboxStatus, WebhookDelivery, WebhookEndpoint
from shared.stages import progress

log = logging.getLogger("onbrand.webhooks")

CAMPAIGN_EVENTS = (
    "campaign.queued",
    "campaign.stage.started",
    "campaign.stage.completed",
    "campaign.candidates.ready",
    "campaign.completed",
    "campaign.partial",
    "campaign.failed",
    "campaign.cancelled",
    # Human review (services/gateway/reviews): results ready for a reviewer, each decision, the outcome.
    "campaign.review.requested",
    "result.approved",
    "result.rejected",
    "campaign.approved",
    "campaign.changes_requested",
)
# The events that end a campaign: whoever emits them (deliver, the runner's failure path, the gateway's
# cancel), they say progress 1.0, as the campaign resource does once it is terminal.
TERMINAL_EVENTS = frozenset({"campaign.completed", "campaign.partial", "campaign.failed", "campaign.cancelled"})
ENDPOINT_DISABLED = "webhook_endpoint.disabled"
EVENT_TYPES = (*CAMPAIGN_EVENTS, ENDPOINT_DISABLED)
TEST_EVENT = "webhook.test"  # sent on request to one endpoint, whatever it subscribes to
MAX_PAYLOAD_BYTES = 20_000  # events are thin: ids, status, links; never image bytes


# ----------------------------------------------------------------------------- secrets and keys


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def new_event_id() -> str:
    return "msg_" + uuid.uuid4().hex


def new_signing_key() -> str:
    """A v1a ed25519 private key as stored: encrypted (shared.crypto)."""
    raw = Ed25519PrivateKey.generate().private_bytes_raw()
    return crypto.encrypt("whsk_" + base64.b64encode(raw).decode())


def _private_key(stored: str) -> Ed25519PrivateKey:
    raw = base64.b64decode(crypto.decrypt(stored).removeprefix("whsk_"))
    return Ed25519PrivateKey.from_private_bytes(raw)


def public_key(stored: str) -> str:
    """The `whpk_` public key a receiver verifies v1a signatures with."""
    raw = _private_key(stored).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return "whpk_" + base64.b64encode(raw).decode()


def _signed_content(msg_id: str, timestamp: int, body: str) -> bytes:
    return f"{msg_id}.{timestamp}.{body}".encode()


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """One `v1,` signature: base64 HMAC-SHA256 of `{id}.{ts}.{body}` keyed by the secret's bytes."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, _signed_content(msg_id, timestamp, body), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def sign_v1a(stored_key: str, msg_id: str, timestamp: int, body: str) -> str:
    signature = _private_key(stored_key).sign(_signed_content(msg_id, timestamp, body))
    return "v1a," + base64.b64encode(signature).decode()


def signed_headers(
    hmac_secrets: Sequence[str], msg_id: str, body: str, timestamp: int | None = None, signing_keys: Sequence[str] = ()
) -> dict[str, str]:
    """Headers for one attempt. The timestamp is the send time (receivers reject stale ones)."""
    ts = int(time.time()) if timestamp is None else timestamp
    signatures = [sign(s, msg_id, ts, body) for s in hmac_secrets]
    signatures += [sign_v1a(k, msg_id, ts, body) for k in signing_keys]
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": " ".join(signatures),
        "content-type": "application/json",
    }


def endpoint_signers(endpoint: WebhookEndpoint, at: datetime) -> tuple[list[str], list[str]]:
    """(HMAC secrets, v1a keys) that sign for the endpoint now: the old ones too while in grace."""
    grace = endpoint.previous_secret_expires_at is not None and endpoint.previous_secret_expires_at > at
    hmac_secrets = [endpoint.secret] + ([endpoint.previous_secret] if grace and endpoint.previous_secret else [])
    keys = [endpoint.signing_key] if endpoint.signing_key else []
    if grace and endpoint.previous_signing_key:
        keys.append(endpoint.previous_signing_key)
    return hmac_secrets, keys


def rotate(endpoint: WebhookEndpoint, at: datetime, grace_seconds: int) -> None:
    """New secret (and v1a key); the current ones keep signing for `grace_seconds`."""
    endpoint.previous_secret, endpoint.secret = endpoint.secret, new_secret()
    if endpoint.signing_key:
        endpoint.previous_signing_key, endpoint.signing_key = endpoint.signing_key, new_signing_key()
    endpoint.previous_secret_expires_at = at + timedelta(seconds=grace_seconds)


# ----------------------------------------------------------------------------- events


def encode_body(event_type: str, data: dict[str, Any], timestamp: str) -> str:
    return json.dumps({"type": event_type, "timestamp": timestamp, "data": data}, separators=(",", ":"), default=str)


def subscribed(endpoint: WebhookEndpoint, event_type: str) -> bool:
    return subscribes(endpoint.event_types, event_type)


def subscribes(patterns: Sequence[str] | None, event_type: str) -> bool:
    """Whether an endpoint with these event patterns receives `event_type` (none: every event)."""
    return any(fnmatchcase(event_type, p) for p in patterns or ["*"])


def thin(event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """The payload itself, or, should it ever pass MAX_PAYLOAD_BYTES (a long error list), its ids,
    status and links with `truncated: true`: the receiver fetches the rest from the API."""
    if len(encode_body(event_type, data, "0000-00-00T00:00:00+00:00")) <= MAX_PAYLOAD_BYTES:
        return data
    log.warning("%s payload over %d bytes: sent without details", event_type, MAX_PAYLOAD_BYTES)
    keep = ("campaign_id", "sequence", "status", "stage", "round", "progress", "endpoint_id", "checked", "links")
    return {**{k: data[k] for k in keep if k in data}, "truncated": True}


class CampaignRef(Protocol):
    """What a campaign event's payload names of its campaign: a loaded row, or one being inserted."""

    @property
    def id(self) -> uuid.UUID: ...

    @property
    def event_sequence(self) -> int: ...


def campaign_links(campaign: CampaignRef) -> dict[str, str]:
    base = f"{get_settings().public_url.rstrip('/')}/v1/campaigns/{campaign.id}"
    # API links only, never storage URLs: a presigned URL expires before a late retry or a replay delivers it,
    # while these answer with freshly signed image URLs whenever the receiver reads them.
    return {
        "campaign": base,
        "results": f"{base}/results",
        "candidates": f"{base}/candidates",
        "report": f"{base}/report",
    }


def outbox_rows(
    event_id: str,
    event_type: str,
    payload: dict[str, Any],
    tenant_id: uuid.UUID,
    campaign_id: uuid.UUID | None,
    targets: Iterable[tuple[str, uuid.UUID | None]],
) -> list[WebhookDelivery]:
    lease = outbox_lease()  # the caller sends them right after commit
    return [
        WebhookDelivery(
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            campaign_id=campaign_id,
            url=url,
            endpoint_id=endpoint_id,
            event_id=event_id,
            event_type=event_type,
            payload=payload,
            status=OutboxStatus.PENDING,
            attempts=0,
            next_attempt_at=outbox.utcnow(),
            leased_until=lease,
        )
        for url, endpoint_id in targets
    ]


def campaign_payload(campaign: CampaignRef, event_type: str, data: dict[str, Any]) -> dict[str, Any]:
    """A campaign event's payload, with the campaign's current event_sequence (the caller incremented it)."""
    if event_type in TERMINAL_EVENTS:
        data = {**data, "progress": progress((), terminal=True)}
    return thin(
        event_type,
        {
            "campaign_id": str(campaign.id),
            "sequence": campaign.event_sequence,
            **data,
            "links": campaign_links(campaign),
        },
    )


def outbox_lease() -> datetime:
    """leased_until of a row sent right after commit: the dispatcher takes over if that send is lost."""
    return outbox.utcnow() + timedelta(seconds=outbox.lease_seconds(get_settings().webhook_timeout_seconds))


def _enabled_endpoints(session: Session, tenant_id: uuid.UUID) -> list[WebhookEndpoint]:
    return list(
        session.scalars(
            select(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id, WebhookEndpoint.enabled.is_(True))
        )
    )


# A campaign event's outbox rows in one statement: the campaign's webhook_url and the tenant's enabled endpoints
# whose patterns match, chosen and inserted by Postgres (no read of the endpoints first, nothing cached: an endpoint
# disabled or deleted a moment ago is not written to). A pattern is fnmatch's: `*` and `?` become LIKE's `%` and
# `_` (LIKE's own `%`, `_` and `\` escaped), which is exact for patterns without `[`; an endpoint with a `[`
# pattern (a character class, which LIKE lacks) or with patterns that are not a list is left out of the INSERT and
# returned instead, for `subscribes` to decide in Python (a second INSERT, only then).
_EMIT = (
    text(
        r"""
WITH endpoints AS (
    SELECT e.id, e.url, e.event_types,
        CASE WHEN jsonb_typeof(e.event_types) = 'array'
            THEN EXISTS (SELECT FROM jsonb_array_elements_text(e.event_types) AS p(pattern)
                         WHERE strpos(p.pattern, '[') > 0)
            ELSE true END AS in_python
    FROM webhook_endpoints e
    WHERE e.tenant_id = :tenant AND e.enabled
), targets AS (
    SELECT CAST(:campaign_url AS varchar) AS url, CAST(NULL AS uuid) AS endpoint_id, 0 AS n
    WHERE CAST(:campaign_url AS varchar) IS NOT NULL
    UNION ALL
    SELECT e.url, e.id, 1 FROM endpoints e
    WHERE NOT e.in_python AND (jsonb_array_length(e.event_types) = 0 OR EXISTS (
        SELECT FROM jsonb_array_elements_text(e.event_types) AS p(pattern)
        WHERE CAST(:event_type AS varchar) LIKE replace(replace(replace(replace(replace(
            p.pattern, '\', '\\'), '%', '\%'), '_', '\_'), '*', '%'), '?', '_')))
), inserted AS (
    INSERT INTO webhook_deliveries (id, tenant_id, campaign_id, url, endpoint_id, event_id, event_type, payload,
        status, attempts, next_attempt_at, leased_until)
    SELECT gen_random_uuid(), :tenant, :campaign, t.url, t.endpoint_id, :event_id, :event_type, :payload,
        :status, 0, :at, :lease
    FROM targets t ORDER BY t.n
    RETURNING id
)
SELECT id, CAST(NULL AS varchar) AS url, CAST(NULL AS jsonb) AS event_types FROM inserted
UNION ALL
SELECT id, url, event_types FROM endpoints WHERE in_python
"""
    )
    .bindparams(
        bindparam("tenant", type_=PG_UUID(as_uuid=True)),
        bindparam("campaign", type_=PG_UUID(as_uuid=True)),
        bindparam("campaign_url", type_=String()),
        bindparam("event_id", type_=String()),
        bindparam("event_type", type_=String()),
        bindparam("payload", type_=JSONB()),
        bindparam("status", type_=String()),
        bindparam("at", type_=DateTime(timezone=True)),
        bindparam("lease", type_=DateTime(timezone=True)),
    )
    .columns(column("id", PG_UUID(as_uuid=True)), column("url", String()), column("event_types", JSONB()))
)


def emit(session: Session, campaign: Campaign, event_type: str, data: dict[str, Any]) -> list[uuid.UUID]:
    """Outbox rows for the campaign's webhook_url and the tenant's subscribed endpoints; their ids.

    Written at once, in the caller's transaction, by one statement (_EMIT) on the session's connection. Every
    campaign event carries the campaign's next sequence number (the caller holds the campaign row), so a receiver
    can order events that arrive out of order after retries.
    """
    if not inspect(campaign).persistent:
        session.flush()  # the rows reference the campaign: it is in the database first
    campaign.event_sequence = (campaign.event_sequence or 0) + 1
    payload, event_id = campaign_payload(campaign, event_type, data), new_event_id()
    params = {
        "tenant": campaign.tenant_id,
        "campaign": campaign.id,
        "campaign_url": campaign.webhook_url or None,
        "event_id": event_id,
        "event_type": event_type,
        "payload": payload,
        "status": OutboxStatus.PENDING.value,
        "at": outbox.utcnow(),
        "lease": outbox_lease(),  # the caller sends them right after commit
    }
    ids, undecided = [], []
    for row_id, url, patterns in session.connection().execute(_EMIT, params):
        if url is None:
            ids.append(row_id)
        elif subscribes(patterns, event_type):
            undecided.append((url, row_id))
    if undecided:
        rows = outbox_rows(event_id, event_type, payload, campaign.tenant_id, campaign.id, undecided)
        session.add_all(rows)
        ids += [r.id for r in rows]
    return ids


def warm_up(session: Session) -> None:
    """_EMIT executed once for a tenant and campaign that do not exist (workers.engine.warm): compiled and cached,
    nothing chosen, nothing written."""
    nobody, at = uuid.uuid4(), outbox.utcnow()
    params: dict[str, Any] = {"tenant": nobody, "campaign": nobody, "campaign_url": None, "event_id": "msg_warm_up"}
    params |= {"event_type": "warm-up", "payload": {}, "status": OutboxStatus.PENDING.value, "at": at, "lease": at}
    session.connection().execute(_EMIT, params).all()


def emit_to_endpoints(
    session: Session,
    endpoints: Iterable[WebhookEndpoint],
    event_type: str,
    data: dict[str, Any],
    *,
    check_subscription: bool = True,
) -> list[uuid.UUID]:
    """A tenant event (not about one campaign) to the given endpoints; the outbox rows' ids."""
    chosen = [e for e in endpoints if not check_subscription or subscribed(e, event_type)]
    if not chosen:
        return []
    rows = outbox_rows(
        new_event_id(), event_type, thin(event_type, data), chosen[0].tenant_id, None, [(e.url, e.id) for e in chosen]
    )
    session.add_all(rows)
    return [r.id for r in rows]


def endpoint_disabled(session: Session, endpoint: WebhookEndpoint, reason: str, at: datetime) -> list[uuid.UUID]:
    """Disable an endpoint: its pending deliveries end, and the tenant's other endpoints hear of it."""
    endpoint.enabled, endpoint.disabled_at, endpoint.disabled_reason = False, at, reason
    for row in session.scalars(
        select(WebhookDelivery).where(
            WebhookDelivery.tenant_id == endpoint.tenant_id,
            WebhookDelivery.endpoint_id == endpoint.id,
            WebhookDelivery.status == OutboxStatus.PENDING,
        )
    ):
        row.status, row.last_error = OutboxStatus.FAILED, "endpoint_disabled: the endpoint was disabled"
    others = [e for e in _enabled_endpoints(session, endpoint.tenant_id) if e.id != endpoint.id]
    since = endpoint.failing_since.isoformat() if endpoint.failing_since else None
    data = {
        "endpoint_id": str(endpoint.id),
        "url": endpoint.url,
        "reason": reason,
        "failing_since": since,
        "disabled_at": at.isoformat(),
    }
    log.warning("webhook endpoint %s disabled: %s", endpoint.id, reason)
    return emit_to_endpoints(session, others, ENDPOINT_DISABLED, data)
