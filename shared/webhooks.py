"""Webhooks: Standard Webhooks signing and the transactional outbox.

`emit` writes one outbox row per receiver in the caller's transaction, so an event exists
exactly when the state change it announces does. The webhooks queue sends the rows
(see workers/stages/webhooks.py) after commit.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
import uuid
from fnmatch import fnmatchcase
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import Campaign, WebhookDelivery, WebhookEndpoint

EVENT_TYPES = (
    "campaign.queued",
    "campaign.stage.completed",
    "campaign.completed",
    "campaign.partial",
    "campaign.failed",
    "campaign.cancelled",
)


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def new_event_id() -> str:
    return "msg_" + uuid.uuid4().hex


def _secret_bytes(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def sign(secret: str, msg_id: str, timestamp: int, body: str) -> str:
    """The webhook-signature header value: `v1,` + base64 HMAC-SHA256 of `{id}.{ts}.{body}`."""
    digest = hmac.new(_secret_bytes(secret), f"{msg_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(secret: str, msg_id: str, body: str, timestamp: int | None = None) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(secret, msg_id, ts, body),
        "content-type": "application/json",
    }


def encode_body(event_type: str, data: dict[str, Any], timestamp: str) -> str:
    return json.dumps({"type": event_type, "timestamp": timestamp, "data": data}, separators=(",", ":"), default=str)


def _subscribed(endpoint: WebhookEndpoint, event_type: str) -> bool:
    patterns = endpoint.event_types or ["*"]
    return any(fnmatchcase(event_type, p) for p in patterns)


def emit(session: Session, campaign: Campaign, event_type: str, data: dict[str, Any]) -> list[uuid.UUID]:
    """Write outbox rows for the campaign's webhook_url and the tenant's endpoints; return their ids."""
    event_id = new_event_id()
    payload = {"campaign_id": str(campaign.id), **data}
    rows = []
    if campaign.webhook_url:
        rows.append(WebhookDelivery(url=campaign.webhook_url, endpoint_id=None))
    endpoints = session.scalars(
        select(WebhookEndpoint).where(
            WebhookEndpoint.tenant_id == campaign.tenant_id, WebhookEndpoint.enabled.is_(True)
        )
    )
    rows += [WebhookDelivery(url=e.url, endpoint_id=e.id) for e in endpoints if _subscribed(e, event_type)]
    for row in rows:
        row.id = uuid.uuid4()
        row.tenant_id, row.campaign_id = campaign.tenant_id, campaign.id
        row.event_id, row.event_type, row.payload = event_id, event_type, payload
        session.add(row)
    return [r.id for r in rows]
