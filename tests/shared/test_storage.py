"""Object storage: S3 through boto3 against moto's server (a real HTTP S3 endpoint; note that moto
does not verify presigned-URL signatures or expiry), and the local backend's signed URLs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import boto3
import httpx
import pytest

from shared import storage
from shared.config import Settings
from shared.storage import LocalStorage, S3Storage, campaign_key, sign_local, verify_local
from tests.factories import moto_server


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture
def s3(moto_url: str, monkeypatch: pytest.MonkeyPatch) -> S3Storage:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1").create_bucket(Bucket="onbrand-test")
    settings = Settings(storage_backend="s3", s3_bucket="onbrand-test", s3_prefix="pfx", s3_endpoint_url=moto_url)
    return S3Storage(settings)


def test_s3_round_trip_presigned_get_and_overwrite(s3: S3Storage) -> None:
    key = campaign_key("t1", "c1", "r0/1024x1024-r1c1-p0/candidate.png")
    s3.put(key, b"first", "image/png")
    s3.put(key, b"second", "image/png")  # a retried task overwrites: one object, last bytes
    assert s3.get(key) == b"second" and s3.exists(key)
    listed = s3.client.list_objects_v2(Bucket="onbrand-test", Prefix="pfx/")["Contents"]
    assert [o["Key"] for o in listed] == [f"pfx/{key}"]
    response = httpx.get(s3.url(key))
    assert response.status_code == 200 and response.content == b"second"
    s3.delete(key)
    assert not s3.exists(key)


def test_keys_cannot_escape(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path, "http://x", "k", 60)
    for bad in ("../etc/passwd", "/abs", "a//b", "a/./b", ""):
        with pytest.raises(ValueError):
            local.put(bad, b"x", "text/plain")


def test_local_signed_urls_expire_and_resist_tampering(tmp_path: Path) -> None:
    local = LocalStorage(tmp_path, "http://gw", "secret", 60)
    local.put("tenants/t/a.png", b"png", "image/png")
    url = local.url("tenants/t/a.png")
    expires = int(url.split("expires=")[1].split("&")[0])
    signature = url.split("signature=")[1]
    assert verify_local("secret", "tenants/t/a.png", expires, signature)
    assert not verify_local("secret", "tenants/t/b.png", expires, signature)
    assert not verify_local("other", "tenants/t/a.png", expires, signature)
    assert not verify_local("secret", "tenants/t/a.png", expires, signature, now=expires + 1)
    assert sign_local("secret", "k", 1) != sign_local("secret", "k", 2)
    assert time.time() < expires


def test_s3_presigned_urls_are_reused_for_a_while_and_still_fetch(
    s3: S3Storage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A status poll signs three URLs per result: the same key's URL is handed out again for URL_REUSE_S (at most
    half its lifetime), then signed anew; a reused one still fetches the object."""
    s3.put("t/c/reused.png", b"png", "image/png")
    first = s3.url("t/c/reused.png")
    time.sleep(1.1)  # a new signature would carry a new X-Amz-Date
    assert s3.url("t/c/reused.png") == first
    assert httpx.get(first).content == b"png"
    assert s3.url("t/c/other.png") != first
    later = time.monotonic() + storage.URL_REUSE_S + 1
    monkeypatch.setattr(storage.time, "monotonic", lambda: later)
    renewed = s3.url("t/c/reused.png")
    assert renewed != first and httpx.get(renewed).content == b"png"
