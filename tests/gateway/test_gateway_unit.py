"""In-process gateway tests: FastAPI TestClient against a real Postgres (own database per module; the
fixtures `env`, `client`, `sent`, `acme`, ... are in tests/conftest.py).

The worker side is not exercised: shared.queue.send is replaced by a recorder that checks,
at send time, that every task carries ids only and that the rows they name are already
committed (visible from a separate connection).
"""

from __future__ import annotations

import io
import json
import random
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from itertools import count
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import func, select, text

from shared import queue, stages
from shared.config import get_settings
from shared.db import session as db_session
from shared.db.models import Asset, Campaign, Candidate, IdempotencyKey, Result, StageRun, WebhookDelivery
from shared.storage import get_storage, sign_local
from tests.factories import SentTasks, Tenant, assert_problem, make_brand, post_campaign
from tests.system import clear_caches

# ---------------------------------------------------------------- helpers

_colors = count(1)


def png_bytes(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> bytes:
    """A distinct image on every call, so uploads do not dedupe by accident."""
    n = next(_colors)
    color = (n % 251, (n * 7) % 253, (n * 13) % 255) + ((128,) if mode == "RGBA" else ())
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, "PNG")
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def huge_png_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A tiny file whose header claims width x height pixels: a decompression bomb."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def upload(client: TestClient, tenant: Tenant, data: bytes, **metadata: Any) -> Any:
    meta = {"kind": "product", "title": "thing", **metadata}
    files = {"file": ("upload.png", data, "image/png")}
    return client.post("/v1/assets", files=files, data={"metadata": json.dumps(meta, default=str)}, headers=tenant.auth)


def make_product(client: TestClient, tenant: Tenant) -> str:
    response = upload(client, tenant, png_bytes())
    assert response.status_code == 201, response.text
    return response.json()["id"]


def count_rows(model: Any, *where: Any) -> int:
    with db_session.new_session() as session:
        return session.scalar(select(func.count()).select_from(model).where(*where)) or 0


def object_files(env: dict[str, str]) -> set[Path]:
    return {p for p in Path(env["ONBRAND_STORAGE_DIR"]).rglob("*") if p.is_file()}


def local_path(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


# ---------------------------------------------------------------- system routes


def test_healthz_readyz_metrics_openapi(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "broker": "ok"}
    client.get("/v1/brands/00000000-0000-0000-0000-000000000000")  # 401, labelled by route template
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert 'onbrand_http_requests_total{method="GET",route="/healthz",status="200"}' in metrics.text
    assert 'route="/v1/brands/{brand_id}",status="401"' in metrics.text
    assert "onbrand_http_request_duration_seconds_bucket" in metrics.text
    assert "/v1/campaigns" in client.get("/openapi.json").json()["paths"]


def test_readyz_503_when_broker_unreachable(env: dict[str, str]) -> None:
    from services.gateway.app import create_app

    settings = get_settings().model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(settings)) as client:
        body = assert_problem(client.get("/readyz"), 503, "not_ready")
    assert body["checks"] == {"database": "ok", "broker": "unavailable"}


def test_unknown_route_and_method_are_problems(client: TestClient, acme: Tenant) -> None:
    assert_problem(client.get("/v2/nothing"), 404, "not_found")
    assert_problem(client.put("/v1/brands", headers=acme.auth), 405, "method_not_allowed")


def test_internal_error_leaks_nothing(app: Any, acme: Tenant, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.gateway.brands import service

    def boom(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("password=hunter2 in /srv/secret.py")

    monkeypatch.setattr(service, "list_page", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/v1/brands", headers=acme.auth)
    assert_problem(response, 500, "internal_error")
    assert "hunter2" not in response.text and "secret.py" not in response.text


# ---------------------------------------------------------------- auth and tenancy


@pytest.mark.parametrize("header", [None, "Bearer", "Basic dXNlcjpwYXNz", "Bearer onb_wrong", "onb_no_scheme"])
def test_401_without_a_valid_key(client: TestClient, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    for method, path in (("GET", "/v1/brands"), ("POST", "/v1/campaigns"), ("GET", "/v1/assets")):
        response = client.request(method, path, headers=headers, json={})
        assert_problem(response, 401, "unauthorized")
        assert response.headers["www-authenticate"].startswith("Bearer")


def test_other_tenants_objects_are_404(client: TestClient, acme: Tenant, globex: Tenant) -> None:
    campaign = post_campaign(client, acme)
    asset_id = make_product(client, acme)
    hook = client.post("/v1/webhook-endpoints", json={"url": "https://example.com/h"}, headers=acme.auth).json()
    for path in (
        f"/v1/brands/{campaign['brand_id']}",
        f"/v1/assets/{asset_id}",
        f"/v1/campaigns/{campaign['id']}",
        f"/v1/campaigns/{campaign['id']}/candidates",
        f"/v1/webhook-endpoints/{hook['id']}",
    ):
        assert client.get(path, headers=acme.auth).status_code == 200, path
        assert_problem(client.get(path, headers=globex.auth), 404, "not_found")
    assert_problem(client.post(f"/v1/campaigns/{campaign['id']}/cancel", headers=globex.auth), 404, "not_found")
    assert_problem(client.delete(f"/v1/webhook-endpoints/{hook['id']}", headers=globex.auth), 404, "not_found")
    ids = {c["id"] for c in client.get("/v1/campaigns?limit=100", headers=globex.auth).json()["items"]}
    assert campaign["id"] not in ids
    assert client.get(f"/v1/campaigns/{campaign['id']}", headers=acme.auth).json()["status"] == "queued"


# ---------------------------------------------------------------- validation


def _locs(response: Any) -> list[list[Any]]:
    return [e["loc"] for e in assert_problem(response, 422, "validation_error")["errors"]]


def test_422_on_malformed_json(client: TestClient, acme: Tenant) -> None:
    headers = {**acme.auth, "Content-Type": "application/json"}
    response = client.post("/v1/campaigns", content=b'{"brand_id": ', headers=headers)
    errors = assert_problem(response, 422, "validation_error")["errors"]
    assert errors[0]["type"] == "json_invalid" and errors[0]["loc"][0] == "body"


def test_422_with_field_paths(client: TestClient, acme: Tenant) -> None:
    brand = {
        "name": "",
        "palette": ["#12345G"],
        "guidelines": [{"text": "ok", "weight": -1}],
        "forbidden_terms": ["ok", " ", "tab\there"],
    }
    assert _locs(client.post("/v1/brands", json=brand, headers=acme.auth)) == [
        ["body", "name"],
        ["body", "palette", 0],
        ["body", "guidelines", 0, "weight"],
        ["body", "forbidden_terms", 1],
        ["body", "forbidden_terms", 2],
    ]
    limits = client.post(
        "/v1/brands", json={"name": "b", "qc_thresholds": {"min_exat": 1, "area_min": 0.9}}, headers=acme.auth
    )
    assert _locs(limits) == [["body", "qc_thresholds"]] and "min_exat" in limits.text
    inverted = client.post("/v1/brands", json={"name": "b", "qc_thresholds": {"area_min": 0.9}}, headers=acme.auth)
    assert _locs(inverted) == [["body", "qc_thresholds"]] and "area_min must be below area_max" in inverted.text
    for brief in ("", "   ", "x" * 10_000):  # empty, blank and 10,000 characters: refused before anything runs
        empty = {"brand_id": str(uuid.uuid4()), "brief": brief}
        assert _locs(client.post("/v1/campaigns", json=empty, headers=acme.auth)) == [["body", "brief"]]
    campaign = {
        "brand_id": "not-a-uuid",
        "brief": "x" * 2001,
        "sizes": [{"width": 100, "height": 1024}],
        "top_k": 11,
        "qc_policy": "lenient",
        "webhook_url": "ftp://example.com/h",
    }
    long_url = {"brand_id": str(uuid.uuid4()), "brief": "b", "webhook_url": "https://example.com/" + "a" * 2000}
    assert _locs(client.post("/v1/campaigns", json=long_url, headers=acme.auth)) == [["body", "webhook_url"]]
    locs = _locs(client.post("/v1/campaigns", json=campaign, headers=acme.auth))
    assert {
        ("body", "brand_id"),
        ("body", "brief"),
        ("body", "sizes", 0, "width"),
        ("body", "top_k"),
        ("body", "qc_policy"),
        ("body", "webhook_url"),
    } <= {tuple(loc) for loc in locs}
    sizes = {
        "brand_id": str(uuid.uuid4()),
        "brief": "b",
        "sizes": [{"aspect": "2:1"}, {"aspect": "4:5", "width": 512, "height": 512}, {"width": 512}],
        "safe_zones": [{"x": 0.9, "y": 0, "width": 0.2, "height": 0.1}, {"x": 0, "y": 0, "width": 0, "height": 1}],
    }
    assert _locs(client.post("/v1/campaigns", json=sizes, headers=acme.auth)) == [
        ["body", "sizes", 0, "aspect"],
        ["body", "sizes", 1],
        ["body", "sizes", 2],
        ["body", "safe_zones", 0],
        ["body", "safe_zones", 1, "width"],
    ]
    too_many = {"brand_id": str(uuid.uuid4()), "brief": "b", "sizes": [{"width": 512, "height": 512}] * 7}
    assert _locs(client.post("/v1/campaigns", json=too_many, headers=acme.auth)) == [["body", "sizes"]]
    assert _locs(client.get("/v1/brands?limit=0", headers=acme.auth)) == [["query", "limit"]]
    assert _locs(client.get("/v1/brands?limit=101", headers=acme.auth)) == [["query", "limit"]]
    assert _locs(client.get("/v1/brands?cursor=garbage!", headers=acme.auth)) == [["query", "cursor"]]
    assert _locs(client.get("/v1/brands/not-a-uuid", headers=acme.auth)) == [["path", "brand_id"]]
    hook = {"url": "https://example.com", "event_types": ["campaign.complete"]}
    assert _locs(client.post("/v1/webhook-endpoints", json=hook, headers=acme.auth)) == [["body", "event_types", 0]]


def test_422_on_bad_asset_metadata(client: TestClient, acme: Tenant, env: dict[str, str]) -> None:
    before = object_files(env)
    response = upload(client, acme, png_bytes(), kind="poster", kpis={"ctr": "high"})
    assert {tuple(loc) for loc in _locs(response)} == {
        ("body", "metadata", "kind"),
        ("body", "metadata", "kpis", "ctr"),
    }
    bad_json = client.post(
        "/v1/assets",
        files={"file": ("a.png", png_bytes(), "image/png")},
        data={"metadata": "{not json"},
        headers=acme.auth,
    )
    assert _locs(bad_json)[0][:2] == ["body", "metadata"]
    missing = client.post("/v1/assets", files={"file": ("a.png", png_bytes(), "image/png")}, headers=acme.auth)
    assert _locs(missing) == [["body", "metadata"]]
    assert object_files(env) == before


# ---------------------------------------------------------------- assets


def test_upload_creates_normalized_png_and_thumbnail(client: TestClient, acme: Tenant, sent: SentTasks) -> None:
    brand_id = make_brand(client, acme)
    response = upload(
        client,
        acme,
        png_bytes((600, 300), "RGBA"),
        brand_id=brand_id,
        tags=["shoe"],
        kpis={"ctr": 0.031},
        attributes={"sku": "A1"},
    )
    assert response.status_code == 201, response.text
    asset = response.json()
    assert response.headers["location"] == f"/v1/assets/{asset['id']}"
    assert (asset["width"], asset["height"], asset["has_alpha"]) == (600, 300, True)
    assert asset["content_type"] == "image/png" and asset["brand_id"] == brand_id
    assert asset["kpis"] == {"ctr": 0.031} and asset["tags"] == ["shoe"] and len(asset["sha256"]) == 64
    thumb = client.get(local_path(asset["thumbnail_url"]))
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(thumb.content)).size == (256, 128)
    assert sent.named("onbrand.embed_assets") == [(uuid.UUID(asset["id"]),)]
    listed = client.get(f"/v1/assets?kind=product&brand_id={brand_id}", headers=acme.auth).json()
    assert [a["id"] for a in listed["items"]] == [asset["id"]]
    assert client.get(f"/v1/assets?kind=background&brand_id={brand_id}", headers=acme.auth).json()["items"] == []


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_upload_sniffs_format_not_declared_type(client: TestClient, acme: Tenant, fmt: str) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (50, 30), (next(_colors) % 256, 90, 160)).save(buffer, fmt)
    files = {"file": ("notes.txt", buffer.getvalue(), "text/plain")}  # the declared type is ignored
    response = client.post("/v1/assets", files=files, data={"metadata": '{"kind": "background"}'}, headers=acme.auth)
    assert response.status_code == 201, response.text
    assert (response.json()["width"], response.json()["content_type"]) == (50, "image/png")


def test_upload_strips_metadata_and_applies_orientation(client: TestClient, acme: Tenant) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    exif[0x010F] = "SecretCam"
    buffer = io.BytesIO()
    Image.new("RGB", (80, 40), (10, 200, 30)).save(buffer, "JPEG", exif=exif.tobytes())
    asset = upload(client, acme, buffer.getvalue()).json()
    assert (asset["width"], asset["height"], asset["has_alpha"]) == (40, 80, False)
    stored = client.get(local_path(asset["url"])).content
    assert b"SecretCam" not in stored and b"eXIf" not in stored and b"iCCP" not in stored
    assert Image.open(io.BytesIO(stored)).format == "PNG"


def test_upload_dedupes_same_bytes(
    client: TestClient, acme: Tenant, globex: Tenant, sent: SentTasks, env: dict[str, str]
) -> None:
    data = png_bytes()
    first = upload(client, acme, data)
    files_after_first = object_files(env)
    again = upload(client, acme, data, title="other title")
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"] and again.json()["title"] == "thing"
    assert object_files(env) == files_after_first
    assert len(sent.named("onbrand.embed_assets")) == 1
    other = upload(client, globex, data)  # dedupe is per tenant
    assert other.status_code == 201 and other.json()["id"] != first.json()["id"]


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"%PDF-1.7 not an image at all" * 10, 415, "unsupported_media_type"),
        (b"GIF89a" + b"\x00" * 64, 415, "unsupported_media_type"),
        (b"", 415, "unsupported_media_type"),
        (huge_png_header(), 413, "payload_too_large"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, 422, "invalid_image"),
        (png_bytes((300, 300))[:-40], 422, "invalid_image"),
    ],
    ids=["pdf", "gif", "empty", "pixel-bomb", "broken-header", "truncated"],
)
def test_rejected_uploads_leave_nothing(
    client: TestClient, acme: Tenant, env: dict[str, str], sent: SentTasks, data: bytes, status: int, code: str
) -> None:
    rows, files = count_rows(Asset), object_files(env)
    assert_problem(upload(client, acme, data), status, code)
    assert count_rows(Asset) == rows and object_files(env) == files and not sent


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_limit_from_settings(env: dict[str, str], acme: Tenant, sent: SentTasks) -> None:
    from services.gateway.app import create_app

    default_pixels = get_settings().max_image_pixels
    try:
        app = create_app(get_settings().model_copy(update={"max_image_pixels": 64 * 64}))
        with TestClient(app) as client:
            rows = count_rows(Asset)
            body = assert_problem(upload(client, acme, png_bytes((65, 64))), 413, "payload_too_large")
            assert "pixels" in body["detail"] and count_rows(Asset) == rows
            assert upload(client, acme, png_bytes((64, 64))).status_code == 201
    finally:
        Image.MAX_IMAGE_PIXELS = default_pixels  # create_app sets Pillow's process-wide guard


def test_oversized_upload_413(env: dict[str, str], acme: Tenant, sent: SentTasks) -> None:
    from services.gateway import app as app_module

    settings = get_settings().model_copy(update={"max_upload_bytes": 2_000})
    data = png_bytes((400, 400))
    noise = io.BytesIO()  # random pixels: a PNG that does not compress below the limit
    Image.frombytes("L", (120, 120), random.Random(0).randbytes(120 * 120)).save(noise, "PNG")
    assert len(noise.getvalue()) > 2_000
    rows, files = count_rows(Asset), object_files(env)
    with TestClient(app_module.create_app(settings)) as client:
        # Under the request ceiling but over max_upload_bytes: cut off by the chunked read.
        assert_problem(upload(client, acme, noise.getvalue()), 413, "payload_too_large")
        # Content-Length over the request ceiling: refused before the body is read.
        big = noise.getvalue() * (app_module.MULTIPART_OVERHEAD // len(noise.getvalue()) + 2)
        assert_problem(upload(client, acme, big), 413, "payload_too_large")
        assert upload(client, acme, data).status_code == 201  # small files still pass
    assert count_rows(Asset) == rows + 1 and len(object_files(env)) == len(files) + 2


def test_upload_with_unknown_brand_is_422(
    client: TestClient, acme: Tenant, globex: Tenant, env: dict[str, str]
) -> None:
    rows, files = count_rows(Asset), object_files(env)
    for brand_id in (uuid.uuid4(), make_brand(client, globex)):
        body = assert_problem(upload(client, acme, png_bytes(), brand_id=brand_id), 422, "unknown_reference")
        assert body["field"] == "brand_id"
    assert count_rows(Asset) == rows and object_files(env) == files


def test_failed_insert_deletes_written_objects(
    app: Any, acme: Tenant, env: dict[str, str], sent: SentTasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.gateway.assets import service

    def failing_insert(session: Any, storage: Any, asset: Asset) -> Any:
        assert storage.exists(asset.storage_key)  # the objects were written...
        raise RuntimeError("database went away")

    monkeypatch.setattr(service, "_insert", failing_insert)
    rows, files = count_rows(Asset), object_files(env)
    with TestClient(app, raise_server_exceptions=False) as client:
        assert_problem(upload(client, acme, png_bytes()), 500, "internal_error")
    assert count_rows(Asset) == rows and object_files(env) == files and not sent  # ...and deleted again


# ---------------------------------------------------------------- campaigns


def test_create_campaign_202(client: TestClient, acme: Tenant, sent: SentTasks) -> None:
    brand_id, product = make_brand(client, acme), make_product(client, acme)
    body = {
        "brand_id": brand_id,
        "brief": "  Launch the new runner  ",
        "product_asset_ids": [product, product],
        "sizes": [{"width": 1080, "height": 1350}, {"aspect": "1.91:1"}],
        "top_k": 2,
        "qc_policy": "weighted",
        "safe_zones": [{"label": "logo", "x": 0.8, "y": 0.0, "width": 0.2, "height": 0.15}],
        "priority": "interactive",
        "webhook_url": "https://example.com/hooks/onbrand",
    }
    response = client.post("/v1/campaigns", json=body, headers=acme.auth)
    assert response.status_code == 202, response.text
    campaign = response.json()
    assert campaign["status"] == "queued" and campaign["brief"] == "Launch the new runner"
    assert response.headers["location"] == campaign["status_url"] == campaign["links"]["self"]
    assert campaign["status_url"].endswith(f"/v1/campaigns/{campaign['id']}")
    assert campaign["webhook_secret"].startswith("whsec_")
    assert campaign["request"] == {
        "product_asset_ids": [product],
        "sizes": [{"width": 1080, "height": 1350}, {"aspect": "1.91:1", "width": 1200, "height": 628}],
        "safe_zones": [{"label": "logo", "x": 0.8, "y": 0.0, "width": 0.2, "height": 0.15}],
        "top_k": 2,
        "qc_policy": "weighted",
        "max_retry_attempts": 1,
        "max_prompt_revisions": 1,
        "priority": "interactive",
        "webhook_url": "https://example.com/hooks/onbrand",
    }
    assert [s["stage"] for s in campaign["stages"]] == list(stages.PIPELINE)
    assert {s["status"] for s in campaign["stages"]} == {"pending"} and campaign["progress"] == 0
    assert campaign["results"] == [] and campaign["state"] == {} and "Idempotent-Replayed" not in response.headers
    cid = uuid.UUID(campaign["id"])
    assert sent.named("onbrand.decompose") == [(cid,)]
    with db_session.new_session() as session:
        deliveries = session.scalars(select(WebhookDelivery).where(WebhookDelivery.campaign_id == cid)).all()
    # One outbox row for the campaign's webhook_url (plus one per subscribed tenant endpoint), each sent.
    assert {d.event_type for d in deliveries} == {"campaign.queued"}
    assert [d.url for d in deliveries if d.endpoint_id is None] == ["https://example.com/hooks/onbrand"]
    assert sorted(a for (a,) in sent.named("onbrand.send_webhook")) == sorted(d.id for d in deliveries)
    fetched = client.get(f"/v1/campaigns/{campaign['id']}", headers=acme.auth).json()
    assert "webhook_secret" not in fetched and "status_url" not in fetched


def test_campaign_defaults(client: TestClient, acme: Tenant) -> None:
    campaign = post_campaign(client, acme)
    assert campaign["request"]["sizes"] == [{"width": 1024, "height": 1024}]
    assert (campaign["request"]["top_k"], campaign["request"]["qc_policy"]) == (3, "strict")
    assert campaign["webhook_secret"] is None and campaign["request"]["webhook_url"] is None


def test_idempotency_key(client: TestClient, acme: Tenant, globex: Tenant, sent: SentTasks) -> None:
    brand_id = make_brand(client, acme)
    body = {"brand_id": brand_id, "brief": "Idempotent", "webhook_url": "https://example.com/h"}
    headers = {**acme.auth, "Idempotency-Key": "order-42"}
    first = client.post("/v1/campaigns", json=body, headers=headers)
    # Same body, other key order and an explicit default: the same request.
    again = client.post("/v1/campaigns", json={"top_k": 3, **dict(reversed(body.items()))}, headers=headers)
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.json()["id"] == first.json()["id"] and again.headers["idempotent-replayed"] == "true"
    assert again.json()["webhook_secret"] == first.json()["webhook_secret"]
    assert len(sent.named("onbrand.decompose")) == 1
    assert count_rows(Campaign, Campaign.brand_id == uuid.UUID(brand_id)) == 1
    changed = client.post("/v1/campaigns", json={**body, "brief": "Different"}, headers=headers)
    assert_problem(changed, 422, "idempotency_key_reused")
    # Keys are per tenant: globex's "order-42" is a different key.
    other = client.post(
        "/v1/campaigns",
        json={**body, "brand_id": make_brand(client, globex)},
        headers={**globex.auth, "Idempotency-Key": "order-42"},
    )
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]


def test_idempotency_race_returns_the_winner(env: dict[str, str], acme: Tenant, client: TestClient) -> None:
    """Two identical requests in flight: the loser's key insert waits for the winner's uncommitted key, fails when
    the winner commits, and the loser answers with the winner's campaign, having written nothing."""
    from services.gateway.campaigns.create import request_hash
    from services.gateway.campaigns.schemas import CampaignCreate

    body = {"brand_id": make_brand(client, acme), "brief": "race"}
    key = f"race-{uuid.uuid4()}"
    won = uuid.UUID(client.post("/v1/campaigns", json=body, headers=acme.auth).json()["id"])
    winner = db_session.new_session()  # the winner's key, inserted and not committed: it holds the row
    digest = request_hash(CampaignCreate.model_validate(body))
    winner.add(IdempotencyKey(tenant_id=acme.id, key=key, request_hash=digest, campaign_id=won))
    winner.flush()
    outcome: dict[str, Any] = {}

    def loser() -> None:
        outcome["response"] = client.post("/v1/campaigns", json=body, headers={**acme.auth, "Idempotency-Key": key})

    thread = threading.Thread(target=loser)
    thread.start()
    _wait_for_lock_wait()
    winner.commit()
    thread.join(timeout=30)
    winner.close()
    response = outcome["response"]
    assert response.status_code == 202 and response.headers["Idempotent-Replayed"] == "true"
    assert response.json()["id"] == str(won)
    assert count_rows(Campaign, Campaign.brief == "race", Campaign.tenant_id == acme.id) == 1
    assert count_rows(IdempotencyKey, IdempotencyKey.key == key) == 1


def _wait_for_lock_wait(timeout: float = 10) -> None:
    """Until another backend is blocked on a lock (the loser's insert of the same key)."""
    probe = "select count(*) from pg_stat_activity where wait_event_type = 'Lock' and datname = current_database()"
    deadline = time.monotonic() + timeout
    with db_session.get_engine().connect() as conn:
        while conn.execute(text(probe)).scalar() == 0:
            assert time.monotonic() < deadline, "the concurrent request never blocked on the key"
            time.sleep(0.02)
            conn.rollback()  # a fresh snapshot of pg_stat_activity per poll


def test_unknown_references_create_nothing(client: TestClient, acme: Tenant, globex: Tenant, sent: SentTasks) -> None:
    brand_id = make_brand(client, acme)
    background = upload(client, acme, png_bytes(), kind="background").json()["id"]
    foreign_product = make_product(client, globex)
    sent.clear()
    before = count_rows(Campaign)
    cases = [
        ({"brand_id": str(uuid.uuid4())}, "brand_id"),
        ({"brand_id": make_brand(client, globex)}, "brand_id"),
        ({"brand_id": brand_id, "product_asset_ids": [str(uuid.uuid4())]}, "product_asset_ids"),
        ({"brand_id": brand_id, "product_asset_ids": [background]}, "product_asset_ids"),
        ({"brand_id": brand_id, "product_asset_ids": [foreign_product]}, "product_asset_ids"),
    ]
    keys = [f"unknown-{uuid.uuid4()}" for _ in cases]
    for (fields, field), key in zip(cases, keys, strict=True):
        response = client.post(
            "/v1/campaigns", json={"brief": "b", **fields}, headers={**acme.auth, "Idempotency-Key": key}
        )
        assert assert_problem(response, 422, "unknown_reference")["field"] == field
    assert count_rows(Campaign) == before and not sent
    assert count_rows(IdempotencyKey, IdempotencyKey.key.in_(keys)) == 0


def test_loopback_webhook_urls_are_rejected(client: TestClient, acme: Tenant) -> None:
    body = {"brand_id": make_brand(client, acme), "brief": "b", "webhook_url": "http://127.0.0.1:9/h"}
    assert _locs(client.post("/v1/campaigns", json=body, headers=acme.auth)) == [["body", "webhook_url"]]
    hook = {"url": "http://localhost/h"}
    assert _locs(client.post("/v1/webhook-endpoints", json=hook, headers=acme.auth)) == [["body", "url"]]


def test_cancel(client: TestClient, acme: Tenant, sent: SentTasks) -> None:
    # Its own webhook: the cancelled event's outbox row does not depend on an endpoint an earlier test registered.
    campaign = post_campaign(client, acme, webhook_url="https://example.com/hooks/onbrand")
    sent.clear()
    response = client.post(f"/v1/campaigns/{campaign['id']}/cancel", headers=acme.auth)
    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["status"] == "cancelled" and cancelled["completed_at"] is not None
    assert cancelled["progress"] == 1 and "webhook_secret" not in cancelled
    with db_session.new_session() as session:
        rows = session.scalars(
            select(WebhookDelivery).where(
                WebhookDelivery.campaign_id == uuid.UUID(campaign["id"]),
                WebhookDelivery.event_type == "campaign.cancelled",
            )
        ).all()
    assert rows and rows[0].payload["status"] == "cancelled"
    assert sorted(a for (a,) in sent.named("onbrand.send_webhook")) == sorted(r.id for r in rows)
    assert_problem(client.post(f"/v1/campaigns/{campaign['id']}/cancel", headers=acme.auth), 409, "conflict")


def test_campaign_view_reports_stages_results_and_candidates(
    client: TestClient, acme: Tenant, env: dict[str, str]
) -> None:
    campaign = post_campaign(client, acme)
    cid, storage = uuid.UUID(campaign["id"]), get_storage()
    image_key = f"tenants/{acme.id}/campaigns/{cid}/c0.png"
    storage.put(image_key, png_bytes(), "image/png")
    with db_session.session_scope() as session:
        _seed_pipeline(session, acme.id, cid, image_key)
    view = client.get(f"/v1/campaigns/{cid}", headers=acme.auth).json()
    by_stage = {s["stage"]: s for s in view["stages"]}
    assert by_stage["decompose"]["status"] == "succeeded" and by_stage["decompose"]["finished_at"]
    generate = by_stage["generate"]
    assert (generate["status"], generate["done"], generate["total"]) == ("running", 1, 3)
    assert by_stage["qc"]["status"] == "pending" and view["progress"] == round(1 / len(stages.MAIN_PATH), 4)
    assert view["state"] == {"decompose": {"mood": "sunny"}} and view["current_stage"] == "generate"
    assert [r["rank"] for r in view["results"]] == [1]
    assert client.get(local_path(view["results"][0]["image_url"])).status_code == 200
    pages = list(_candidate_pages(client, acme, cid, limit=2))
    assert [len(items) for items in pages] == [2, 2, 1]
    # rank first (nulls last), then aesthetic descending (nulls last)
    assert [c["layout_key"] for items in pages for c in items] == ["ranked-1", "ranked-2", "best", "worse", "unscored"]


def _candidate_pages(client: TestClient, tenant: Tenant, cid: uuid.UUID, limit: int) -> Iterator[list[Any]]:
    cursor = None
    while True:
        query = f"limit={limit}" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(f"/v1/campaigns/{cid}/candidates?{query}", headers=tenant.auth).json()
        yield page["items"]
        if (cursor := page["next_cursor"]) is None:
            return


def _seed_pipeline(session: Any, tenant_id: uuid.UUID, cid: uuid.UUID, image_key: str) -> None:
    campaign = session.get(Campaign, cid)
    campaign.status, campaign.current_stage, campaign.state = "running", "generate", {"decompose": {"mood": "sunny"}}
    now = func.now()
    session.add(
        StageRun(
            tenant_id=tenant_id, campaign_id=cid, stage="decompose", status="succeeded", started_at=now, finished_at=now
        )
    )
    for item, status in enumerate(("succeeded", "running", "pending")):
        session.add(StageRun(tenant_id=tenant_id, campaign_id=cid, stage="generate", item=item, status=status))
    candidates = [
        ("worse", None, 0.2),
        ("ranked-2", 2, 0.1),
        ("unscored", None, None),
        ("best", None, 0.9),
        ("ranked-1", 1, 0.5),
    ]
    rows = {
        key: Candidate(
            id=uuid.uuid4(),
            tenant_id=tenant_id,
            campaign_id=cid,
            layout_key=key,
            rank=rank,
            aesthetic=aesthetic,
            image_key=image_key,
        )
        for key, rank, aesthetic in candidates
    }
    session.add_all(rows.values())
    session.flush()
    session.add(Result(tenant_id=tenant_id, campaign_id=cid, candidate_id=rows["ranked-1"].id, rank=1))


def test_list_pagination(client: TestClient, globex: Tenant, acme: Tenant) -> None:
    created = [make_brand(client, globex, f"brand-{i}") for i in range(5)]
    seen, cursor, pages = [], None, 0
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(f"/v1/brands{query}", headers=globex.auth).json()
        seen += [b["id"] for b in page["items"]]
        pages, cursor = pages + 1, page["next_cursor"]
        if cursor is None:
            break
        assert len(page["items"]) == 2
    assert seen[-5:] == created and len(seen) == len(set(seen)) and pages == -(-len(seen) // 2)
    assert not set(created) & {b["id"] for b in client.get("/v1/brands?limit=100", headers=acme.auth).json()["items"]}
    campaigns = client.get("/v1/campaigns?status=cancelled&limit=100", headers=acme.auth).json()
    assert all(c["status"] == "cancelled" for c in campaigns["items"])


# ---------------------------------------------------------------- webhook endpoints


def test_webhook_endpoints(client: TestClient, acme: Tenant, sent: SentTasks) -> None:
    body = {"url": "https://example.com/onbrand", "event_types": ["campaign.*"], "description": "prod"}
    response = client.post("/v1/webhook-endpoints", json=body, headers=acme.auth)
    assert response.status_code == 201, response.text
    endpoint = response.json()
    assert endpoint["secret"].startswith("whsec_") and endpoint["event_types"] == ["campaign.*"]
    assert endpoint["enabled"] is True
    listed = client.get("/v1/webhook-endpoints", headers=acme.auth).json()["items"]
    assert endpoint["id"] in {e["id"] for e in listed} and all("secret" not in e for e in listed)
    campaign = post_campaign(client, acme)
    assert (
        count_rows(
            WebhookDelivery,
            WebhookDelivery.campaign_id == uuid.UUID(campaign["id"]),
            WebhookDelivery.endpoint_id == uuid.UUID(endpoint["id"]),
        )
        == 1
    )
    assert client.delete(f"/v1/webhook-endpoints/{endpoint['id']}", headers=acme.auth).status_code == 204
    assert_problem(client.delete(f"/v1/webhook-endpoints/{endpoint['id']}", headers=acme.auth), 404, "not_found")
    default = client.post("/v1/webhook-endpoints", json={"url": "https://example.com/all"}, headers=acme.auth)
    assert default.json()["event_types"] == ["*"]


# ---------------------------------------------------------------- signed files


def test_files_signed_urls(client: TestClient, acme: Tenant) -> None:
    asset = upload(client, acme, png_bytes()).json()
    url = local_path(asset["url"])
    ok = client.get(url)
    assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(ok.content)).size == (64, 48)
    query = parse_qs(urlsplit(asset["url"]).query)
    path, expires, signature = urlsplit(asset["url"]).path, query["expires"][0], query["signature"][0]
    tampered = signature[:-1] + ("0" if signature[-1] != "0" else "1")
    assert_problem(client.get(f"{path}?expires={expires}&signature={tampered}"), 403, "forbidden")
    assert_problem(client.get(f"{path}?expires={int(expires) + 1}&signature={signature}"), 403, "forbidden")
    assert_problem(client.get(path), 403, "forbidden")
    other_key = path.removeprefix("/files/").replace("original.png", "thumb.png")
    assert_problem(client.get(f"/files/{other_key}?expires={expires}&signature={signature}"), 403, "forbidden")
    secret = get_settings().secret_key
    past = int(time.time()) - 10
    assert_problem(
        client.get(f"{path}?expires={past}&signature={sign_local(secret, path[7:], past)}"), 403, "forbidden"
    )
    missing_key = f"tenants/{acme.id}/assets/{uuid.uuid4()}/original.png"
    future = int(time.time()) + 60
    signed = f"/files/{missing_key}?expires={future}&signature={sign_local(secret, missing_key, future)}"
    assert_problem(client.get(signed), 404, "not_found")


def test_search_degrades_to_keywords_when_no_worker_embeds_the_query(
    acme: Tenant, globex: Tenant, sent: SentTasks, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ONBRAND_SEARCH_EMBED_TIMEOUT_SECONDS", "0.3")
    clear_caches()
    from services.gateway.app import create_app

    with TestClient(create_app()) as client:
        meta = {"kind": "product", "title": "Crimson trail runner", "tags": ["shoe"]}
        upload = client.post(
            "/v1/assets",
            headers=acme.auth,
            files={"file": ("a.png", png_bytes(), "image/png")},
            data={"metadata": json.dumps(meta)},
        )
        assert upload.status_code == 201
        monkeypatch.setattr(queue, "send", lambda *args, **kwargs: None)  # no retrieval worker: nobody answers
        found = client.get("/v1/assets/search", params={"q": "crimson runner"}, headers=acme.auth)
        assert found.status_code == 200
        body = found.json()
        assert body["degraded"] and "keyword" in body["degraded"] and body["models"]["text"] is None
        assert [item["asset"]["id"] for item in body["items"]] == [upload.json()["id"]]
        assert body["items"][0]["parts"]["keyword"] > 0 and body["items"][0]["parts"]["vector"] is None
        other = client.get("/v1/assets/search", params={"q": "crimson runner"}, headers=globex.auth)
        assert other.json()["items"] == []
        strict = client.get("/v1/assets/search", params={"q": "crimson", "mode": "vector"}, headers=acme.auth)
        assert strict.status_code == 503 and strict.json()["code"] == "search_unavailable"
        assert strict.headers["Retry-After"] == "5"


def test_patch_brand_changes_only_the_given_fields_and_is_tenant_scoped(
    client: TestClient, acme: Tenant, globex: Tenant
) -> None:
    brand_id = make_brand(client, acme, "Patched")
    changed = client.patch(
        f"/v1/brands/{brand_id}",
        headers=acme.auth,
        json={
            "qc_thresholds": {"min_palette_share": 0.6, "max_delta_e": 1.0},
            "guidelines": [{"text": "warm light", "flexible": True, "weight": 0.5}],
            "forbidden_terms": ["Acme", "Acme"],
        },
    )
    assert changed.status_code == 200, changed.text
    body = changed.json()
    assert body["name"] == "Patched" and body["qc_thresholds"] == {"min_palette_share": 0.6, "max_delta_e": 1.0}
    assert body["guidelines"] == [{"text": "warm light", "flexible": True, "weight": 0.5}]
    assert body["forbidden_terms"] == ["Acme"]
    assert client.get(f"/v1/brands/{brand_id}", headers=acme.auth).json()["qc_thresholds"]["max_delta_e"] == 1.0
    assert_problem(client.patch(f"/v1/brands/{brand_id}", headers=globex.auth, json={"name": "x"}), 404, "not_found")
    bad = client.patch(f"/v1/brands/{brand_id}", headers=acme.auth, json={"qc_thresholds": {"min_exact": 2}})
    assert bad.status_code == 422 and "min_exact" in bad.text
    assert client.get(f"/v1/brands/{brand_id}", headers=acme.auth).json()["qc_thresholds"]["max_delta_e"] == 1.0
