"""Object storage: S3 through boto3 (any S3-compatible endpoint) or the local filesystem.

Keys are deterministic per tenant/campaign/candidate, so a retried task overwrites its
object instead of leaving a second one behind. The local backend's URLs point at the
gateway's /files route and carry an expiring HMAC signature.
"""

from __future__ import annotations

import hashlib
import hmac
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Protocol
from urllib.parse import quote, urlencode

from shared import metrics
from shared.config import Settings, get_settings

S3_DELETE_BATCH = 1000  # the most keys one DeleteObjects call takes
# A presigned URL is handed out again for this long after it was signed (at most half its lifetime): a campaign's
# status poll shows three URLs per result, each ~0.13 ms of signing, several times the rest of the poll. Short, so
# a URL signed with temporary credentials is never much older than they are.
URL_REUSE_S = 300
URL_CACHE_SIZE = 50_000


class Storage(Protocol):
    def put(self, key: str, data: bytes, content_type: str) -> None: ...
    def get(self, key: str) -> bytes: ...
    def delete(self, key: str) -> None: ...
    def exists(self, key: str) -> bool: ...
    def url(self, key: str) -> str: ...
    def list_keys(self, prefix: str) -> list[str]: ...
    def delete_prefix(self, prefix: str) -> int: ...


def asset_key(tenant_id: object, asset_id: object, name: str) -> str:
    return f"tenants/{tenant_id}/assets/{asset_id}/{name}"


def campaign_key(tenant_id: object, campaign_id: object, name: str) -> str:
    return f"tenants/{tenant_id}/campaigns/{campaign_id}/{name}"


def asset_prefix(tenant_id: object, asset_id: object) -> str:
    """Every object of one asset (original, thumbnail) lies under this prefix."""
    return f"tenants/{tenant_id}/assets/{asset_id}/"


def campaign_prefix(tenant_id: object, campaign_id: object) -> str:
    """Every object of one campaign (masks, cut-outs, candidates, layers, every round) lies under this prefix."""
    return f"tenants/{tenant_id}/campaigns/{campaign_id}/"


def brand_prefix(tenant_id: object, brand_id: object) -> str:
    """Every object of one brand (its kit's logos and fonts) lies under this prefix."""
    return f"tenants/{tenant_id}/brands/{brand_id}/"


def kit_file_prefix(tenant_id: object, brand_id: object, file_id: object) -> str:
    """One brand-kit file (a logo with its SVG source, or a font): deleted on its own when replaced or removed."""
    return f"{brand_prefix(tenant_id, brand_id)}kit/{file_id}/"


def _check_prefix(prefix: str) -> str:
    # A prefix names a whole folder ("a/b/"): never "" or a bare name, which would match a sibling's keys too.
    if not prefix.endswith("/"):
        raise ValueError(f"invalid object prefix: {prefix!r}")
    return _check_key(prefix[:-1]) + "/"


def _check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid object key: {key!r}")
    return key


@contextmanager
def _timed(op: str) -> Iterator[None]:
    """onbrand_storage_seconds{op}: what storage costs a stage next to its compute (the worker benchmark)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        metrics.STORAGE_DURATION.labels(op).observe(time.perf_counter() - started)


def sign_local(secret: str, key: str, expires: int) -> str:
    return hmac.new(secret.encode(), f"{key}\n{expires}".encode(), hashlib.sha256).hexdigest()


def verify_local(secret: str, key: str, expires: int, signature: str, now: float | None = None) -> bool:
    if expires < (now if now is not None else time.time()):
        return False
    return hmac.compare_digest(sign_local(secret, key, expires), signature)


class LocalStorage:
    def __init__(self, root: Path, base_url: str, secret: str, ttl: int) -> None:
        self.root, self.base_url, self.secret, self.ttl = root, base_url.rstrip("/"), secret, ttl

    def path(self, key: str) -> Path:
        return self.root / _check_key(key)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        path = self.path(key)
        with _timed("put"):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(path)  # atomic: readers never see half an object

    def get(self, key: str) -> bytes:
        with _timed("get"):
            return self.path(key).read_bytes()

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def url(self, key: str) -> str:
        expires = int(time.time()) + self.ttl
        query = urlencode({"expires": expires, "signature": sign_local(self.secret, key, expires)})
        return f"{self.base_url}/files/{quote(key)}?{query}"

    def list_keys(self, prefix: str) -> list[str]:
        folder = self.root / _check_prefix(prefix)
        if not folder.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in folder.rglob("*") if p.is_file())

    def delete_prefix(self, prefix: str) -> int:
        folder = self.root / _check_prefix(prefix)
        if not folder.is_dir():
            return 0
        count = sum(1 for p in folder.rglob("*") if p.is_file())
        shutil.rmtree(folder)
        return count


class _SignedUrls:
    """Presigned URLs by key, reused for URL_REUSE_S or half their lifetime, whichever is shorter: every URL handed
    out is valid for at least half of url_ttl_seconds. Thread-safe (the gateway signs in its thread pool too)."""

    def __init__(self, ttl: int) -> None:
        self.reuse_s = min(URL_REUSE_S, ttl / 2)
        self._urls: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, sign: Callable[[], str]) -> str:
        now = time.monotonic()
        found = self._urls.get(key)
        if found is not None and now - found[1] < self.reuse_s:
            return found[0]
        url = sign()
        with self._lock:
            if len(self._urls) >= URL_CACHE_SIZE:
                self._urls.clear()
            self._urls[key] = (url, now)
        return url


class S3Storage:
    def __init__(self, settings: Settings) -> None:
        import boto3  # lazy: the gateway imports this module on every request path

        self.bucket, self.prefix, self.ttl = settings.s3_bucket, settings.s3_prefix, settings.url_ttl_seconds
        self.client = boto3.client("s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region)
        self._signed = _SignedUrls(self.ttl)

    def _key(self, key: str) -> str:
        return self.prefix.rstrip("/") + "/" + _check_key(key) if self.prefix else _check_key(key)

    def put(self, key: str, data: bytes, content_type: str) -> None:
        with _timed("put"):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes:
        with _timed("get"):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    def url(self, key: str) -> str:
        params = {"Bucket": self.bucket, "Key": self._key(key)}
        return self._signed.get(
            key, lambda: self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=self.ttl)
        )

    def list_keys(self, prefix: str) -> list[str]:
        full, strip = (
            self._key(_check_prefix(prefix)[:-1]) + "/",
            len(self.prefix.rstrip("/") + "/") if self.prefix else 0,
        )
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full)
        return sorted(obj["Key"][strip:] for page in pages for obj in page.get("Contents", []))

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list_keys(prefix)
        for start in range(0, len(keys), S3_DELETE_BATCH):
            batch = keys[start : start + S3_DELETE_BATCH]
            answer = self.client.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": self._key(k)} for k in batch], "Quiet": True}
            )
            if answer.get("Errors"):  # raised so the cleanup job retries: no object may outlive its rows
                first = answer["Errors"][0]
                raise RuntimeError(
                    f"{len(answer['Errors'])} object(s) not deleted, e.g. {first.get('Key')}: {first.get('Code')}"
                )
        return len(keys)


def build_storage(settings: Settings) -> Storage:
    if settings.storage_backend == "s3":
        return S3Storage(settings)
    return LocalStorage(settings.objects_dir, settings.public_url, settings.secret_key, settings.url_ttl_seconds)


@lru_cache
def get_storage() -> Storage:
    return build_storage(get_settings())
