"""DELETE of brands, assets, campaigns and webhook endpoints, in process (TestClient, real Postgres, local object
storage): 204 and tenant-scoped (404 for another tenant's), 409 while something runs, every derived row gone
(checked against every table that has the column, so tables added later are covered), every object gone once
the cleanup job ran after the commit, everything else intact; payloads carry API links, not storage URLs."""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select, text

from shared import storage as storage_module
from shared.config import Settings
from shared.db import session as db_session
from shared.db.models import (
    AssetEmbedding,
    Campaign,
    Candidate,
    LlmCall,
    Result,
    StageRun,
    StageRunStatus,
    StorageDeletion,
)
from shared.deletions import SECOND_PASS_SECONDS
from shared.storage import S3Storage, asset_prefix, brand_prefix, campaign_key, campaign_prefix, get_storage
from tests.factories import SentTasks, Tenant, assert_problem, make_brand, moto_server, s3_client
from workers.jobs import cleanup
from workers.pipeline import deliver

HOOK = "https://hooks.example.com/onbrand"
PNG = "image/png"


def _png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "PNG")
    return buf.getvalue()


def _asset(client: TestClient, tenant: Tenant, seed: int, brand_id: str | None = None) -> dict[str, Any]:
    meta = {"kind": "product", "title": f"product {seed}", "brand_id": brand_id}
    files = {"file": ("p.png", _png(seed), PNG)}
    response = client.post("/v1/assets", files=files, data={"metadata": json.dumps(meta)}, headers=tenant.auth)
    assert response.status_code == 201, response.text
    asset: dict[str, Any] = response.json()
    with db_session.session_scope() as session:  # as the embed job writes it (no model needed here)
        session.add(
            AssetEmbedding(
                tenant_id=tenant.id,
                asset_id=uuid.UUID(asset["id"]),
                model="test",
                dim=3,
                embedding=[0.1, 0.2, 0.3],
                kind="product",
                brand_id=uuid.UUID(brand_id) if brand_id else None,
                tags=[],
            )
        )
    return asset


def _campaign(client: TestClient, tenant: Tenant, brand_id: str, asset_id: str, key: str) -> str:
    body = {"brand_id": brand_id, "brief": "the bottle on a beach", "product_asset_ids": [asset_id]}
    headers = {**tenant.auth, "Idempotency-Key": key}
    response = client.post("/v1/campaigns", json={**body, "webhook_url": HOOK}, headers=headers)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _finish(client: TestClient, tenant: Tenant, cid: str) -> None:
    """What the workers leave behind: stage runs, objects (mask, cut-out, candidates, layers), candidates,
    results, an llm call, the completion; then a decision and a review link through the API."""
    storage, campaign_id = get_storage(), uuid.UUID(cid)
    with db_session.session_scope() as session:
        campaign = session.get(Campaign, campaign_id)
        assert campaign is not None
        for name in ("segment/mask.png", "segment/cutout.png"):
            storage.put(campaign_key(tenant.id, cid, name), _png(7), PNG)
        done = StageRunStatus.SUCCEEDED
        session.add(StageRun(tenant_id=tenant.id, campaign_id=campaign_id, stage="segment", status=done, attempts=1))
        session.add(
            LlmCall(tenant_id=tenant.id, campaign_id=campaign_id, stage="decompose", backend="local", model="m")
        )
        for rank in (1, 2):
            image, layer = (campaign_key(tenant.id, cid, f"r0/c{rank}/{n}.png") for n in ("candidate", "layer"))
            storage.put(image, _png(rank), PNG)
            storage.put(layer, _png(rank + 10), PNG)
            cand = Candidate(
                id=uuid.uuid4(),
                tenant_id=tenant.id,
                campaign_id=campaign_id,
                layout_key=f"c{rank}",
                rank=rank,
                image_key=image,
                layer_key=layer,
                placement={
                    "product_asset_id": campaign.product_asset_ids[0],
                    "canvas": {"width": 1024, "height": 1024},
                },
            )
            session.add(cand)
            session.flush()
            session.add(Result(tenant_id=tenant.id, campaign_id=campaign_id, candidate_id=cand.id, rank=rank))
        session.flush()
        campaign.top_k = 2
        deliver.complete(session, campaign)  # completed, its events and the review request, as deliver does
    result = client.get(f"/v1/campaigns/{cid}/results", headers=tenant.auth).json()["items"][0]
    approved = client.post(f"/v1/campaigns/{cid}/results/{result['id']}/approve", json={}, headers=tenant.auth)
    assert approved.status_code == 200, approved.text
    link = client.post(f"/v1/campaigns/{cid}/review-links", json={"reviewer": "Ann"}, headers=tenant.auth)
    assert link.status_code == 201, link.text


def _rows_naming(column: str, ident: str) -> dict[str, int]:
    """Rows in every table that has `column` (tables added by later migrations included) naming `ident`."""
    with db_session.session_scope() as session:
        tables = session.scalars(
            text(
                "SELECT table_name FROM information_schema.columns WHERE table_schema = 'public' "
                "AND column_name = :c AND data_type = 'uuid'"
            ),
            {"c": column},
        ).all()
        counts = {
            t: session.execute(text(f'SELECT count(*) FROM "{t}" WHERE {column} = :i'), {"i": ident}).scalar_one()
            for t in tables
        }
    return {t: n for t, n in counts.items() if n}


def _objects() -> set[str]:
    return set(get_storage().list_keys("tenants/"))


def _run_cleanup(sent: SentTasks, at: datetime | None = None) -> list[str]:
    """The cleanup tasks the gateway sent after its commit, run as the worker runs them."""
    return [cleanup.delete_objects(str(deletion_id), at) for (deletion_id,) in sent.named("onbrand.delete_objects")]


def _deletions(resource_id: str) -> list[StorageDeletion]:
    with db_session.session_scope() as session:
        stmt = select(StorageDeletion).where(StorageDeletion.resource_id == uuid.UUID(resource_id))
        rows = list(session.scalars(stmt))
        session.expunge_all()
        return rows


def test_deleting_a_campaign_removes_its_rows_then_its_objects(
    client: TestClient, acme: Tenant, globex: Tenant, sent: SentTasks
) -> None:
    brand = make_brand(client, acme)
    product = _asset(client, acme, 1, brand)["id"]
    doomed, kept = (_campaign(client, acme, brand, product, k) for k in ("doomed", "kept"))
    for cid in (doomed, kept):
        _finish(client, acme, cid)
    running = _campaign(client, acme, brand, product, "running")
    before = _rows_naming("campaign_id", doomed)
    derived = {"stage_runs", "candidates", "results", "result_decisions", "review_links", "llm_calls"}
    assert derived | {"webhook_deliveries", "idempotency_keys"} <= set(before)  # the check below can fail
    others = _rows_naming("campaign_id", kept)
    assert set(others) == set(before)
    objects = _objects()
    doomed_keys = {k for k in objects if k.startswith(campaign_prefix(acme.id, doomed))}
    assert len(doomed_keys) == 6

    assert_problem(client.delete(f"/v1/campaigns/{doomed}", headers=globex.auth), 404, "not_found")
    refused = assert_problem(client.delete(f"/v1/campaigns/{running}", headers=acme.auth), 409, "campaign_running")
    assert "cancel" in refused["detail"]
    assert client.delete(f"/v1/campaigns/{doomed}", headers=acme.auth).status_code == 204
    assert_problem(client.get(f"/v1/campaigns/{doomed}", headers=acme.auth), 404, "not_found")
    assert_problem(client.delete(f"/v1/campaigns/{doomed}", headers=acme.auth), 404, "not_found")
    assert _rows_naming("campaign_id", doomed) == {}
    assert _objects() == objects  # rows first: the objects go only after the commit, in the cleanup job

    assert _run_cleanup(sent) == ["again"]  # a campaign keeps a second pass for a task that was computing
    assert _objects() == objects - doomed_keys
    late = campaign_key(acme.id, doomed, "r1/c9/candidate.png")
    get_storage().put(late, _png(9), PNG)  # what such a task writes after the DELETE
    assert _run_cleanup(sent) == ["skipped"]  # not due yet
    assert cleanup.sweep(datetime.now(UTC) + timedelta(seconds=SECOND_PASS_SECONDS + 1)) >= 1
    assert _objects() == objects - doomed_keys and _deletions(doomed) == []
    assert _rows_naming("campaign_id", kept) == others  # the brand's other campaigns are untouched

    # Cancel first, then delete: the documented way for a running campaign.
    assert client.post(f"/v1/campaigns/{running}/cancel", headers=acme.auth).status_code == 200
    assert client.delete(f"/v1/campaigns/{running}", headers=acme.auth).status_code == 204


def test_an_asset_in_use_answers_409_and_a_deleted_one_leaves_nothing(
    client: TestClient, acme: Tenant, globex: Tenant, sent: SentTasks
) -> None:
    brand = make_brand(client, acme)
    used, spare, other = _asset(client, acme, 2, brand), _asset(client, acme, 3, brand), _asset(client, acme, 4)
    running = _campaign(client, acme, brand, used["id"], "uses-asset")
    objects = _objects()
    assert {asset_prefix(acme.id, used["id"]) + n for n in ("original.png", "thumb.png")} <= objects

    assert_problem(client.delete(f"/v1/assets/{used['id']}", headers=globex.auth), 404, "not_found")
    busy = assert_problem(client.delete(f"/v1/assets/{used['id']}", headers=acme.auth), 409, "asset_in_use")
    assert busy["campaign_ids"] == [running]
    # Picked by a stage rather than named: retrieve's choice is in the campaign's state.
    with db_session.session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(running))
        assert campaign is not None
        campaign.state = {"retrieve": {"backgrounds": [{"asset_id": spare["id"]}]}}
    assert_problem(client.delete(f"/v1/assets/{spare['id']}", headers=acme.auth), 409, "asset_in_use")

    assert client.post(f"/v1/campaigns/{running}/cancel", headers=acme.auth).status_code == 200
    assert client.delete(f"/v1/assets/{used['id']}", headers=acme.auth).status_code == 204
    assert_problem(client.get(f"/v1/assets/{used['id']}", headers=acme.auth), 404, "not_found")
    assert _rows_naming("asset_id", used["id"]) == {} and _rows_naming("id", used["id"]) == {}
    assert _run_cleanup(sent) == ["deleted"]  # one pass: only the gateway writes an asset's objects
    gone = {k for k in objects if k.startswith(asset_prefix(acme.id, used["id"]))}
    assert len(gone) == 2 and _objects() == objects - gone
    assert _deletions(used["id"]) == []
    for kept in (spare, other):  # the others keep rows, embeddings and objects
        assert client.get(f"/v1/assets/{kept['id']}", headers=acme.auth).status_code == 200
        assert _rows_naming("asset_id", kept["id"]) == {"asset_embeddings": 1}
    # The finished campaign that named it is untouched: its record keeps the id it used.
    assert client.get(f"/v1/campaigns/{running}", headers=acme.auth).json()["status"] == "cancelled"


def test_deleting_a_brand_takes_its_campaigns_and_unlinks_its_assets(
    client: TestClient, acme: Tenant, globex: Tenant, sent: SentTasks
) -> None:
    brand, other_brand = make_brand(client, acme, "Doomed"), make_brand(client, acme, "Kept")
    product = _asset(client, acme, 5, brand)["id"]
    finished, running = _campaign(client, acme, brand, product, "b1"), _campaign(client, acme, brand, product, "b2")
    _finish(client, acme, finished)
    kept = _campaign(client, acme, other_brand, product, "b3")
    _finish(client, acme, kept)
    target = {"name": "dam", "bucket": "dam-bucket", "access_key_id": "AKIAEXAMPLE0000", "secret_access_key": "s"}
    added = client.post(f"/v1/brands/{brand}/delivery-targets", json=target, headers=acme.auth)
    assert added.status_code == 201, added.text
    logo = client.post(f"/v1/brands/{brand}/kit/logos", files={"file": ("l.png", _png(9), PNG)}, headers=acme.auth)
    assert logo.status_code == 201, logo.text
    objects = _objects()

    assert_problem(client.delete(f"/v1/brands/{brand}", headers=globex.auth), 404, "not_found")
    busy = assert_problem(client.delete(f"/v1/brands/{brand}", headers=acme.auth), 409, "brand_in_use")
    assert busy["campaign_ids"] == [running]
    assert client.post(f"/v1/campaigns/{running}/cancel", headers=acme.auth).status_code == 200
    assert client.delete(f"/v1/brands/{brand}", headers=acme.auth).status_code == 204
    assert_problem(client.get(f"/v1/brands/{brand}", headers=acme.auth), 404, "not_found")

    assert _rows_naming("brand_id", brand) == {}  # campaigns, delivery targets, embeddings' copies
    for cid in (finished, running):
        assert _rows_naming("campaign_id", cid) == {} and _rows_naming("id", cid) == {}
    asset = client.get(f"/v1/assets/{product}", headers=acme.auth).json()
    assert asset["brand_id"] is None  # the tenant's library keeps the photo
    assert sorted(_run_cleanup(sent)) == ["again", "again", "deleted"]  # the campaigns, then the brand's kit
    kit = {k for k in objects if k.startswith(brand_prefix(acme.id, brand))}
    doomed = {k for k in objects if k.startswith(campaign_prefix(acme.id, finished))}
    assert doomed and len(kit) == 1 and _objects() == objects - doomed - kit
    assert client.get(f"/v1/campaigns/{kept}", headers=acme.auth).json()["status"] == "completed"
    assert client.get(f"/v1/brands/{other_brand}", headers=acme.auth).status_code == 200


def test_deleting_a_webhook_endpoint_takes_its_deliveries(
    client: TestClient, acme: Tenant, globex: Tenant, sent: SentTasks
) -> None:
    created = client.post("/v1/webhook-endpoints", json={"url": HOOK}, headers=acme.auth)
    assert created.status_code == 201, created.text
    endpoint = created.json()["id"]
    assert client.post(f"/v1/webhook-endpoints/{endpoint}/test", headers=acme.auth).status_code in (200, 202)
    assert _rows_naming("endpoint_id", endpoint) == {"webhook_deliveries": 1}

    assert_problem(client.delete(f"/v1/webhook-endpoints/{endpoint}", headers=globex.auth), 404, "not_found")
    assert client.delete(f"/v1/webhook-endpoints/{endpoint}", headers=acme.auth).status_code == 204
    assert _rows_naming("endpoint_id", endpoint) == {} and _rows_naming("id", endpoint) == {}
    assert_problem(client.delete(f"/v1/webhook-endpoints/{endpoint}", headers=acme.auth), 404, "not_found")


def test_a_storage_failure_is_retried_until_the_objects_are_gone(
    client: TestClient, acme: Tenant, sent: SentTasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    asset = _asset(client, acme, 6)
    assert client.delete(f"/v1/assets/{asset['id']}", headers=acme.auth).status_code == 204
    storage = get_storage()

    def down(prefix: str) -> int:
        raise ConnectionError("storage unreachable")

    with monkeypatch.context() as patched:
        patched.setattr(storage, "delete_prefix", down)
        assert _run_cleanup(sent) == ["retry"]
    [row] = _deletions(asset["id"])
    assert row.attempts == 1 and row.last_error == "ConnectionError: storage unreachable"
    assert row.next_attempt_at > datetime.now(UTC)  # backed off: the sweep takes it when due
    assert storage.list_keys(asset_prefix(acme.id, asset["id"]))
    assert cleanup.sweep(row.next_attempt_at + timedelta(seconds=1)) >= 1  # other tests' second passes too
    assert storage.list_keys(asset_prefix(acme.id, asset["id"])) == [] and _deletions(asset["id"]) == []


def test_every_foreign_key_to_a_deletable_resource_cascades_or_unlinks(env: dict[str, str]) -> None:
    # A table added later with a plain foreign key would make DELETE fail (or leave an orphan): 'a' is NO ACTION.
    with db_session.session_scope() as session:
        rows = session.execute(
            text(
                "SELECT conrelid::regclass::text, confrelid::regclass::text, confdeltype FROM pg_constraint "
                "WHERE contype = 'f' AND confrelid::regclass::text IN "
                "('campaigns', 'assets', 'brands', 'webhook_endpoints', 'candidates', 'results', "
                "'webhook_deliveries', 'delivery_targets')"
            )
        ).all()
    assert len(rows) >= 15
    assert [r for r in rows if r[2] not in ("c", "n")] == []


def test_completion_events_carry_api_links_not_expiring_storage_urls(
    client: TestClient, acme: Tenant, sent: SentTasks
) -> None:
    brand = make_brand(client, acme)
    cid = _campaign(client, acme, brand, _asset(client, acme, 8, brand)["id"], "links")
    _finish(client, acme, cid)
    with db_session.session_scope() as session:
        payloads = [
            p
            for (p,) in session.execute(
                text("SELECT payload FROM webhook_deliveries WHERE campaign_id = :c AND event_type = :t"),
                {"c": cid, "t": "campaign.completed"},
            )
        ]
    [payload] = payloads
    assert (
        len(payload["results"]) == 2 and payload["links"]["results"] == f"http://testserver/v1/campaigns/{cid}/results"
    )
    urls = [v for v in _strings(payload) if "://" in v]
    assert urls and all(u.startswith(f"http://testserver/v1/campaigns/{cid}") for u in urls), urls
    listed = client.get(payload["links"]["results"].removeprefix("http://testserver"), headers=acme.auth).json()
    assert [r["image_url"] is not None for r in listed["items"]] == [True, True]  # signed when read


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return [value] if isinstance(value, str) else []


def test_s3_prefix_listing_and_deletion_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real S3 over HTTP (moto's server): a prefix with more keys than one DeleteObjects call takes (3 here, 1000
    on S3), under the bucket's own key prefix; a sibling campaign's objects (same tenant, another id) stay."""
    monkeypatch.setattr(storage_module, "S3_DELETE_BATCH", 3)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    with moto_server() as url:
        s3_client(url).create_bucket(Bucket="onbrand-del")
        settings = Settings(storage_backend="s3", s3_bucket="onbrand-del", s3_prefix="pfx", s3_endpoint_url=url)
        storage = S3Storage(settings)
        doomed, sibling = campaign_prefix("t1", "c1"), campaign_prefix("t1", "c10")
        keys = [f"{doomed}r0/{i:04d}.png" for i in range(7)]
        for key in [*keys, f"{sibling}r0/0000.png"]:
            storage.put(key, b"x", PNG)
        assert storage.list_keys(doomed) == keys
        assert storage.delete_prefix(doomed) == 7
        assert storage.list_keys(doomed) == [] and storage.list_keys("t1/") == []
        assert storage.list_keys("tenants/") == [f"{sibling}r0/0000.png"]
        with pytest.raises(ValueError):
            storage.delete_prefix("tenants/t1/campaigns/c1")  # not a folder: would match c10's keys too
