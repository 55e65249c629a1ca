"""POST /v1/campaigns on the event loop: check, screen, write and commit in one round trip, send, answer.

Campaign creation is the gateway's hottest write. Through the ORM session it cost a thread-pool hop, an entity built
and flushed, a response validated twice and a blocking Redis send: four times the CPU of a plain insert. Here every
step runs on the event loop: the tenant's settings from the process cache (tenant_config), the screen in process
(a hosted moderation backend, which blocks, in the thread pool), one statement that writes every row and commits
with them (insert.py, shared.db.aio.write), the tasks sent after the commit in one Redis round trip
(shared.queue.send_all) and the response built from what was written: a new campaign has no stage runs nor results.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any, NamedTuple

import psycopg
from fastapi.concurrency import run_in_threadpool

from services.gateway.campaigns import brief as inferred
from services.gateway.campaigns import insert, reads, tenant_config, views
from services.gateway.campaigns.rows import CampaignRow
from services.gateway.campaigns.schemas import CampaignCreate, CampaignCreated, CampaignRead
from services.gateway.errors import ProblemError, conflict, not_found, unknown_reference
from services.gateway.guardrails import screen as guard
from services.gateway.limits.quota import refusals
from shared import limits, outbox, queue, webhooks
from shared.config import Settings
from shared.db import aio
from shared.db.models import CampaignStatus
from shared.storage import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Created:
    """The response: the campaign as created (or as it is now, for a replay) and whether this was a replay."""

    campaign: CampaignCreated
    replayed: bool


class _Queued(NamedTuple):
    """The new campaign as its first event's payload names it (webhooks.CampaignRef)."""

    id: uuid.UUID
    event_sequence: int


async def create(
    settings: Settings,
    storage: Storage,
    tenant_id: uuid.UUID,
    body: CampaignCreate,
    idempotency_key: str | None,
    own: limits.Limits,
    epoch: int | None,
) -> Created:
    """Create and queue a campaign, or replay the one an earlier request with this Idempotency-Key created. own: the
    tenant's limits (read with its key), enforced as the transaction commits. epoch: the newest key epoch this
    process has seen (shared.key_cache), which keeps the tenant's cached settings current."""
    # 1. A replay spends nothing and checks nothing more.
    claim = insert.Claim(idempotency_key, request_hash(body)) if idempotency_key else None
    if claim is not None and (earlier := await _replay(settings, storage, tenant_id, claim)):
        return earlier
    # 2. References and input guardrails: a refusal is a 4xx before anything is written.
    config = await tenant_config.get(settings, tenant_id, epoch)
    screening = await _checked(settings, tenant_id, body, config.blocked_terms)
    # 3. The rows, written and committed in one round trip; the quotas are checked as it commits.
    campaign = _columns(tenant_id, body, screening)
    event = _queued_event(campaign, config.endpoints)
    reserved = limits.expected_images(len(body.product_asset_ids), len(body.sizes), settings)
    admitted_under = limits.admitted_under(own) if settings.limits_enabled else None
    try:
        with refusals():  # over a quota: 429 or 402, and nothing written
            inserted = await insert.insert(settings, campaign, reserved, admitted_under, event, claim)
    except psycopg.errors.UniqueViolation as exc:
        if claim is None or exc.diag.constraint_name != insert.IDEMPOTENCY_KEY_TAKEN:
            raise
        # A concurrent request with this key committed first; nothing of ours was written (one statement).
        earlier = await _replay(settings, storage, tenant_id, claim)
        if earlier is None:  # the winner's campaign was deleted in between
            raise conflict("A concurrent request with this Idempotency-Key did not complete; retry.") from None
        return earlier
    if inserted is None:
        raise _unknown_brand(body)
    # 4. Committed: the tasks go out (a lost send is re-driven by the sweeps), and the response is what was written.
    await _send(campaign["id"], inserted.deliveries)
    row = _row(campaign, inserted)
    status_url = views.links(settings, row.id).self
    secret = campaign["webhook_secret"]
    view = views.view(row, {}, [], settings, model=CampaignCreated, status_url=status_url, webhook_secret=secret)
    return Created(view, replayed=False)


def request_hash(body: CampaignCreate) -> str:
    """sha256 of the validated body as canonical JSON: key order, spacing and spelled-out defaults don't matter."""
    canonical = json.dumps(body.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _created(view: CampaignRead, webhook_secret: str | None) -> CampaignCreated:
    # The view's fields as validated, not validated again (model_construct).
    return CampaignCreated.model_construct(**dict(view), status_url=view.links.self, webhook_secret=webhook_secret)


_REPLAY = """SELECT k.request_hash, c.id, c.webhook_secret FROM idempotency_keys k
    LEFT JOIN campaigns c ON c.id = k.campaign_id AND c.tenant_id = k.tenant_id
    WHERE k.tenant_id = %(tenant_id)s AND k.key = %(key)s"""


async def _replay(settings: Settings, storage: Storage, tenant_id: uuid.UUID, claim: insert.Claim) -> Created | None:
    """The campaign an earlier request with this Idempotency-Key created, as it is now; None if there was none."""
    found = await aio.fetch(settings, aio.Read(_REPLAY, {"tenant_id": tenant_id, "key": claim.key}))
    if not found:
        return None
    request_digest, campaign_id, webhook_secret = found[0]
    if request_digest != claim.request_hash:
        raise ProblemError(
            422,
            "idempotency_key_reused",
            "Idempotency key reused",
            "This Idempotency-Key was used with a different request body.",
        )
    if campaign_id is None:
        raise not_found("Campaign")
    view = await reads.read_campaign(settings, storage, tenant_id, campaign_id)
    return Created(_created(view, webhook_secret), replayed=True)


async def _checked(
    settings: Settings, tenant_id: uuid.UUID, body: CampaignCreate, terms: tuple[str, ...]
) -> dict[str, str]:
    """The request's references and its text screened (what screened it); a refusal, unless the brand is not the
    tenant's: then that, the error a request gets first (the brand itself is checked by the insert)."""
    try:
        inferred.check_inferable(body.brief, body.product_asset_ids)
        await _check_products(settings, tenant_id, body.product_asset_ids)
        return await _screen(settings, tenant_id, body, terms)
    except ProblemError:
        if not await _brand_exists(settings, tenant_id, body.brand_id):
            raise _unknown_brand(body) from None
        raise


_PRODUCTS = """SELECT id FROM assets
    WHERE tenant_id = %(tenant_id)s AND kind = 'product' AND id = ANY(%(ids)s)"""
_BRAND = "SELECT 1 FROM brands WHERE id = %(id)s AND tenant_id = %(tenant_id)s"


async def _check_products(settings: Settings, tenant_id: uuid.UUID, asset_ids: list[uuid.UUID]) -> None:
    if not asset_ids:
        return
    rows = await aio.fetch(settings, aio.Read(_PRODUCTS, {"tenant_id": tenant_id, "ids": asset_ids}))
    owned = {r[0] for r in rows}
    missing = [i for i in asset_ids if i not in owned]
    if missing:
        raise unknown_reference("product_asset_ids", f"No product asset with id {', '.join(map(str, missing))}.")


async def _brand_exists(settings: Settings, tenant_id: uuid.UUID, brand_id: uuid.UUID) -> bool:
    return bool(await aio.fetch(settings, aio.Read(_BRAND, {"id": brand_id, "tenant_id": tenant_id})))


def _unknown_brand(body: CampaignCreate) -> ProblemError:
    return unknown_reference("brand_id", f"Brand {body.brand_id} does not exist.")


async def _screen(
    settings: Settings, tenant_id: uuid.UUID, body: CampaignCreate, terms: tuple[str, ...]
) -> dict[str, str]:
    """The brief, safe-zone labels and copy (the creative's text, as the brief) against the blocked terms, in
    process; a hosted moderation backend answers over HTTP with a blocking client: in the thread pool."""
    labels = [z.label for z in body.safe_zones]
    copy = body.copy_.model_dump(exclude_none=True) if body.copy_ else {}
    args = (settings, tenant_id, body.brief or "", labels, copy, terms)
    if settings.guardrails_text_backend == "none":
        return guard.campaign(*args)
    return await run_in_threadpool(guard.campaign, *args)


def _columns(tenant_id: uuid.UUID, body: CampaignCreate, screening: dict[str, str]) -> dict[str, Any]:
    """The campaign's row as inserted (insert.CAMPAIGN_COLUMNS), its first event (sequence 1) counted."""
    url = str(body.webhook_url) if body.webhook_url else None
    return {
        "id": uuid.uuid4(),
        "tenant_id": tenant_id,
        "brand_id": body.brand_id,
        "brief": body.brief or "",  # none: inferred by the decompose stage, shown as brief_inferred
        "product_asset_ids": [str(i) for i in body.product_asset_ids],
        "sizes": [s.model_dump(exclude_none=True) for s in body.sizes],
        "safe_zones": [z.model_dump() for z in body.safe_zones],
        "copy": body.copy_.model_dump(exclude_none=True) if body.copy_ else None,
        "top_k": body.top_k,
        "qc_policy": body.qc_policy,
        "max_retry_attempts": body.max_retry_attempts,
        "max_prompt_revisions": body.max_prompt_revisions,
        "priority": body.priority.value,
        "webhook_url": url,
        "webhook_secret": webhooks.new_secret() if url else None,
        "event_sequence": 1,  # campaign.queued
        "push_urls": [
            {"image": str(p.image), "sidecar": str(p.sidecar)} | ({"creative": str(p.creative)} if p.creative else {})
            for p in body.push_urls
        ]
        if body.push_urls
        else None,
        "status": CampaignStatus.QUEUED.value,
        "round": 0,
        "review_round": 0,
        "state": inferred.pending_state(body.brief),
        "loop": {},
        "screening": screening,
    }


def _queued_event(campaign: dict[str, Any], endpoints: tuple[tenant_config.Endpoint, ...]) -> insert.Event:
    """The campaign.queued event and its receivers: the campaign's webhook_url, then the tenant's enabled endpoints
    that subscribe to it."""
    event_type = "campaign.queued"
    targets: list[dict[str, str | None]] = []
    if campaign["webhook_url"]:
        targets.append({"id": str(uuid.uuid4()), "url": campaign["webhook_url"], "endpoint_id": None})
    for endpoint in endpoints:
        if webhooks.subscribes(endpoint.patterns, event_type):
            targets.append({"id": str(uuid.uuid4()), "url": None, "endpoint_id": str(endpoint.id)})
    ref = _Queued(campaign["id"], campaign["event_sequence"])
    payload = webhooks.campaign_payload(ref, event_type, {"status": campaign["status"]}) if targets else None
    now = outbox.utcnow()
    lease = webhooks.outbox_lease() if targets else now
    return insert.Event(webhooks.new_event_id(), event_type, payload, now, lease, targets)


async def _send(campaign_id: uuid.UUID, deliveries: list[uuid.UUID]) -> None:
    tasks: list[tuple[str, tuple[Any, ...]]] = [("onbrand.decompose", (campaign_id,))]
    tasks += [("onbrand.send_webhook", (delivery_id,)) for delivery_id in deliveries]
    try:
        await queue.send_all(tasks)
    except Exception:
        # Committed all the same: the stalled sweep re-sends the decompose, the outbox sweep the deliveries.
        log.exception("sending a new campaign's tasks failed")


def _row(campaign: dict[str, Any], inserted: insert.Inserted) -> CampaignRow:
    """The row as a status poll reads it, from the values written and the server's timestamps."""
    written: dict[str, Any] = {name: campaign.get(name) for name in CampaignRow._fields}
    return CampaignRow(
        **written
        | {"created_at": inserted.created_at, "updated_at": inserted.updated_at, "current_stage": None}
        | {"review_state": None, "error": None, "completed_at": None}
    )
