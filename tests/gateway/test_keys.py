"""API keys in process (TestClient, real Postgres): scopes on every route by one rule, create/list/revoke/
rotate with overlap, last use at minute resolution, tenant scoping, and the `onbrand keys` CLI.

Each test makes its own tenant: revoking and rotating keys must not disturb the module's acme and globex."""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from typer.testing import CliRunner

from services.gateway.app import create_app
from shared.cli.main import app as cli
from shared.config import get_settings
from shared.db.models import ApiKey
from shared.db.session import session_scope
from shared.key_cache import EpochWatch, bump_epoch
from tests.factories import Tenant, assert_problem, new_tenant


def make_key(client: TestClient, admin: Tenant, scopes: list[str], name: str = "ci") -> Tenant:
    created = client.post("/v1/keys", json={"name": name, "scopes": scopes}, headers=admin.auth)
    assert created.status_code == 201, created.text
    return Tenant(admin.id, created.json()["key"])


def key_id(client: TestClient, tenant: Tenant, admin: Tenant | None = None) -> str:
    """The id of the key `tenant.key`, found by its prefix in the list (read with `admin`, else itself)."""
    items = client.get("/v1/keys", headers=(admin or tenant).auth).json()["items"]
    return next(k["id"] for k in items if k["prefix"] == tenant.key[:12])


def v1_operations(client: TestClient) -> list[tuple[str, str]]:
    """(method, concrete path) of every /v1 operation in the OpenAPI document; path parameters a fresh UUID."""
    paths = client.get("/openapi.json").json()["paths"]
    return [
        (method.upper(), re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path))
        for path, operations in paths.items()
        if path.startswith("/v1/")
        for method in operations
    ]


def assert_insufficient(response: Any, scope: str) -> None:
    body = assert_problem(response, 403, "insufficient_scope")
    assert body["scope"] == scope and f"`{scope}`" in body["detail"]
    assert response.headers["www-authenticate"] == f'Bearer error="insufficient_scope", scope="{scope}"'


def test_one_scope_rule_on_every_route(client: TestClient) -> None:
    admin = new_tenant("scopes")
    reader, writer = make_key(client, admin, ["read"]), make_key(client, admin, ["write"])
    operations = v1_operations(client)
    assert len(operations) > 30 and ("POST", "/v1/keys") in operations
    for method, path in operations:
        admin_only = path.startswith("/v1/keys")
        if admin_only or method != "GET":
            assert_insufficient(client.request(method, path, headers=reader.auth), "admin" if admin_only else "write")
        if admin_only or method == "GET":
            assert_insufficient(client.request(method, path, headers=writer.auth), "admin" if admin_only else "read")
    # ... and with the scope, the same key goes through.
    assert client.get("/v1/brands", headers=reader.auth).status_code == 200
    assert client.post("/v1/brands", json={"name": "b"}, headers=writer.auth).status_code == 201
    keys_only = make_key(client, admin, ["admin"])  # scopes are independent: admin reads keys, not brands
    assert client.get("/v1/keys", headers=keys_only.auth).status_code == 200
    assert_insufficient(client.get("/v1/brands", headers=keys_only.auth), "read")


def test_create_and_list_never_show_a_hash(client: TestClient) -> None:
    admin = new_tenant("list")
    created = client.post(
        "/v1/keys", json={"name": " ci bot ", "scopes": ["write", "read", "read"]}, headers=admin.auth
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["key"].startswith("onb_") and body["prefix"] == body["key"][:12]
    assert (body["name"], body["scopes"], body["revoked_at"], body["expires_at"]) == (
        "ci bot",
        ["read", "write"],
        None,
        None,
    )
    listed = client.get("/v1/keys", headers=admin.auth)
    assert listed.status_code == 200
    items = listed.json()["items"]
    assert [k["name"] for k in items] == ["default", "ci bot"]
    assert items[0]["scopes"] == ["read", "write", "admin"]  # the tenant's first key has every scope
    with session_scope() as session:
        hashes = session.scalars(select(ApiKey.key_hash).where(ApiKey.tenant_id == admin.id)).all()
    assert len(hashes) == 2 and not any(h in listed.text for h in hashes)
    assert body["key"] not in listed.text and admin.key not in listed.text
    assert all(set(k) == set(body) - {"key"} for k in items)
    bad = client.post("/v1/keys", json={"name": "x", "scopes": ["root"]}, headers=admin.auth)
    assert assert_problem(bad, 422, "validation_error")["errors"][0]["loc"] == ["body", "scopes", 0]
    assert_problem(
        client.post("/v1/keys", json={"name": "x", "scopes": []}, headers=admin.auth), 422, "validation_error"
    )


def test_revoke_takes_effect_on_the_next_request(client: TestClient) -> None:
    admin = new_tenant("revoke")
    other = make_key(client, admin, ["read"])
    assert client.get("/v1/brands", headers=other.auth).status_code == 200
    revoked = client.post(f"/v1/keys/{key_id(client, other, admin)}/revoke", headers=admin.auth)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    refused = assert_problem(client.get("/v1/brands", headers=other.auth), 401, "unauthorized")
    assert "revoked" in refused["detail"]
    again = client.post(f"/v1/keys/{revoked.json()['id']}/revoke", headers=admin.auth)  # idempotent
    assert again.status_code == 200 and again.json()["revoked_at"] == revoked.json()["revoked_at"]


def test_the_last_admin_key_cannot_revoke_itself(client: TestClient) -> None:
    admin = new_tenant("last-admin")
    own_id = key_id(client, admin)
    make_key(client, admin, ["read", "write"])  # not an admin key: does not count
    body = assert_problem(client.post(f"/v1/keys/{own_id}/revoke", headers=admin.auth), 409, "last_admin_key")
    assert "last admin key" in body["detail"]
    second = make_key(client, admin, ["admin"])
    assert client.post(f"/v1/keys/{own_id}/revoke", headers=admin.auth).status_code == 200
    assert client.get("/v1/keys", headers=admin.auth).status_code == 401
    assert client.get("/v1/keys", headers=second.auth).status_code == 200


@pytest.mark.parametrize("limits_enabled", [True, False], ids=["epoch-from-the-limiter", "epoch-read-alone"])
def test_a_revocation_reaches_every_gateway_process(client: TestClient, limits_enabled: bool) -> None:
    """Each process caches keys; a revocation made through one is refused by another on its next request."""
    admin = new_tenant("fleet")
    key = make_key(client, admin, ["read"])
    settings = get_settings().model_copy(update={"limits_enabled": limits_enabled})
    with TestClient(create_app(settings)) as elsewhere:  # another gateway process: a cache of its own
        assert elsewhere.get("/v1/brands", headers=key.auth).status_code == 200
        assert elsewhere.get("/v1/brands", headers=key.auth).status_code == 200  # from its cache
        revoked = client.post(f"/v1/keys/{key_id(client, key, admin)}/revoke", headers=admin.auth)
        assert revoked.status_code == 200
        assert_problem(elsewhere.get("/v1/brands", headers=key.auth), 401, "unauthorized")


def wait_until(condition: Callable[[], bool], seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def leasing_app(limits_enabled: bool) -> TestClient:
    """Another gateway process whose rate-limit leases outlive the test (a big limit, 5 s leases): its requests
    spend tokens it already holds, so only the key-changes subscription can tell it of a revocation."""
    updates = {"limits_enabled": limits_enabled, "rate_lease_seconds": 5.0}
    updates |= {"rate_limit_per_second": 100_000.0, "rate_limit_burst": 1_000_000}
    return TestClient(create_app(get_settings().model_copy(update=updates)))


def warm(app: TestClient, key: Tenant) -> None:
    """Requests until the app's lease holds tokens and its subscription to key changes is live."""
    for _ in range(4):  # leases of 1, 2 then 4 tokens
        assert app.get("/v1/brands", headers=key.auth).status_code == 200
    wait_until(lambda: app.app.state.key_cache.live)  # type: ignore[attr-defined]


@pytest.mark.parametrize("limits_enabled", [True, False], ids=["limits-on", "limits-off"])
def test_a_subscribed_process_hears_of_a_revocation(client: TestClient, limits_enabled: bool) -> None:
    """A process subscribed to key changes trusts its cache without asking Redis, and still refuses a key revoked
    through another process on its next request: the revocation's response waits for the publication."""
    admin = new_tenant("subscribed")
    key = make_key(client, admin, ["read"])
    with leasing_app(limits_enabled) as elsewhere:
        warm(elsewhere, key)
        assert client.post(f"/v1/keys/{key_id(client, key, admin)}/revoke", headers=admin.auth).status_code == 200
        assert_problem(elsewhere.get("/v1/brands", headers=key.auth), 401, "unauthorized")


@pytest.mark.parametrize("limits_enabled", [True, False], ids=["limits-on", "limits-off"])
def test_a_dropped_subscription_falls_back_to_the_epoch_per_request(
    client: TestClient, limits_enabled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The subscription's connection dies and cannot come back: the revocation published meanwhile is lost to it,
    so the process checks the key epoch per request again and refuses the revoked key all the same."""
    admin = new_tenant("unsubscribed")
    key = make_key(client, admin, ["read"])
    with leasing_app(limits_enabled) as elsewhere:
        warm(elsewhere, key)
        cache = elsewhere.app.state.key_cache  # type: ignore[attr-defined]

        async def refused(self: EpochWatch) -> None:
            raise OSError("Redis unreachable from this process")

        monkeypatch.setattr(EpochWatch, "_listen", refused)
        with redis.Redis.from_url(get_settings().broker_url) as admin_redis:
            clients = admin_redis.client_list()
            ids = [c["id"] for c in clients if c["name"] == cache._watch.name and c["sub"] == "1"]
            assert len(ids) == 1 and admin_redis.client_kill_filter(_id=ids[0]) == 1  # the subscribed connection
        wait_until(lambda: not cache.live)
        assert client.post(f"/v1/keys/{key_id(client, key, admin)}/revoke", headers=admin.auth).status_code == 200
        assert_problem(elsewhere.get("/v1/brands", headers=key.auth), 401, "unauthorized")


def test_a_cached_key_expires_on_time(client: TestClient) -> None:
    """The gateway caches keys (shared.key_cache) but checks the cached expiry on every request."""
    admin = new_tenant("expiry")
    old = make_key(client, admin, ["read"])
    rotated = client.post(
        f"/v1/keys/{key_id(client, old, admin)}/rotate", json={"overlap_seconds": 1}, headers=admin.auth
    )
    assert rotated.status_code == 201, rotated.text
    assert client.get("/v1/brands", headers=old.auth).status_code == 200  # read once more: in the cache now
    time.sleep(1.2)
    expired = assert_problem(client.get("/v1/brands", headers=old.auth), 401, "unauthorized")
    assert "expired" in expired["detail"]


def test_rotate_overlaps_then_the_old_key_expires(client: TestClient) -> None:
    admin = new_tenant("rotate")
    old = make_key(client, admin, ["read", "admin"], name="deploy")
    old_id = key_id(client, old, admin)
    rotated = client.post(f"/v1/keys/{old_id}/rotate", json={"overlap_seconds": 3600}, headers=admin.auth)
    assert rotated.status_code == 201, rotated.text
    body = rotated.json()
    new = Tenant(admin.id, body["key"])
    assert (body["name"], body["scopes"], body["expires_at"]) == ("deploy", ["read", "admin"], None)
    assert body["id"] != old_id and new.key != old.key
    old_row = client.get(f"/v1/keys/{old_id}", headers=admin.auth).json()
    left = (datetime.fromisoformat(old_row["expires_at"]) - datetime.now(UTC)).total_seconds()
    assert 3500 < left <= 3600
    for key in (old, new):  # the overlap: both work
        assert client.get("/v1/brands", headers=key.auth).status_code == 200
    with session_scope() as session:
        session.execute(
            text("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = :id"), {"id": old_id}
        )
    bump_epoch(get_settings())  # an edit behind the API's back, announced as the API announces its own
    expired = assert_problem(client.get("/v1/brands", headers=old.auth), 401, "unauthorized")
    assert "expired" in expired["detail"]
    assert client.get("/v1/brands", headers=new.auth).status_code == 200
    assert_problem(client.post(f"/v1/keys/{old_id}/rotate", headers=admin.auth), 409, "conflict")
    too_long = client.post(f"/v1/keys/{body['id']}/rotate", json={"overlap_seconds": 8 * 86400}, headers=admin.auth)
    assert assert_problem(too_long, 422, "validation_error")["errors"][0]["loc"] == ["body", "overlap_seconds"]
    by_default = client.post(f"/v1/keys/{body['id']}/rotate", headers=admin.auth)  # no body: a day of overlap
    assert by_default.status_code == 201
    after = client.get(f"/v1/keys/{body['id']}", headers=new.auth).json()
    assert 86300 < (datetime.fromisoformat(after["expires_at"]) - datetime.now(UTC)).total_seconds() <= 86400


def test_another_tenants_key_is_not_found(client: TestClient) -> None:
    mine, theirs = new_tenant("mine"), new_tenant("theirs")
    their_id = key_id(client, theirs)
    for method, suffix in (("GET", ""), ("POST", "/revoke"), ("POST", "/rotate")):
        assert_problem(client.request(method, f"/v1/keys/{their_id}{suffix}", headers=mine.auth), 404, "not_found")
    assert client.get("/v1/brands", headers=theirs.auth).status_code == 200  # untouched
    assert their_id not in client.get("/v1/keys", headers=mine.auth).text


def test_last_used_at_is_written_at_most_once_a_minute(client: TestClient) -> None:
    admin = new_tenant("last-used")
    own_id = key_id(client, admin)  # this request records the first use
    first = client.get(f"/v1/keys/{own_id}", headers=admin.auth).json()["last_used_at"]
    assert first is not None
    for _ in range(3):
        assert client.get(f"/v1/keys/{own_id}", headers=admin.auth).json()["last_used_at"] == first
    with session_scope() as session:  # a minute and more later
        session.execute(
            text("UPDATE api_keys SET last_used_at = now() - interval '61 seconds' WHERE id = :id"), {"id": own_id}
        )
    bump_epoch(get_settings())  # the gateway's cached copy of the key is read again
    client.get("/v1/brands", headers=admin.auth)
    later = client.get(f"/v1/keys/{own_id}", headers=admin.auth).json()["last_used_at"]
    assert datetime.now(UTC) - datetime.fromisoformat(later) < timedelta(seconds=30)


def invoke(*args: str) -> Any:
    done = CliRunner().invoke(cli, ["keys", *args])
    assert done.exit_code == 0, done.output
    return json.loads(done.stdout)


def test_cli_round_trip(client: TestClient) -> None:
    admin = new_tenant("cli")
    tenant = str(admin.id)
    created = invoke("create", "--tenant-id", tenant, "--name", "etl", "--scope", "read")
    reader = Tenant(admin.id, created["api_key"])
    assert created["scopes"] == ["read"] and created["prefix"] == reader.key[:12]
    assert client.get("/v1/brands", headers=reader.auth).status_code == 200
    assert_insufficient(client.post("/v1/brands", json={"name": "b"}, headers=reader.auth), "write")
    listed = invoke("list", "--tenant-id", tenant)
    assert [k["name"] for k in listed] == ["default", "etl"]
    assert all("api_key" not in k and "key_hash" not in k for k in listed)
    rotated = invoke("rotate", created["id"], "--tenant-id", tenant, "--overlap-seconds", "0")
    assert rotated["scopes"] == ["read"] and rotated["api_key"] != reader.key
    assert client.get("/v1/brands", headers=reader.auth).status_code == 401  # no overlap: gone at once
    assert client.get("/v1/brands", headers={"Authorization": f"Bearer {rotated['api_key']}"}).status_code == 200
    revoked = invoke("revoke", rotated["id"], "--tenant-id", tenant)
    assert revoked["revoked_at"] is not None
    assert client.get("/v1/brands", headers={"Authorization": f"Bearer {rotated['api_key']}"}).status_code == 401
    other = CliRunner().invoke(cli, ["keys", "revoke", created["id"], "--tenant-id", str(uuid.uuid4())])
    assert other.exit_code == 1 and "no key" in other.stderr
