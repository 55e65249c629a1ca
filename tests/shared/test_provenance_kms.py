"""C2PA signing with the key in AWS KMS (shared.provenance.KmsKey): against moto's KMS server over HTTP, which
signs with real ECDSA keys. The manifest reads back Trusted under the chain issued for the KMS key's public key;
a chain certifying another key does not verify."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from shared import provenance
from shared.config import Settings
from shared.storage import LocalStorage
from tests.factories import moto_server, stored_composite

COMPOSITOR = {"adapter": "compositor", "init": "reference background"}


@pytest.fixture(scope="module")
def kms(monkeypatch_module: pytest.MonkeyPatch) -> Iterator[tuple[str, str, ec.EllipticCurvePublicKey]]:
    """(moto URL, key id, its public key)."""
    with moto_server() as url:
        client = boto3.client("kms", region_name="eu-west-1", endpoint_url=url)
        key = client.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
        public = load_der_public_key(client.get_public_key(KeyId=key)["PublicKey"])
        assert isinstance(public, ec.EllipticCurvePublicKey)
        yield url, key, public


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
            mp.setenv(name, "testing")  # moto takes any credentials; boto3 needs some
        yield mp


def settings(tmp_path: Path, url: str, key: str, chain: bytes, root: bytes) -> Settings:
    (tmp_path / "chain.pem").write_bytes(chain)
    (tmp_path / "root.pem").write_bytes(root)
    return Settings(
        home=tmp_path,
        c2pa_cert_path=tmp_path / "chain.pem",
        c2pa_trust_anchors_path=tmp_path / "root.pem",
        c2pa_kms_key_id=key,
        c2pa_kms_region="eu-west-1",
        c2pa_kms_endpoint_url=url,
    )


def test_a_manifest_signed_by_the_kms_key_reads_back_trusted(
    kms: tuple[str, str, ec.EllipticCurvePublicKey], tmp_path: Path
) -> None:
    url, key, public = kms
    chain, root = provenance.issue_chain("Onbrand signer (KMS)", "Acme Ads", public)
    cred = provenance.credential(settings(tmp_path, url, key, chain, root))
    assert cred.kms is not None and cred.key_pem == b"" and not cred.development
    image, record = stored_composite(LocalStorage(tmp_path / "objects", "http://127.0.0.1", "test", 60))
    signed = provenance.sign(image, provenance.manifest("rank-1.png", record, COMPOSITOR, None, False), cred)
    reading = provenance.read(signed, root)
    assert reading.state == "Trusted" and reading.failures == [], reading.failures
    assert (reading.integrity or {})["exact_fraction"] == 1.0


def test_a_chain_for_another_key_does_not_verify(
    kms: tuple[str, str, ec.EllipticCurvePublicKey], tmp_path: Path
) -> None:
    url, key, _ = kms
    chain, root = provenance.issue_chain(
        "Wrong signer", "Acme Ads", ec.generate_private_key(ec.SECP256R1()).public_key()
    )
    cred = provenance.credential(settings(tmp_path, url, key, chain, root))
    image, record = stored_composite(LocalStorage(tmp_path / "objects", "http://127.0.0.1", "test", 60))
    # The SDK checks the signature against the chain's signing cert before it writes anything
    with pytest.raises(Exception, match="signature does not match"):
        provenance.sign(image, provenance.manifest("rank-1.png", record, COMPOSITOR, None, False), cred)


def test_a_kms_key_needs_its_chain_and_not_a_pem_key_too(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="ONBRAND_C2PA_CERT_PATH with one of"):
        provenance.credential(Settings(home=tmp_path, c2pa_kms_key_id="alias/onbrand"))
    (tmp_path / "c.pem").write_bytes(b"x")
    both = Settings(
        home=tmp_path, c2pa_cert_path=tmp_path / "c.pem", c2pa_key_path=tmp_path / "c.pem", c2pa_kms_key_id="k"
    )
    with pytest.raises(RuntimeError, match="ONBRAND_C2PA_CERT_PATH with one of"):
        provenance.credential(both)
