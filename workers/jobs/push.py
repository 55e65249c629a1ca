"""Push a campaign's results to the customer's DAM (webhooks queue).

A completed campaign gets one `DamPush` outbox row per enabled delivery target of its brand (an
S3-compatible bucket/prefix) and one for its own presigned PUT URLs, written in the completion's
transaction. Each push uploads, per result rank, `rank-{n}.png` and a `rank-{n}.json` sidecar.

Every PUT goes through the egress guard (shared.egress), S3 targets included: we presign the S3 PUT
locally and send it ourselves, so boto3 never opens a connection the guard did not check. Retries follow
shared.outbox like webhooks; objects uploaded by an earlier attempt are not sent again. Nothing stored on
the row (objects, last_error) contains a presigned query string or a credential.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import egress, metrics, outbox, presets, provenance, pushes
from shared.config import Settings, get_settings
from shared.crypto import UnreadableSecret, decrypt_json
from shared.db.models import (
    Campaign,
    Candidate,
    DamPush,
    DamPushPolicy,
    DeliveryTarget,
    OutboxStatus,
    Result,
    ResultDecision,
)
from shared.db.session import session_scope
from shared.queue import send
from shared.storage import get_storage
from workers.checks import policy
from workers.engine.context import Task

log = logging.getLogger("onbrand.push")

TASK = pushes.TASK
IMAGE_TYPE, SIDECAR_TYPE = "image/png", "application/json"
CREATIVE = ".creative.png"  # rank-{n}.creative.png: the result's creative version (brand-kit overlay)


class PushFailed(Exception):
    """A push that no retry can fix (target gone, credentials unreadable); the message is client-safe."""


class RetryLater(Exception):
    """A failure on our side (the result images cannot be read now); the message is client-safe."""


@dataclass(frozen=True)
class PushObject:
    name: str  # rank-1.png, rank-1.json
    body: bytes
    content_type: str

    def record(self, url: str) -> dict[str, Any]:
        """What the row keeps of an uploaded object: never the query string (presigned credentials)."""
        return {
            "name": self.name,
            "url": strip_query(url),
            "bytes": len(self.body),
            "sha256": hashlib.sha256(self.body).hexdigest(),
        }


def strip_query(url: str) -> str:
    """The URL without query, fragment or userinfo: what may be stored and shown."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[-1], parts.path, "", ""))


# --- queueing (inside the completion transaction; the rows themselves: shared.pushes) ----------------


def queue_on_completion(session: Session, campaign: Campaign) -> list[Task]:
    """The completion's pushes: every result of the review round, for brands that push on completion;
    none for brands that push on approval (the review API queues theirs, approved results only)."""
    if pushes.policy(session, campaign) != DamPushPolicy.ON_COMPLETION:
        return []
    return [(TASK, str(push_id), 0, 0) for push_id in pushes.queue_pushes(session, campaign, approved_only=False)]


# --- one attempt --------------------------------------------------------------------------------------


def push(push_id: str, at: datetime | None = None) -> str:
    """Attempt one push: "delivered" | "retry" | "failed" | "skipped" (not due, or taken by another worker)."""
    outcome = _push(push_id, at)
    metrics.DAM_PUSHES.labels(outcome).inc()
    return outcome


def _push(push_id: str, at: datetime | None) -> str:
    at = at or outbox.utcnow()
    with session_scope() as session:
        row = session.scalars(
            select(DamPush).where(DamPush.id == uuid.UUID(push_id)).with_for_update(skip_locked=True)
        ).first()
        if row is None or not outbox.is_due(row, at):
            return "skipped"
        return _attempt(session, row, at, get_settings())


def _attempt(session: Session, row: DamPush, at: datetime, settings: Settings) -> str:
    try:
        campaign = _campaign(session, row)
        urls = _url_source(session, row, campaign, settings)
        error, retry_after = _upload_all(session, row, campaign, urls, settings, at)
    except PushFailed as exc:
        return _give_up(row, str(exc))
    except RetryLater as exc:
        error, retry_after = str(exc), None
    return _record(row, error, retry_after, at, settings)


def _campaign(session: Session, row: DamPush) -> Campaign:
    campaign = session.scalars(
        select(Campaign).where(Campaign.tenant_id == row.tenant_id, Campaign.id == row.campaign_id)
    ).first()
    if campaign is None:
        raise PushFailed("campaign deleted")
    return campaign


def _record(row: DamPush, error: str | None, retry_after: float | None, at: datetime, settings: Settings) -> str:
    row.attempts, row.leased_until, row.last_error = row.attempts + 1, None, error
    if error is None:
        row.status, row.delivered_at = OutboxStatus.DELIVERED, at
        return "delivered"
    if outbox.settle_failure(row, at, settings.webhook_max_attempts, retry_after) is None:
        log.warning("push %s failed for good after %d attempts: %s", row.id, row.attempts, error)
        return "failed"
    return "retry"


def _give_up(row: DamPush, message: str) -> str:
    row.attempts, row.leased_until = row.attempts + 1, None
    row.status, row.last_error = OutboxStatus.FAILED, message
    return "failed"


# --- where each object goes ---------------------------------------------------------------------------


class UrlSource(Protocol):
    """The PUT URL of an object by rank and name, or None when the push has no URL for it."""

    def url(self, rank: int, obj: PushObject) -> str | None: ...


class PresignedUrls:
    """The campaign's own push_urls: [{image, sidecar}] per rank, rank 1 first."""

    def __init__(self, entries: list[dict[str, str]]) -> None:
        self.entries = entries

    def url(self, rank: int, obj: PushObject) -> str | None:
        if rank > len(self.entries):
            return None  # fewer URLs than results: the client asked for the top ones only
        kind = "sidecar" if obj.content_type == SIDECAR_TYPE else "creative" if obj.name.endswith(CREATIVE) else "image"
        return self.entries[rank - 1].get(kind)  # no "creative" URL: the creative version is not pushed there


class S3Target:
    """A delivery target's bucket/prefix: PUT URLs presigned here with the customer's keys (no network)."""

    def __init__(
        self, target: DeliveryTarget, credentials: dict[str, Any], campaign_id: uuid.UUID, expires_s: int
    ) -> None:
        self.config, self.campaign_id, self.expires_s = target.config, campaign_id, expires_s
        self.client = _s3_client(target.config, credentials)

    def key(self, name: str) -> str:
        prefix = str(self.config.get("prefix") or "").strip("/")
        return "/".join(p for p in (prefix, str(self.campaign_id), name) if p)

    def url(self, rank: int, obj: PushObject) -> str | None:
        from botocore.exceptions import BotoCoreError

        params = {"Bucket": self.config["bucket"], "Key": self.key(obj.name), "ContentType": obj.content_type}
        try:
            return str(self.client.generate_presigned_url("put_object", Params=params, ExpiresIn=self.expires_s))
        except BotoCoreError:  # parameter validation: the same on every retry
            raise PushFailed(f"the target's bucket or key is not valid for S3 ({obj.name})") from None


def _s3_client(config: dict[str, Any], credentials: dict[str, Any]) -> Any:
    import boto3  # lazy: only push workers need it
    from botocore.config import Config

    session = boto3.session.Session(  # its own session: the default one is shared and not thread-safe
        aws_access_key_id=credentials["access_key_id"],
        aws_secret_access_key=credentials["secret_access_key"],
        aws_session_token=credentials.get("session_token"),
        region_name=config.get("region") or "us-east-1",
    )
    # Path style: the bucket stays in the path, so the host is the endpoint the gateway checked.
    return session.client(
        "s3",
        endpoint_url=config.get("endpoint_url") or None,
        config=Config(signature_version="s3v4", s3={"addressing_style": "path"}),
    )


def _url_source(session: Session, row: DamPush, campaign: Campaign, settings: Settings) -> UrlSource:
    if row.kind == "presigned":
        if not campaign.push_urls:
            raise PushFailed("the campaign has no push URLs")
        return PresignedUrls(list(campaign.push_urls))
    target = session.scalars(
        select(DeliveryTarget).where(DeliveryTarget.tenant_id == row.tenant_id, DeliveryTarget.id == row.target_id)
    ).first()
    if target is None or not target.enabled:
        raise PushFailed("target disabled or deleted")
    expires_s = int(settings.dam_push_timeout_seconds) + 300  # used at once: a short-lived URL is enough
    return S3Target(target, _credentials(target), campaign.id, expires_s)


def _credentials(target: DeliveryTarget) -> dict[str, Any]:
    try:
        return decrypt_json(target.credentials or "")
    except (UnreadableSecret, ValueError):
        raise PushFailed(
            "the target's stored credentials cannot be decrypted with the configured "
            "encryption keys; re-create the delivery target"
        ) from None


# --- what is uploaded ---------------------------------------------------------------------------------


def _upload_all(
    session: Session, row: DamPush, campaign: Campaign, urls: UrlSource, settings: Settings, at: datetime
) -> tuple[str | None, float | None]:
    """Upload what an earlier attempt did not; (error, retry-after) of the first failure, or (None, None)."""
    done = {o["name"] for o in row.objects or []}
    for result, cand in _ranked(session, campaign):
        rank = result.rank
        creative = {f"rank-{rank}{CREATIVE}"} if provenance.delivered_creative_key(cand.integrity) else set()
        if {f"rank-{rank}.png", f"rank-{rank}.json", *creative} <= done:
            continue  # skip before reading the image: nothing of this rank is left to send
        for obj in build_objects(campaign, result, cand, at):
            url = urls.url(rank, obj)
            if obj.name in done or url is None:
                continue
            error, retry_after = _put(obj, url, settings, at)
            if error is not None:
                return error, retry_after
            row.objects = [*(row.objects or []), obj.record(url)]  # a new list: JSONB change tracking
    return None, None


def _ranked(session: Session, campaign: Campaign) -> list[tuple[Result, Candidate]]:
    """The review round's results to upload: all of them, or only the approved ones when the brand
    pushes on approval (read now: a rejected result never reaches the DAM)."""
    stmt = (
        select(Result, Candidate)
        .join(Candidate, Candidate.id == Result.candidate_id)
        .where(Result.of_current_round(campaign))
        .order_by(Result.rank)
    )
    if pushes.policy(session, campaign) == DamPushPolicy.ON_APPROVAL:
        stmt = stmt.where(Result.decision == ResultDecision.APPROVED)
    return [(result, cand) for result, cand in session.execute(stmt)]


def build_objects(campaign: Campaign, result: Result, cand: Candidate, at: datetime) -> list[PushObject]:
    rank = result.rank
    image = _image(cand, rank, provenance.delivered_key(cand.integrity, cand.image_key))
    creative_key = provenance.delivered_creative_key(cand.integrity)  # the creative version, with campaign copy
    creative = _image(cand, rank, creative_key) if creative_key else None
    sidecar = sidecar_of(campaign, result, cand, image, at)
    if creative is not None:
        sidecar["creative"] = {**_named(f"rank-{rank}{CREATIVE}", creative), **_creative_record(cand)}
    objects = [PushObject(f"rank-{rank}.png", image, IMAGE_TYPE)]
    objects += [PushObject(f"rank-{rank}{CREATIVE}", creative, IMAGE_TYPE)] if creative is not None else []
    data = json.dumps(sidecar, indent=2, default=str).encode()
    return [*objects, PushObject(f"rank-{rank}.json", data, SIDECAR_TYPE)]


def _named(name: str, data: bytes) -> dict[str, Any]:
    return {"name": name, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "content_type": IMAGE_TYPE}


def _creative_record(cand: Candidate) -> dict[str, Any]:
    """The creative's layout (per text: contrast, font size, backing) and OCR read-back, as the API shows them."""
    found = (cand.qc or {}).get("creative") or {}
    texts = [
        {k: t.get(k) for k in ("element", "text", "contrast", "font_px", "backing")}
        for t in (found.get("layout") or {}).get("texts") or []
    ]
    ocr = found.get("ocr") or {}
    return {"texts": texts, "ocr": {"status": ocr.get("status"), "checks": ocr.get("checks") or []}}


def _image(cand: Candidate, rank: int, key: str | None) -> bytes:
    try:
        return get_storage().get(key or "")  # the C2PA-signed copy
    except Exception as exc:  # our storage, not the receiver: logged in full, retried like any failure
        log.exception("push: candidate %s image %s unreadable", cand.id, cand.image_key)
        raise RetryLater(f"storage_unavailable: the image of rank {rank} could not be read") from exc


def sidecar_of(campaign: Campaign, result: Result, cand: Candidate, image: bytes, at: datetime) -> dict[str, Any]:
    """What a DAM needs next to the image: where it came from, how it scored, whether every rule was checked
    (a DAM that auto-publishes must see a needs_review result as such), and the integrity record."""
    caption = ((campaign.state or {}).get("caption") or {}).get("caption")
    rank = result.rank
    review = result.review or {}
    return {
        "campaign_id": str(campaign.id),
        "brand_id": str(campaign.brand_id),
        # the brief the scenes were made from: the request's, an inferred one, or a reviewer's replacement
        "brief": ((campaign.state or {}).get("decompose") or {}).get("brief") or campaign.brief,
        "brief_source": ((campaign.state or {}).get("decompose") or {}).get("brief_source", "request"),
        "caption": caption,
        "rank": rank,
        "candidate_id": str(cand.id),
        # the deliverable it belongs to: results are ranked top_k per product and size
        "size": presets.result_size(campaign.sizes or [], cand.placement),
        "product_asset_id": (cand.placement or {}).get("product_asset_id"),
        "placement": cand.placement,
        "scores": {"aesthetic": cand.aesthetic, "qc": _qc_summary(cand)},
        # as the campaign resource and the campaign.completed webhook show them (workers/pipeline/deliver.py)
        "fully_checked": result.fully_checked,
        "needs_review": result.needs_review,
        "review": {"fallback": bool(review.get("fallback")), "reasons": review.get("reasons", [])},
        "decision": result.decision,  # a reviewer's (on-approval brands: always approved), else null
        "integrity": cand.integrity,
        "image": _named(f"rank-{rank}.png", image),
        "pushed_at": at.isoformat(),
    }


def _qc_summary(cand: Candidate) -> dict[str, Any]:
    """The verdict per check (product, brand, guideline) and the metrics; not the whole QC record."""
    qc = cand.qc or {}
    decision = qc.get("policy") or {}
    return {
        "passed": cand.passed,
        "policy": decision.get("name"),
        "failed": decision.get("failed") or [],
        "checks": {c["id"]: c["status"] for c in policy.checks(qc)},
        "metrics": qc.get("metrics") or {},
    }


def _put(obj: PushObject, url: str, settings: Settings, at: datetime) -> tuple[str | None, float | None]:
    """One PUT through the egress guard; (client-safe error, Retry-After seconds) or (None, None)."""
    try:
        response = egress.upload(
            "PUT",
            url,
            content=obj.body,
            headers={"Content-Type": obj.content_type},
            timeout_s=settings.dam_push_timeout_seconds,
            allowlist=settings.egress_allowlist,
        )
    except egress.EgressRefused as exc:  # refused, unreachable or timed out: code + client-safe detail only
        return f"{exc.code}: {exc.detail} ({obj.name})", None
    if 200 <= response.status < 300:
        return None, None
    hint = outbox.retry_hint(response.status, response.headers.get("retry-after"), at)
    return f"HTTP {response.status} on {obj.name}", hint


# --- the dispatcher (beat) ----------------------------------------------------------------------------


def dispatch_due(at: datetime | None = None) -> int:
    """Send every pending push whose retry is due and that no earlier send still holds (its lease)."""
    at, settings = at or outbox.utcnow(), get_settings()
    with session_scope() as session:
        ids = outbox.claim_due(session, DamPush, at, outbox.lease_seconds(settings.dam_push_timeout_seconds))
    for push_id in ids:
        send(TASK, push_id)
    return len(ids)
