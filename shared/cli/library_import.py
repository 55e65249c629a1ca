"""`onbrand assets import`: bulk-upload a folder of images through POST /v1/assets/batch.

Pure client side: it walks the folder, builds one metadata object per image (flags, then a
metadata.jsonl / manifest.jsonl line, then a `<stem>.json` sidecar, each overriding the one
before), checks it locally, and posts batches of at most 100 files with a few requests in
parallel. Files are opened per batch and streamed by httpx, so a 50k-image folder never sits
in memory. Uploads are idempotent on the server (same bytes -> the existing asset), so a
batch is simply sent again after a connection error, a 5xx or a 429.
"""

from __future__ import annotations

import email.utils
import json
import sys
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO

import httpx
from pydantic import ValidationError
from tqdm import tqdm

from shared.schemas import AssetMetadata

IMAGE_SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".webp": "image/webp"}
MANIFEST_NAMES = ("metadata.jsonl", "manifest.jsonl")
MAX_BATCH_FILES = 100  # the gateway's limit per request
# The gateway refuses a request body over max_upload_bytes (25 MiB by default) + 1 MiB of framing,
# so a batch is also cut by size; a file larger than this travels alone.
MAX_BATCH_BYTES = 20 * 1024 * 1024
TRIES = 3
BACKOFF_S = (1.0, 3.0)  # before the 2nd and 3rd try, unless the server says Retry-After
MAX_RETRY_AFTER_S = 60.0
SHOWN_FAILURES = 50
ENDPOINT = "/v1/assets/batch"


class ImportAborted(Exception):
    """The import cannot go on (bad API key, unreadable manifest, ...)."""


@dataclass(frozen=True)
class Options:
    directory: Path
    api_url: str
    api_key: str
    brand_id: str | None = None
    kind: str = "product"
    tags: tuple[str, ...] = ()
    batch_size: int = 50
    concurrency: int = 2
    recursive: bool = True
    quiet: bool = False
    timeout_s: float = 300.0


@dataclass
class Item:
    path: Path
    rel: str
    metadata: dict[str, Any] | None = None
    size: int = 0


@dataclass
class Failure:
    file: str
    code: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"file": self.file, "code": self.code, "detail": self.detail}


@dataclass
class Outcome:
    """What became of the items of one batch (or of the items refused locally)."""

    created: int = 0
    existing: int = 0
    failures: list[Failure] = field(default_factory=list)

    @property
    def count(self) -> int:
        return self.created + self.existing + len(self.failures)


# --------------------------------------------------------------------------- files and metadata


def find_images(directory: Path, recursive: bool = True) -> list[Path]:
    """PNG/JPEG/WebP files under directory (suffix case-insensitive), sorted by relative path."""
    candidates = directory.rglob("*") if recursive else directory.iterdir()
    found = [p for p in candidates if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(found, key=lambda p: p.relative_to(directory).as_posix())


def default_title(path: Path) -> str:
    """The file stem in words: `red_running-shoe` -> `red running shoe`."""
    return " ".join(path.stem.replace("_", " ").replace("-", " ").split())


def _rel_key(raw: str) -> str:
    """A manifest `file` value as the key find_images' relative paths use."""
    parts = [p for p in PurePosixPath(raw.replace("\\", "/")).parts if p not in (".", "")]
    return PurePosixPath(*parts).as_posix() if parts else ""


def load_manifest(directory: Path) -> dict[str, dict[str, Any]]:
    """{relative path: metadata} from metadata.jsonl / manifest.jsonl in directory (a malformed line aborts)."""
    entries: dict[str, dict[str, Any]] = {}
    for name in MANIFEST_NAMES:
        path = directory / name
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError as exc:
                raise ImportAborted(f"{name} line {number}: not JSON ({exc})") from None
            if not isinstance(entry, dict) or not isinstance(entry.get("file"), str) or not entry["file"].strip():
                raise ImportAborted(f'{name} line {number}: expected an object with a "file" path')
            entries[_rel_key(entry.pop("file"))] = entry
    return entries


def _errors(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'metadata'}: {e['msg']}" for e in exc.errors())


def build_item(
    path: Path, directory: Path, defaults: dict[str, Any], manifest: dict[str, dict[str, Any]]
) -> Item | Failure:
    """The image with its checked metadata (flags < manifest line < sidecar), or why it is refused."""
    rel = path.relative_to(directory).as_posix()
    merged: dict[str, Any] = {**defaults, "title": default_title(path), **manifest.get(rel, {})}
    sidecar = path.with_suffix(".json")
    if sidecar.is_file():
        try:
            extra = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return Failure(rel, "invalid_metadata", f"{sidecar.name}: not readable JSON ({exc})")
        if not isinstance(extra, dict):
            return Failure(rel, "invalid_metadata", f"{sidecar.name}: expected a JSON object")
        merged.update(extra)
    try:
        metadata = AssetMetadata.model_validate(merged).model_dump(mode="json")
    except ValidationError as exc:
        source = sidecar.name if sidecar.is_file() else "metadata"
        return Failure(rel, "invalid_metadata", f"{source}: {_errors(exc)}")
    try:
        size = path.stat().st_size
    except OSError as exc:
        return Failure(rel, "unreadable_file", str(exc))
    return Item(path=path, rel=rel, metadata=metadata, size=size)


def plan(opts: Options) -> tuple[list[Path], dict[str, dict[str, Any]], list[Failure]]:
    """The images to import, the manifest, and manifest lines naming no image found."""
    images = find_images(opts.directory, opts.recursive)
    manifest = load_manifest(opts.directory)
    found = {p.relative_to(opts.directory).as_posix() for p in images}
    orphans = [
        Failure(rel, "file_not_found", "listed in the manifest but not an image found under the directory")
        for rel in sorted(set(manifest) - found)
    ]
    return images, manifest, orphans


# --------------------------------------------------------------------------- sending


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def _problem(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    code = str(body.get("code") or f"http_{response.status_code}")
    detail = str(body.get("detail") or body.get("title") or response.text[:300] or response.reason_phrase)
    return code, f"HTTP {response.status_code}: {detail}"


def _read_items(batch: list[Item], body: dict[str, Any]) -> Outcome:
    outcome = Outcome()
    by_index = {i.get("index"): i for i in body.get("items") or [] if isinstance(i, dict)}
    for index, item in enumerate(batch):
        result = by_index.get(index)
        status = result.get("status") if result else None
        if status == "created":
            outcome.created += 1
        elif status == "existing":
            outcome.existing += 1
        elif result is not None and status == "failed":
            problem = result.get("problem") or {}
            outcome.failures.append(
                Failure(
                    item.rel,
                    str(problem.get("code") or "failed"),
                    str(problem.get("detail") or problem.get("title") or ""),
                )
            )
        else:
            outcome.failures.append(Failure(item.rel, "bad_response", f"no result for index {index} in the response"))
    return outcome


def post_batch(client: httpx.Client, batch: list[Item], sleep: Any = time.sleep) -> Outcome:
    """POST one batch (retrying connection errors, 5xx and 429); every item gets an outcome."""
    local = Outcome()
    with ExitStack() as stack:
        handles: list[BinaryIO] = []
        sendable: list[Item] = []
        for item in batch:
            try:
                handles.append(stack.enter_context(item.path.open("rb")))
                sendable.append(item)
            except OSError as exc:
                local.failures.append(Failure(item.rel, "unreadable_file", str(exc)))
        if not sendable:
            return local
        # httpx streams each handle in chunks (and seeks it back to 0 when a try is repeated).
        files = [
            ("files", (it.path.name, fh, IMAGE_SUFFIXES[it.path.suffix.lower()]))
            for it, fh in zip(sendable, handles, strict=True)
        ]
        data = {"metadata": json.dumps([it.metadata for it in sendable])}
        code, detail = "connection_error", ""
        for attempt in range(TRIES):
            wait_s: float | None = None
            try:
                response = client.post(ENDPOINT, files=files, data=data)
            except httpx.TransportError as exc:
                code, detail = "connection_error", f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    try:
                        body = response.json()
                    except ValueError:
                        body = {}
                    outcome = _read_items(sendable, body if isinstance(body, dict) else {})
                    outcome.failures[:0] = local.failures
                    return outcome
                code, detail = _problem(response)
                if response.status_code in (401, 403):
                    raise ImportAborted(f"the gateway refused the API key ({detail})")
                if response.status_code != 429 and response.status_code < 500:
                    break  # the request itself is wrong: sending it again gives the same answer
                wait_s = _retry_after(response)
            if attempt + 1 < TRIES:
                sleep(wait_s if wait_s is not None else BACKOFF_S[attempt])
        local.failures += [Failure(it.rel, code, detail) for it in sendable]
        return local


def batches(items: Iterator[Item], size: int, max_bytes: int = MAX_BATCH_BYTES) -> Iterator[list[Item]]:
    """Groups of at most `size` items and (unless one item alone is larger) max_bytes."""
    batch: list[Item] = []
    total = 0
    for item in items:
        if batch and (len(batch) >= size or total + item.size > max_bytes):
            yield batch
            batch, total = [], 0
        batch.append(item)
        total += item.size
    if batch:
        yield batch


# --------------------------------------------------------------------------- the import


@dataclass
class Tally:
    files: int = 0
    created: int = 0
    existing: int = 0
    failures: list[Failure] = field(default_factory=list)

    def add(self, outcome: Outcome) -> None:
        self.files += outcome.count
        self.created += outcome.created
        self.existing += outcome.existing
        self.failures += outcome.failures


def run_import(opts: Options) -> dict[str, Any]:
    """Import opts.directory; the summary (files, created, existing, failed, seconds, ...)."""
    if not 1 <= opts.batch_size <= MAX_BATCH_FILES:
        raise ImportAborted(f"batch size must be 1..{MAX_BATCH_FILES}")
    started = time.perf_counter()
    images, manifest, orphans = plan(opts)
    defaults: dict[str, Any] = {"kind": opts.kind, "tags": list(opts.tags)}
    if opts.brand_id:
        defaults["brand_id"] = opts.brand_id
    tally = Tally()
    progress = tqdm(
        total=len(images) + len(orphans),
        unit="file",
        desc="import",
        file=sys.stderr,
        disable=opts.quiet,
        dynamic_ncols=True,
    )

    def record(outcome: Outcome) -> None:
        tally.add(outcome)
        progress.update(outcome.count)
        progress.set_postfix(created=tally.created, existing=tally.existing, failed=len(tally.failures), refresh=False)

    def checked() -> Iterator[Item]:
        for path in images:
            built = build_item(path, opts.directory, defaults, manifest)
            if isinstance(built, Failure):
                record(Outcome(failures=[built]))  # refused locally: never sent
            else:
                yield built

    record(Outcome(failures=orphans))
    headers = {"Authorization": f"Bearer {opts.api_key}", "User-Agent": "onbrand-assets-import"}
    timeout = httpx.Timeout(opts.timeout_s, connect=10.0)
    limits = httpx.Limits(max_connections=opts.concurrency, max_keepalive_connections=opts.concurrency)
    try:
        with (
            httpx.Client(base_url=opts.api_url.rstrip("/"), headers=headers, timeout=timeout, limits=limits) as client,
            ThreadPoolExecutor(max_workers=opts.concurrency, thread_name_prefix="import") as pool,
        ):
            pending: set[Future[Outcome]] = set()
            try:
                for batch in batches(checked(), opts.batch_size):
                    while len(pending) >= 2 * opts.concurrency:  # bounded: the folder is walked lazily
                        done, pending = wait(pending, return_when=FIRST_COMPLETED)
                        for fut in done:
                            record(fut.result())
                    pending.add(pool.submit(post_batch, client, batch))
                for fut in list(pending):
                    record(fut.result())
                    pending.discard(fut)
            except BaseException:
                for fut in pending:
                    fut.cancel()
                raise
    finally:
        progress.close()
    seconds = time.perf_counter() - started
    stored = tally.created + tally.existing
    failures = sorted(tally.failures, key=lambda f: f.file)
    return {
        "files": tally.files,
        "created": tally.created,
        "existing": tally.existing,
        "failed": len(failures),
        "seconds": round(seconds, 3),
        "assets_per_second": round(stored / seconds, 2) if seconds > 0 else 0.0,
        "failures": [f.as_dict() for f in failures[:SHOWN_FAILURES]],
    }
