"""C2PA content credentials (shared.provenance): signed with a throwaway chain, read back with the C2PA
reader, the product pixels untouched, and any edit to the file caught."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from shared import integrity, provenance
from shared.config import Settings
from shared.storage import LocalStorage
from tests.factories import stored_composite

SD = {"adapter": "sd-inpaint", "model": "tiny-sd", "init": "reference background"}
BACKGROUND = {"asset_id": "bg-1", "key": "t/bg.jpg", "sha256": "e" * 64}


@pytest.fixture(scope="module")
def cred(tmp_path_factory: pytest.TempPathFactory) -> provenance.Credential:
    return provenance.dev_credential(tmp_path_factory.mktemp("c2pa") / "chain")


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[LocalStorage, bytes, dict[str, Any]]:
    storage = LocalStorage(tmp_path_factory.mktemp("objects"), "http://127.0.0.1", "test", 60)
    image, record = stored_composite(storage)
    return storage, image, record


def test_a_signed_png_reads_back_trusted_with_its_claims_and_the_same_pixels(
    made: tuple[LocalStorage, bytes, dict[str, Any]], cred: provenance.Credential
) -> None:
    storage, image, record = made
    signed = provenance.sign(image, provenance.manifest("rank-1.png", record, SD, BACKGROUND, True), cred)
    reading = provenance.read(signed, cred.anchors_pem)
    assert reading.state == "Trusted" and reading.failures == []
    assert reading.source_type == provenance.COMPOSITE_AI and reading.development
    actions = next(a for a in reading.manifest["assertions"] if a["label"].startswith("c2pa.actions"))["data"]
    assert [a["action"] for a in actions["actions"]] == ["c2pa.created", "c2pa.edited", "c2pa.placed", "c2pa.placed"]
    assert actions["actions"][1]["digitalSourceType"] == provenance.TRAINED
    ids = [i["instance_id"] for i in reading.manifest["ingredients"]]
    assert ids == [f"sha256:{record['source']['sha256']}", f"sha256:{BACKGROUND['sha256']}"]
    carried = reading.integrity or {}
    assert carried["transform"] == record["transform"] and carried["source"] == record["source"]
    assert (reading.onbrand or {})["exact_fraction"] == record["exact_fraction"] == 1.0
    # C2PA writes metadata only: the signed copy still holds the product bit for bit.
    decoded = Image.open(io.BytesIO(signed))
    assert np.array_equal(np.asarray(decoded), np.asarray(Image.open(io.BytesIO(image))))
    report = integrity.verify(decoded, storage.get("t/source.png"), storage.get("t/alpha.png"), carried)
    assert report.ok, report.reasons
    # Without this deployment's anchors the signature is still valid, but its signer is unknown.
    elsewhere = provenance.read(signed)
    assert elsewhere.state == "Valid" and any("signingCredential.untrusted" in f for f in elsewhere.failures)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_flipping_any_image_byte_fails_verification(
    fmt: str, made: tuple[LocalStorage, bytes, dict[str, Any]], cred: provenance.Credential
) -> None:
    _, png, record = made
    buf = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buf, format=fmt)
    signed = provenance.sign(
        buf.getvalue(), provenance.manifest("x", record, {"adapter": "compositor"}, None, True), cred
    )
    assert provenance.mime_of(signed) == f"image/{fmt.lower()}"
    ok = provenance.read(signed, cred.anchors_pem)
    assert ok.state == "Trusted" and ok.source_type == provenance.COMPOSITE
    for at in (len(signed) // 2, len(signed) - 64):  # inside the image data, before and after the manifest
        tampered = bytearray(signed)
        tampered[at] ^= 0x01
        bad = provenance.read(bytes(tampered), cred.anchors_pem)
        assert bad.state == "Invalid", at
        assert any("dataHash.mismatch" in f for f in bad.failures), bad.failures
    assert provenance.read(buf.getvalue()).state is None  # never signed: no manifest at all


def test_the_dev_chain_is_made_once_and_configured_pems_win(tmp_path: Path) -> None:
    dev = provenance.credential(Settings(home=tmp_path))
    assert dev.development and (tmp_path / "c2pa" / "key.pem").stat().st_mode & 0o077 == 0
    assert provenance.credential(Settings(home=tmp_path)) == dev  # read back, not regenerated
    assert provenance.trust_anchors(Settings(home=tmp_path)) == dev.anchors_pem

    chain, key, root = provenance.make_chain("Acme signer", "Acme")
    (tmp_path / "chain.pem").write_bytes(chain)
    (tmp_path / "key.pem").write_bytes(key)
    configured = Settings(home=tmp_path, c2pa_cert_path=tmp_path / "chain.pem", c2pa_key_path=tmp_path / "key.pem")
    cred = provenance.credential(configured)
    assert not cred.development and cred.anchors_pem == root == provenance.trust_anchors(configured)
    signed = provenance.sign(
        stored_png(), provenance.manifest("x", {"source": {"sha256": "a" * 64}}, {}, None, False), cred
    )
    reading = provenance.read(signed, cred.anchors_pem)
    assert reading.state == "Trusted" and not reading.development and reading.signer == "Acme signer (Acme)"
    assert provenance.read(signed, dev.anchors_pem).state == "Valid"  # another deployment's roots: not trusted
    with pytest.raises(RuntimeError, match="ONBRAND_C2PA_CERT_PATH with one of"):
        provenance.credential(Settings(home=tmp_path, c2pa_cert_path=tmp_path / "chain.pem"))


def test_signed_copies_live_next_to_the_candidate() -> None:
    assert provenance.signed_key("t/c/r0/x/candidate.png") == "t/c/r0/x/candidate.c2pa.png"
    record = {"credentials": {"key": "t/candidate.c2pa.png"}}
    assert provenance.delivered_key(record, "t/candidate.png") == "t/candidate.c2pa.png"
    assert provenance.delivered_key({}, "t/candidate.png") == "t/candidate.png"
    assert json.loads(json.dumps(provenance.manifest("x", {"source": {"sha256": "a" * 64}}, {}, None, True)))


def stored_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (20, 120, 220)).save(buf, format="PNG")
    return buf.getvalue()
