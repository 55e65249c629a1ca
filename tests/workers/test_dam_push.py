"""Push to DAM: results and sidecars uploaded to a moto S3 server (a real HTTP S3 endpoint) and to a
local receiver, retries, the egress guard, the dispatcher; then the gateway's delivery targets and
push_urls (in-process TestClient, the gateway fixtures of tests/conftest.py)."""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Thread
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select, text

from shared import egress, pushes
from shared.config import get_settings
from shared.crypto import decrypt_json, encrypt_json
from shared.db import session as db_session
from shared.db.models import (
    Brand,
    Campaign,
    Candidate,
    DamPush,
    DamPushPolicy,
    DeliveryTarget,
    Result,
    ResultDecision,
)
from shared.db.session import session_scope
from shared.outbox import utcnow
from shared.storage import campaign_key, get_storage
from tests.factories import Tenant, assert_problem, make_brand, make_campaign, moto_server, s3_client
from workers.engine.records import lock_campaign
from workers.jobs import push
from workers.pipeline import deliver

BUCKET = "dam-bucket"
SECRET_KEY = "moto-SECRET-key-do-not-leak-42"


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        s3_client(url).create_bucket(Bucket=BUCKET)
        yield url


@pytest.fixture
def db(fresh_db: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A migrated database, local object storage in tmp_path and no egress allowlist."""
    monkeypatch.setenv("ONBRAND_STORAGE_BACKEND", "local")
    monkeypatch.setenv("ONBRAND_STORAGE_DIR", str(tmp_path / "objects"))
    monkeypatch.delenv("ONBRAND_EGRESS_ALLOWLIST", raising=False)
    get_settings.cache_clear()
    get_storage.cache_clear()
    yield fresh_db
    get_settings.cache_clear()
    get_storage.cache_clear()


@pytest.fixture
def loopback(db: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """The receivers (moto, the local receiver) are on 127.0.0.1: allowed, as in development."""
    monkeypatch.setenv("ONBRAND_EGRESS_ALLOWLIST", "127.0.0.0/8")
    get_settings.cache_clear()
    return db


class Receiver:
    """A PUT receiver answering the queued (status, headers), then 200; keeps what it got."""

    def __init__(self, answers: list[tuple[int, dict[str, str]]] | None = None) -> None:
        self.answers, self.requests = list(answers or []), []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_PUT(self) -> None:  # noqa: N802 - stdlib name
                body = self.rfile.read(int(self.headers["content-length"]))
                receiver.requests.append((self.path, dict(self.headers), body))
                status, headers = receiver.answers.pop(0) if receiver.answers else (200, {})
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"


# ----------------------------------------------------------------------------- helpers


def png(rank: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (rank * 40, 90, 200 - rank * 30)).save(buf, "PNG")
    return buf.getvalue()


QC = {
    "metrics": {"exact_fraction": 1.0, "msssim": 0.99},
    "verdicts": [
        {"check": "product_exact", "group": "product", "status": "pass", "reason": "all pixels"},
        {"check": "palette", "group": "brand", "status": "fail", "reason": "off palette"},
    ],
    "policy": {"name": "weighted", "passed": True, "failed": ["palette"]},
}


# rank 1 fully checked, rank 2 delivered flagged (an unchecked rule), as deliver stores them on the result
UNCHECKED = {"check": "palette_adherence", "kind": "unchecked", "reason": "the brand has no palette"}
REVIEWS: list[dict[str, Any]] = [
    {"fully_checked": True, "needs_review": False, "review": {"fallback": False, "reasons": []}},
    {"fully_checked": False, "needs_review": True, "review": {"fallback": False, "reasons": [UNCHECKED]}},
]


def campaign_with_results(results: int = 2, push_urls: list[dict[str, str]] | None = None) -> str:
    """A running campaign (top_k 3) with `results` ranked candidates whose images are stored."""
    cid = make_campaign(state={"caption": {"caption": "a sneaker on a sunny beach"}})
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(cid))
        campaign.status, campaign.push_urls = "running", push_urls
        campaign.sizes = [{"preset": "link", "width": 1200, "height": 628}]
        for rank in range(1, results + 1):
            key = campaign_key(campaign.tenant_id, campaign.id, f"c{rank}.png")
            get_storage().put(key, png(rank), "image/png")
            cand = Candidate(
                tenant_id=campaign.tenant_id,
                campaign_id=campaign.id,
                layout_key=f"l{rank}",
                image_key=key,
                layer_key=key,
                placement={"x": 0.1 * rank, "y": 0.2, "scale": 0.5, "canvas": {"width": 1200, "height": 628}},
                passed=True,
                integrity={"exact_fraction": 1.0, "product_sha256": "ab" * 32},
                qc=QC,
                aesthetic=7.0 - rank,
                rank=rank,
            )
            session.add(cand)
            session.flush()
            session.add(
                Result(
                    tenant_id=campaign.tenant_id,
                    campaign_id=campaign.id,
                    candidate_id=cand.id,
                    rank=rank,
                    **REVIEWS[(rank - 1) % len(REVIEWS)],
                )
            )
    return cid


def add_target(
    cid: str,
    endpoint_url: str | None,
    *,
    enabled: bool = True,
    brand_id: uuid.UUID | None = None,
    credentials: str | None = None,
) -> str:
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(cid))
        target = DeliveryTarget(
            tenant_id=campaign.tenant_id,
            brand_id=brand_id or campaign.brand_id,
            kind="s3",
            name="dam",
            config={"bucket": BUCKET, "prefix": "dam/in", "region": "us-east-1", "endpoint_url": endpoint_url},
            credentials=credentials or encrypt_json({"access_key_id": "AKIATEST1234", "secret_access_key": SECRET_KEY}),
            enabled=enabled,
        )
        session.add(target)
        session.flush()
        return str(target.id)


def complete(cid: str) -> list[str]:
    """Run the deliver stage's finalize (the completion transaction); the push ids it queued."""
    with session_scope() as session:
        tasks = deliver.complete(session, lock_campaign(session, uuid.UUID(cid)))
    return [ident for name, ident, _, _ in tasks if name == "onbrand.push_results"]


def row(push_id: str) -> DamPush:
    with session_scope() as session:
        return session.get(DamPush, uuid.UUID(push_id))


def stored_image(cid: str, rank: int) -> bytes:
    with session_scope() as session:
        key = session.scalars(
            select(Candidate.image_key)
            .join(Result, Result.candidate_id == Candidate.id)
            .where(Result.campaign_id == uuid.UUID(cid), Result.rank == rank)
        ).one()
    return get_storage().get(key)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- queueing


def test_completion_queues_one_push_per_enabled_target_of_the_brand_and_one_for_push_urls(db: str) -> None:
    cid = campaign_with_results(2, push_urls=[{"image": "https://dam.example.com/1", "sidecar": "https://x/1"}])
    enabled = add_target(cid, None)
    add_target(cid, None, enabled=False)
    with session_scope() as session:  # a target of another brand of the same tenant gets nothing
        campaign = session.get(Campaign, uuid.UUID(cid))
        other = Brand(tenant_id=campaign.tenant_id, name="other")
        session.add(other)
        session.flush()
        other_brand = other.id
    add_target(cid, None, brand_id=other_brand)
    before = utcnow()
    ids = complete(cid)
    rows = [row(i) for i in ids]
    assert sorted((r.kind, str(r.target_id)) for r in rows) == [("presigned", "None"), ("s3", enabled)]
    assert all(
        r.status == "pending" and r.attempts == 0 and r.leased_until > before + timedelta(seconds=60) for r in rows
    )  # sent right after commit: the dispatcher leaves them alone meanwhile
    with session_scope() as session:
        assert session.get(Campaign, uuid.UUID(cid)).status == "partial"  # 2 of top_k 3: still pushed


def test_completion_without_results_queues_no_push(db: str) -> None:
    cid = campaign_with_results(0, push_urls=[{"image": "https://dam.example.com/1", "sidecar": "https://x/1"}])
    add_target(cid, None)
    assert complete(cid) == []
    with session_scope() as session:
        assert session.scalars(select(DamPush).where(DamPush.campaign_id == uuid.UUID(cid))).all() == []


def _decide(cid: str, decisions: dict[int, ResultDecision]) -> None:
    """Reviewer decisions by rank, as the review API stores them on the results."""
    with session_scope() as session:
        for result in session.scalars(select(Result).where(Result.campaign_id == uuid.UUID(cid))):
            result.decision = decisions.get(result.rank)


def test_on_approval_brands_push_nothing_on_completion_then_only_the_approved_results(
    loopback: str, moto_url: str
) -> None:
    cid = campaign_with_results(2)
    add_target(cid, moto_url)
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(cid))
        session.get(Brand, campaign.brand_id).dam_push = DamPushPolicy.ON_APPROVAL
    assert complete(cid) == []  # a person decides first
    with session_scope() as session:
        assert session.get(Campaign, uuid.UUID(cid)).review_state == "pending"
        assert session.scalars(select(DamPush).where(DamPush.campaign_id == uuid.UUID(cid))).all() == []
        nothing_approved = pushes.queue_pushes(session, session.get(Campaign, uuid.UUID(cid)), approved_only=True)
    assert nothing_approved == []
    _decide(cid, {1: ResultDecision.REJECTED, 2: ResultDecision.APPROVED})
    with session_scope() as session:
        [push_id] = pushes.queue_pushes(session, session.get(Campaign, uuid.UUID(cid)), approved_only=True)
    assert push.push(str(push_id)) == "delivered"
    bucket = s3_client(moto_url)
    listed = bucket.list_objects_v2(Bucket=BUCKET, Prefix=f"dam/in/{cid}/")["Contents"]
    assert sorted(o["Key"] for o in listed) == [f"dam/in/{cid}/rank-2.json", f"dam/in/{cid}/rank-2.png"]
    sidecar = json.loads(bucket.get_object(Bucket=BUCKET, Key=f"dam/in/{cid}/rank-2.json")["Body"].read())
    assert sidecar["decision"] == "approved" and sidecar["rank"] == 2
    assert sha(bucket.get_object(Bucket=BUCKET, Key=f"dam/in/{cid}/rank-2.png")["Body"].read()) == sha(
        stored_image(cid, 2)
    )


def test_on_completion_brands_push_every_result_whatever_was_decided(loopback: str, moto_url: str) -> None:
    cid = campaign_with_results(2)
    add_target(cid, moto_url)
    _decide(cid, {1: ResultDecision.REJECTED})
    [push_id] = complete(cid)
    assert push.push(push_id) == "delivered"
    assert [o["name"] for o in row(push_id).objects] == ["rank-1.png", "rank-1.json", "rank-2.png", "rank-2.json"]


# ----------------------------------------------------------------------------- S3 and presigned


def test_s3_target_push_lands_images_and_sidecars_in_the_bucket(loopback: str, moto_url: str) -> None:
    cid = campaign_with_results(2)
    target_id = add_target(cid, moto_url)
    [push_id] = complete(cid)
    assert push.push(push_id) == "delivered"
    bucket = s3_client(moto_url)
    listed = bucket.list_objects_v2(Bucket=BUCKET, Prefix=f"dam/in/{cid}/")["Contents"]
    assert sorted(o["Key"] for o in listed) == [
        f"dam/in/{cid}/rank-{n}.{ext}" for n in (1, 2) for ext in ("json", "png")
    ]
    for rank in (1, 2):
        image = bucket.get_object(Bucket=BUCKET, Key=f"dam/in/{cid}/rank-{rank}.png")
        assert sha(image["Body"].read()) == sha(stored_image(cid, rank)) and image["ContentType"] == "image/png"
        sidecar = json.loads(bucket.get_object(Bucket=BUCKET, Key=f"dam/in/{cid}/rank-{rank}.json")["Body"].read())
        assert sidecar["campaign_id"] == cid and sidecar["rank"] == rank and sidecar["brief"] == "a shoe"
        assert sidecar["caption"] == "a sneaker on a sunny beach" and sidecar["placement"]["x"] == 0.1 * rank
        # the deliverable it belongs to: the size (and the preset it was asked by) it was ranked in
        assert sidecar["size"] == {"width": 1200, "height": 628, "label": "1200x628", "preset": "link"}
        assert sidecar["image"] == {
            "name": f"rank-{rank}.png",
            "sha256": sha(stored_image(cid, rank)),
            "bytes": len(stored_image(cid, rank)),
            "content_type": "image/png",
        }
        assert sidecar["scores"]["aesthetic"] == 7.0 - rank
        assert sidecar["scores"]["qc"]["checks"] == {"product_exact": "pass", "palette": "fail"}
        assert sidecar["scores"]["qc"]["policy"] == "weighted" and sidecar["integrity"]["exact_fraction"] == 1.0
        assert {"brand_id", "candidate_id", "pushed_at"} <= sidecar.keys()
        assert {k: sidecar[k] for k in ("fully_checked", "needs_review", "review")} == REVIEWS[rank - 1]
    done = row(push_id)
    assert (done.status, done.attempts, done.last_error, done.leased_until) == ("delivered", 1, None, None)
    assert [o["name"] for o in done.objects] == ["rank-1.png", "rank-1.json", "rank-2.png", "rank-2.json"]
    assert done.objects[0]["url"] == f"{moto_url}/{BUCKET}/dam/in/{cid}/rank-1.png"  # no signature kept
    assert done.objects[0]["sha256"] == sha(stored_image(cid, 1)) and done.delivered_at is not None
    with db_session.new_session() as session:
        raw = session.execute(
            text("SELECT credentials FROM delivery_targets WHERE id = :id"), {"id": target_id}
        ).scalar_one()
    assert SECRET_KEY not in raw and decrypt_json(raw)["secret_access_key"] == SECRET_KEY
    assert push.push(push_id) == "skipped"  # a re-delivered task uploads nothing twice


def test_presigned_put_urls_push(loopback: str, moto_url: str) -> None:
    bucket = s3_client(moto_url)
    key = f"client/{uuid.uuid4()}"
    urls = [
        {
            name: bucket.generate_presigned_url(
                "put_object", Params={"Bucket": BUCKET, "Key": f"{key}/{name}"}, ExpiresIn=600
            )
            for name in ("image", "sidecar")
        }
    ]
    cid = campaign_with_results(2, push_urls=urls)  # URLs for rank 1 only: rank 2 is not pushed
    [push_id] = complete(cid)
    assert push.push(push_id) == "delivered"
    assert sha(bucket.get_object(Bucket=BUCKET, Key=f"{key}/image")["Body"].read()) == sha(stored_image(cid, 1))
    sidecar = json.loads(bucket.get_object(Bucket=BUCKET, Key=f"{key}/sidecar")["Body"].read())
    assert sidecar["rank"] == 1 and sidecar["campaign_id"] == cid
    done = row(push_id)
    assert [o["name"] for o in done.objects] == ["rank-1.png", "rank-1.json"]
    assert done.objects[0]["url"] == f"{moto_url}/{BUCKET}/{key}/image"
    assert "Signature" not in json.dumps(done.objects)


def test_503_with_retry_after_is_retried_later_without_resending_uploaded_objects(loopback: str) -> None:
    receiver = Receiver([(200, {}), (503, {"Retry-After": "120"})])
    urls = [{"image": f"{receiver.url}/img?X-Amz-Signature=sekrit1", "sidecar": f"{receiver.url}/meta?sig=sekrit2"}]
    cid = campaign_with_results(1, push_urls=urls)
    [push_id] = complete(cid)
    at = utcnow()
    assert push.push(push_id, at=at) == "retry"
    first = row(push_id)
    assert first.status == "pending" and first.attempts == 1 and first.leased_until is None
    assert first.next_attempt_at >= at + timedelta(seconds=120)  # the receiver's wait, not the schedule's 5 s
    assert first.last_error == "HTTP 503 on rank-1.json"
    assert [(o["name"], o["url"]) for o in first.objects] == [("rank-1.png", f"{receiver.url}/img")]
    assert push.push(push_id, at=at + timedelta(seconds=60)) == "skipped" and len(receiver.requests) == 2
    assert push.push(push_id, at=at + timedelta(seconds=121)) == "delivered"
    assert [path for path, _, _ in receiver.requests] == [
        "/img?X-Amz-Signature=sekrit1",
        "/meta?sig=sekrit2",
        "/meta?sig=sekrit2",
    ]  # the image went once
    _, headers, body = receiver.requests[0]
    assert headers["Content-Type"] == "image/png" and sha(body) == sha(stored_image(cid, 1))
    assert receiver.requests[2][1]["Content-Type"] == "application/json"
    done = row(push_id)
    assert (done.status, done.attempts, done.last_error) == ("delivered", 2, None)
    assert "sekrit" not in json.dumps(done.objects)


def test_the_last_allowed_attempt_fails_for_good(loopback: str) -> None:
    receiver = Receiver([(500, {})])
    cid = campaign_with_results(1, push_urls=[{"image": f"{receiver.url}/i", "sidecar": f"{receiver.url}/s"}])
    [push_id] = complete(cid)
    with session_scope() as session:
        session.get(DamPush, uuid.UUID(push_id)).attempts = get_settings().webhook_max_attempts - 1
    assert push.push(push_id) == "failed"
    failed = row(push_id)
    assert (failed.status, failed.last_error) == ("failed", "HTTP 500 on rank-1.png")
    assert push.push(push_id) == "skipped"


def test_disabled_target_and_unreadable_credentials_fail_at_once(loopback: str, moto_url: str) -> None:
    cid = campaign_with_results(1)
    target_id = add_target(cid, moto_url)
    add_target(cid, moto_url, credentials="not-a-fernet-token")
    pushes = {str(row(i).target_id): i for i in complete(cid)}
    with session_scope() as session:
        session.get(DeliveryTarget, uuid.UUID(target_id)).enabled = False
    assert push.push(pushes.pop(target_id)) == "failed"
    [unreadable] = pushes.values()
    assert push.push(unreadable) == "failed"
    assert (row(unreadable).status, row(unreadable).attempts) == ("failed", 1)
    assert "cannot be decrypted" in row(unreadable).last_error
    assert s3_client(moto_url).list_objects_v2(Bucket=BUCKET, Prefix=f"dam/in/{cid}/")["KeyCount"] == 0
    with session_scope() as session:
        errors = session.scalars(select(DamPush.last_error).where(DamPush.campaign_id == uuid.UUID(cid))).all()
    assert "target disabled or deleted" in errors


def test_a_deleted_target_keeps_its_push_history(loopback: str, moto_url: str) -> None:
    cid = campaign_with_results(1)
    target_id = add_target(cid, moto_url)
    [push_id] = complete(cid)
    with session_scope() as session:
        session.delete(session.get(DeliveryTarget, uuid.UUID(target_id)))
    assert row(push_id).target_id is None and row(push_id).kind == "s3"  # SET NULL: the record stays
    assert push.push(push_id) == "failed" and row(push_id).last_error == "target disabled or deleted"


# ----------------------------------------------------------------------------- the egress guard


def test_s3_target_on_a_private_address_is_refused_without_the_allowlist(db: str) -> None:
    receiver = Receiver()
    cid = campaign_with_results(1)
    add_target(cid, receiver.url)
    [push_id] = complete(cid)
    assert push.push(push_id) == "retry"
    refused = row(push_id)
    assert refused.last_error.startswith("url_private_address: ") and refused.objects == []
    assert "127.0.0.1" not in refused.last_error and str(receiver.server.server_port) not in refused.last_error
    assert receiver.requests == []


@pytest.mark.parametrize(
    "url",
    [
        "http://10.1.2.3/dam/img?X-Amz-Signature=sekrit",
        "http://169.254.169.254/latest/meta-data?X-Amz-Signature=sekrit",
        "https://dam.internal.example.com/img?X-Amz-Signature=sekrit",
    ],
)
def test_presigned_url_to_a_private_address_is_refused(db: str, monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setattr(egress, "resolve", lambda host, port: ["10.0.0.5"])  # a name resolving inside
    cid = campaign_with_results(1, push_urls=[{"image": url, "sidecar": url}])
    [push_id] = complete(cid)
    assert push.push(push_id) == "retry"
    refused = row(push_id)
    assert refused.last_error.startswith("url_private_address: ")  # refused before any connection
    for internal in ("10.1.2.3", "169.254", "10.0.0.5", "sekrit", "internal"):
        assert internal not in refused.last_error


# ----------------------------------------------------------------------------- dispatcher


def test_dispatch_due_sends_only_due_unleased_pending_pushes(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    cid = campaign_with_results(1, push_urls=[{"image": "https://dam.example.com/1", "sidecar": "https://x/1"}])
    for _ in range(3):
        add_target(cid, None)
    ids = complete(cid)
    at = utcnow() + timedelta(minutes=5)  # the completion's leases (timeout + 60 s) have lapsed
    states = [
        dict(next_attempt_at=at - timedelta(seconds=1)),
        dict(leased_until=at + timedelta(seconds=30)),
        dict(next_attempt_at=at + timedelta(seconds=30)),
        dict(status="delivered"),
    ]
    with session_scope() as session:
        for push_id, changes in zip(ids, states, strict=True):
            for name, value in changes.items():
                setattr(session.get(DamPush, uuid.UUID(push_id)), name, value)
    sent_tasks: list[tuple[Any, ...]] = []
    monkeypatch.setattr(push, "send", lambda *args: sent_tasks.append(args))
    assert push.dispatch_due(at) == 1 and sent_tasks == [("onbrand.push_results", uuid.UUID(ids[0]))]
    assert row(ids[0]).leased_until > at
    assert push.dispatch_due(at) == 0 and len(sent_tasks) == 1  # leased now: not sent twice


# ----------------------------------------------------------------------------- gateway


TARGET = {
    "name": "Brand DAM",
    "bucket": "brand-assets",
    "prefix": "onbrand/results/",
    "region": "eu-west-1",
    "endpoint_url": "https://s3.example.com",
    "access_key_id": "AKIAEXAMPLEWXYZ",
    "secret_access_key": SECRET_KEY,
    "session_token": "session-token-do-not-leak",
}


def test_delivery_targets_create_list_get_delete(client: TestClient, acme: Tenant, globex: Tenant) -> None:
    brand = make_brand(client, acme)
    base = f"/v1/brands/{brand}/delivery-targets"
    response = client.post(base, json=TARGET, headers=acme.auth)
    assert response.status_code == 201, response.text
    created = response.json()
    assert SECRET_KEY not in response.text and "session-token" not in response.text
    assert created["access_key_id"] == "****WXYZ" and created["kind"] == "s3" and created["enabled"] is True
    assert created["config"] == {
        "bucket": "brand-assets",
        "prefix": "onbrand/results",
        "region": "eu-west-1",
        "endpoint_url": "https://s3.example.com/",
    }
    listed = client.get(base, headers=acme.auth)
    assert [t["id"] for t in listed.json()["items"]] == [created["id"]] and SECRET_KEY not in listed.text
    assert client.get(f"{base}/{created['id']}", headers=acme.auth).json() == created
    with db_session.new_session() as session:
        stored = session.get(DeliveryTarget, uuid.UUID(created["id"]))
        assert SECRET_KEY not in stored.credentials and "session-token" not in stored.credentials
        assert decrypt_json(stored.credentials)["session_token"] == "session-token-do-not-leak"
    for method, path in (
        ("get", base),
        ("get", f"{base}/{created['id']}"),
        ("delete", f"{base}/{created['id']}"),
        ("post", base),
    ):
        kwargs = {"json": TARGET} if method == "post" else {}
        assert_problem(getattr(client, method)(path, headers=globex.auth, **kwargs), 404, "not_found")
    other_brand = make_brand(client, acme, "other")
    assert_problem(
        client.get(f"/v1/brands/{other_brand}/delivery-targets/{created['id']}", headers=acme.auth), 404, "not_found"
    )
    assert client.delete(f"{base}/{created['id']}", headers=acme.auth).status_code == 204
    assert_problem(client.get(f"{base}/{created['id']}", headers=acme.auth), 404, "not_found")


@pytest.mark.parametrize(
    ("change", "loc"),
    [
        ({"prefix": "../escape"}, ["body", "prefix"]),
        ({"prefix": "/absolute"}, ["body", "prefix"]),
        ({"prefix": "a//b"}, ["body", "prefix"]),
        ({"bucket": "Not_A_Bucket"}, ["body", "bucket"]),
        ({"endpoint_url": "http://127.0.0.1:9000"}, ["body", "endpoint_url"]),
        ({"endpoint_url": "http://[::ffff:169.254.169.254]/"}, ["body", "endpoint_url"]),
        ({"kind": "ftp"}, ["body", "kind"]),
        ({"extra": 1}, ["body", "extra"]),
        ({"secret_access_key": ""}, ["body", "secret_access_key"]),
    ],
)
def test_delivery_target_422_names_the_bad_field(
    client: TestClient, acme: Tenant, change: dict[str, Any], loc: list[Any]
) -> None:
    response = client.post(
        f"/v1/brands/{make_brand(client, acme)}/delivery-targets", json={**TARGET, **change}, headers=acme.auth
    )
    body = assert_problem(response, 422, "validation_error")
    assert [e["loc"] for e in body["errors"]] == [loc] and SECRET_KEY not in response.text


PUSH_URLS = [
    {
        "image": "https://dam.example.com/r1.png?X-Amz-Signature=sekrit-1",
        "sidecar": "https://dam.example.com/r1.json?X-Amz-Signature=sekrit-2",
    },
    {
        "image": "https://dam.example.com/r2.png?X-Amz-Signature=sekrit-3",
        "sidecar": "https://dam.example.com/r2.json?X-Amz-Signature=sekrit-4",
    },
]


def test_push_urls_are_stored_and_never_echoed(client: TestClient, acme: Tenant) -> None:
    body = {"brand_id": make_brand(client, acme), "brief": "b", "push_urls": PUSH_URLS}
    response = client.post("/v1/campaigns", json=body, headers=acme.auth)
    assert response.status_code == 202, response.text
    created = response.json()
    assert created["request"]["push"] == {"presigned_urls": 2} and "sekrit" not in response.text
    assert created["links"]["pushes"] == f"{created['links']['self']}/pushes"
    fetched = client.get(f"/v1/campaigns/{created['id']}", headers=acme.auth)
    assert "sekrit" not in fetched.text and "dam.example.com" not in fetched.text
    listed = client.get("/v1/campaigns?limit=100", headers=acme.auth)
    assert "sekrit" not in listed.text
    with db_session.new_session() as session:
        assert session.get(Campaign, uuid.UUID(created["id"])).push_urls == PUSH_URLS
    plain = client.post("/v1/campaigns", json={"brand_id": body["brand_id"], "brief": "b"}, headers=acme.auth)
    assert "push" not in plain.json()["request"]


@pytest.mark.parametrize(
    ("push_urls", "loc"),
    [
        ([{"image": "https://dam.example.com/i", "sidecar": "http://10.0.0.7/s"}], ["body", "push_urls", 0, "sidecar"]),
        (
            [PUSH_URLS[0], {"image": "http://localhost/i", "sidecar": "https://dam.example.com/s"}],
            ["body", "push_urls", 1, "image"],
        ),
        ([PUSH_URLS[0]] * 11, ["body", "push_urls"]),
        (
            [{"image": "https://dam.example.com/" + "a" * 2000, "sidecar": "https://x.com/s"}],
            ["body", "push_urls", 0, "image"],
        ),
        ([{"image": "ftp://dam.example.com/i", "sidecar": "https://x.com/s"}], ["body", "push_urls", 0, "image"]),
    ],
)
def test_push_urls_422_names_the_bad_field(
    client: TestClient, acme: Tenant, push_urls: list[Any], loc: list[Any]
) -> None:
    body = {"brand_id": make_brand(client, acme), "brief": "b", "push_urls": push_urls}
    response = client.post("/v1/campaigns", json=body, headers=acme.auth)
    assert [e["loc"] for e in assert_problem(response, 422, "validation_error")["errors"]] == [loc]
    assert "sekrit" not in response.text


def test_pushes_listing_is_tenant_scoped(client: TestClient, acme: Tenant, globex: Tenant) -> None:
    body = {"brand_id": make_brand(client, acme), "brief": "b", "push_urls": PUSH_URLS}
    cid = client.post("/v1/campaigns", json=body, headers=acme.auth).json()["id"]
    objects = [{"name": "rank-1.png", "url": "https://dam.example.com/r1.png", "bytes": 10, "sha256": "0" * 64}]
    with db_session.session_scope() as session:
        session.add(
            DamPush(
                tenant_id=acme.id,
                campaign_id=uuid.UUID(cid),
                kind="presigned",
                status="pending",
                attempts=1,
                last_error="HTTP 503 on rank-1.json",
                objects=objects,
            )
        )
    response = client.get(f"/v1/campaigns/{cid}/pushes", headers=acme.auth)
    assert response.status_code == 200, response.text
    [item] = response.json()["items"]
    assert (item["kind"], item["target_id"], item["status"], item["attempts"]) == ("presigned", None, "pending", 1)
    assert item["last_error"] == "HTTP 503 on rank-1.json" and item["objects"] == objects
    assert {"id", "next_attempt_at", "delivered_at"} <= item.keys()
    assert_problem(client.get(f"/v1/campaigns/{cid}/pushes", headers=globex.auth), 404, "not_found")
