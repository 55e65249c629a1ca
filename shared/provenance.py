"""C2PA content credentials: a signed manifest in every delivered image, and reading one back.

A manifest says what made the image (``c2pa.actions`` with the IPTC digital source type: a composite of a
product photo and a backdrop or library photo, or a composite with a scene a diffusion model painted), names
its ingredients by sha256 (the product source asset, the background asset) and carries Onbrand's integrity
record (``com.onbrand.integrity``: source sha256, transform, exact-pixel fraction), so anyone holding the image
and the source can re-check the product pixels (`onbrand verify IMAGE`).

C2PA stores the manifest in metadata (a PNG chunk, JPEG APP11 segments): the pixels, and with them the
integrity record's digests, are those of the unsigned image. The signing key and chain come from settings
(PEM files); without them a development chain is generated once under ``<home>/c2pa`` and every manifest
says it is a development credential, trusted by nobody else.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import mimetypes
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import c2pa
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.config import Settings

ASSERTION = "com.onbrand.integrity"
GENERATOR = "Onbrand"
DEV_ORG = "Onbrand development (not trusted)"
DEV_NOTE = "development credential (not trusted): set ONBRAND_C2PA_CERT_PATH and ONBRAND_C2PA_KEY_PATH"
_IPTC = "http://cv.iptc.org/newscodes/digitalsourcetype/"
COMPOSITE = _IPTC + "composite"
COMPOSITE_AI = _IPTC + "compositeWithTrainedAlgorithmicMedia"
TRAINED = _IPTC + "trainedAlgorithmicMedia"
MIME = {b"\x89PNG": "image/png", b"\xff\xd8\xff": "image/jpeg"}
# Manifest thumbnails would add ~60 KB and ~0.1 s per image; the image itself is the preview.
_BUILD = {"builder": {"thumbnail": {"enabled": False}}}


# --- credentials -----------------------------------------------------------------------------


@dataclass(frozen=True)
class KmsKey:
    """An ECC_NIST_P256 SIGN_VERIFY key in AWS KMS: the private key never leaves it, each manifest's claim is
    signed by a KMS Sign call."""

    key_id: str
    region: str
    endpoint_url: str | None = None

    def sign(self, data: bytes) -> bytes:
        import boto3  # only deployments that sign with KMS call it

        kms = boto3.client("kms", region_name=self.region, endpoint_url=self.endpoint_url)
        der = kms.sign(KeyId=self.key_id, Message=data, MessageType="RAW", SigningAlgorithm="ECDSA_SHA_256")
        # KMS answers DER; COSE's ES256 (what a C2PA claim signature is) is r || s, 32 bytes each
        r, s = decode_dss_signature(der["Signature"])
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@dataclass(frozen=True)
class Credential:
    """A signing key (a PEM private key, or a key in a KMS), its chain (signing cert first) and the roots a
    reader should trust it by."""

    chain_pem: bytes
    key_pem: bytes
    anchors_pem: bytes
    development: bool
    kms: KmsKey | None = None

    def signer(self) -> c2pa.Signer:
        if self.kms is not None:
            return c2pa.Signer.from_callback(self.kms.sign, c2pa.C2paSigningAlg.ES256, self.chain_pem.decode())
        info = c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, self.chain_pem, self.key_pem, None)
        return c2pa.Signer.from_info(info)


def credential(settings: Settings) -> Credential:
    """The configured chain with its PEM key or KMS key, else the development chain under <home>/c2pa (made on
    first use)."""
    cert, key, kms_key = settings.c2pa_cert_path, settings.c2pa_key_path, settings.c2pa_kms_key_id
    if cert is None and key is None and kms_key is None:
        return dev_credential(settings.home / "c2pa")
    if cert is None or (key is None) == (kms_key is None):
        raise RuntimeError(
            "C2PA: set ONBRAND_C2PA_CERT_PATH with one of ONBRAND_C2PA_KEY_PATH or ONBRAND_C2PA_KMS_KEY_ID, or none"
        )
    chain = cert.read_bytes()
    anchors = settings.c2pa_trust_anchors_path.read_bytes() if settings.c2pa_trust_anchors_path else _ca_certs(chain)
    if kms_key is not None:
        kms = KmsKey(kms_key, settings.c2pa_kms_region, settings.c2pa_kms_endpoint_url)
        return Credential(chain, b"", anchors, development=False, kms=kms)
    assert key is not None
    return Credential(chain, key.read_bytes(), anchors, development=False)


def trust_anchors(settings: Settings) -> bytes:
    """The roots a verifier on this deployment trusts, without making a development chain that is not there."""
    if settings.c2pa_trust_anchors_path:
        return settings.c2pa_trust_anchors_path.read_bytes()
    if settings.c2pa_cert_path:
        return _ca_certs(settings.c2pa_cert_path.read_bytes())
    root = settings.home / "c2pa" / "root.pem"
    return root.read_bytes() if root.exists() else b""


def dev_credential(directory: Path) -> Credential:
    """The development chain in ``directory``, generated once. Workers racing to make it each build one in a
    temporary directory and rename it into place: the first rename wins, the others read the winner's."""
    if not (directory / "chain.pem").exists():
        directory.parent.mkdir(parents=True, exist_ok=True)
        chain, key, root = make_chain("Onbrand development signer", DEV_ORG)
        tmp = Path(tempfile.mkdtemp(prefix=".c2pa-", dir=directory.parent))
        for name, data in (("chain.pem", chain), ("key.pem", key), ("root.pem", root)):
            (tmp / name).write_bytes(data)
        (tmp / "key.pem").chmod(0o600)
        try:
            os.rename(tmp, directory)
        except OSError:  # another process made it first (the directory exists and is not empty)
            for name in ("chain.pem", "key.pem", "root.pem"):
                (tmp / name).unlink()
            tmp.rmdir()
    read = (directory / name for name in ("chain.pem", "key.pem", "root.pem"))
    chain, key, root = (path.read_bytes() for path in read)
    return Credential(chain, key, root, development=True)


def make_chain(common_name: str, organization: str, days: int = 3650) -> tuple[bytes, bytes, bytes]:
    """A root CA and an ES256 signing cert it issued, as C2PA requires of a claim signer (not a CA, digital
    signature key usage, an allowed EKU: emailProtection). Returns (chain PEM: signer then root, the signer's
    key PEM, the root PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    chain, root_pem = issue_chain(common_name, organization, key.public_key(), days)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return chain, key_pem, root_pem


def issue_chain(
    common_name: str, organization: str, public: ec.EllipticCurvePublicKey, days: int = 3650
) -> tuple[bytes, bytes]:
    """A new root CA and the signing cert it issues for `public` (a key held elsewhere: generated here, or in a
    KMS). Returns (chain PEM: signer then root, the root PEM)."""
    root_key = ec.generate_private_key(ec.SECP256R1())
    root_name, name = _name(f"{organization} root CA", organization), _name(common_name, organization)
    root = (
        _cert(root_name, root_name, root_key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_usage(cert_sign=True), critical=True)
        .sign(root_key, hashes.SHA256())
    )
    leaf = (
        _cert(name, root_name, public, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    root_pem, pem = (c.public_bytes(serialization.Encoding.PEM) for c in (root, leaf))
    return pem + root_pem, root_pem


def _name(common_name: str, organization: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
        ]
    )


def _cert(
    subject: x509.Name, issuer: x509.Name, public: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)  # clock skew between machines
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )


def _usage(cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _ca_certs(chain_pem: bytes) -> bytes:
    """The CA certificates of a chain (all but the signing cert): the anchors when none are configured."""
    certs = x509.load_pem_x509_certificates(chain_pem)
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs[1:])


# --- the manifest ----------------------------------------------------------------------------


def source_type(generation: dict[str, Any]) -> str:
    """The IPTC digital source type of a candidate: a diffusion model painted the scene (sd-inpaint), or the
    exact product was composited onto a photo or a backdrop (compositor)."""
    return COMPOSITE_AI if generation.get("adapter") == "sd-inpaint" else COMPOSITE


def ingredient(role: str, ref: dict[str, Any]) -> dict[str, Any]:
    """An ingredient named by the sha256 of its stored bytes (C2PA keeps no hash of a non-C2PA ingredient,
    so the instance id carries it)."""
    return {
        "title": f"{role} {ref.get('asset_id') or ref.get('key') or ''}".strip(),
        "format": str(ref.get("format") or mimetypes.guess_type(str(ref.get("key") or ""))[0] or "image/png"),
        "relationship": "componentOf",
        "instance_id": f"sha256:{ref['sha256']}",
        "description": f"Onbrand {role} asset",
    }


def manifest(
    title: str,
    record: dict[str, Any],
    generation: dict[str, Any],
    background: dict[str, Any] | None,
    development: bool,
) -> dict[str, Any]:
    """The manifest definition of one delivered image: actions, ingredients (the product source and the
    background by sha256) and the integrity record."""
    product = ingredient("product source", record["source"])
    ingredients = [product] + ([ingredient("background", background)] if background else [])
    actions: list[dict[str, Any]] = [{"action": "c2pa.created", "digitalSourceType": source_type(generation)}]
    if generation.get("adapter") == "sd-inpaint":  # the scene around the product: painted by the model
        painted = {"action": "c2pa.edited", "digitalSourceType": TRAINED, "softwareAgent": {"name": _model(generation)}}
        actions.append({**painted, "description": "scene generated around the product by a diffusion model"})
    placed = {"ingredientIds": [product["instance_id"]]}
    actions.append({"action": "c2pa.placed", "parameters": placed, "description": "product pixels placed exactly"})
    if background:
        actions.append({"action": "c2pa.placed", "parameters": {"ingredientIds": [ingredients[1]["instance_id"]]}})
    onbrand = {**_integrity_summary(record), "credential": "development" if development else "configured"}
    return {
        "claim_generator_info": [{"name": GENERATOR, "version": _version()}],
        "title": title,
        "ingredients": ingredients,
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": actions}},
            {"label": ASSERTION, "data": onbrand},
        ],
    }


def creative_manifest(definition: dict[str, Any], clean: dict[str, Any], kit: list[dict[str, Any]]) -> dict[str, Any]:
    """The manifest of a result's creative version: the clean image's manifest, plus the clean image and the
    brand-kit files (logo, font, by sha256) as ingredients and the overlay as a composite action naming them.
    The integrity record is the clean image's: the product region of the creative is the same, bit for bit."""
    parts = [ingredient("clean image", clean)] + [ingredient(f["role"], f) for f in kit]
    ids = [p["instance_id"] for p in parts]
    overlay = {
        "action": "c2pa.edited",
        "digitalSourceType": COMPOSITE,
        "parameters": {"ingredientIds": ids},
        "description": "brand-kit overlay (logo, headline, call to action) drawn outside the product's pixels",
    }
    actions = [*definition["assertions"][0]["data"]["actions"], overlay]
    assertions = [{"label": "c2pa.actions", "data": {"actions": actions}}, *definition["assertions"][1:]]
    return {**definition, "ingredients": [*definition["ingredients"], *parts], "assertions": assertions}


def delivered_creative_key(integrity_record: dict[str, Any] | None) -> str | None:
    """The key to serve for a result's creative version: its signed copy, else the unsigned one, else None."""
    creative = (integrity_record or {}).get("creative") or {}
    signed = (creative.get("credentials") or {}).get("key")
    return str(signed or creative.get("key") or "") or None


def _integrity_summary(record: dict[str, Any]) -> dict[str, Any]:
    """The record as the image carries it: the figures a person reads, and the whole record (what `onbrand
    verify IMAGE` re-derives the product from) as JSON text, because C2PA's CBOR turns a list of small ints
    (a crop box) into a byte string."""
    keep = ("version", "source", "mask", "transform", "pillow", "layer_rgba_sha256")
    proof = ("opaque_pixels", "exact_pixels", "exact_fraction", "product_sha256", "layer_sha256")
    summary = {
        "source_sha256": (record.get("source") or {}).get("sha256"),
        "transform": _transform_text(record.get("transform") or {}),
        **{k: record[k] for k in proof if k in record},
    }
    return {**summary, "record": json.dumps({k: record[k] for k in (*keep, *proof) if k in record}, sort_keys=True)}


def _transform_text(t: dict[str, Any]) -> str:
    if not t:
        return ""
    return (
        f"crop {t.get('crop')} -> size {t.get('size')} ({t.get('resize_filter')}), rotate {t.get('rotation')} "
        f"({t.get('rotate_filter')}), at {t.get('offset')} on a {t.get('canvas')} canvas"
    )


def _model(generation: dict[str, Any]) -> str:
    return str(generation.get("model") or generation.get("adapter") or "diffusion model")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("onbrand")
    except PackageNotFoundError:
        return "0"


# --- signing and reading ---------------------------------------------------------------------


def mime_of(data: bytes) -> str:
    for magic, mime in MIME.items():
        if data.startswith(magic):
            return mime
    raise ValueError("C2PA: only PNG and JPEG images are signed")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def signed_key(image_key: str) -> str:
    """Where the signed copy of a stored image lives: next to it (``candidate.png`` -> ``candidate.c2pa.png``)."""
    stem, dot, ext = image_key.rpartition(".")
    return f"{stem}.c2pa.{ext}" if dot else f"{image_key}.c2pa"


def delivered_key(integrity_record: dict[str, Any] | None, image_key: str | None) -> str | None:
    """The key to serve for a result: its signed copy when deliver made one, else the unsigned image."""
    signed = ((integrity_record or {}).get("credentials") or {}).get("key")
    return str(signed) if signed else image_key


def sign(image: bytes, definition: dict[str, Any], cred: Credential) -> bytes:
    """The image's bytes with the signed manifest embedded (the pixels untouched)."""
    mime, out = mime_of(image), io.BytesIO()
    with c2pa.Context.from_dict(_BUILD) as context, c2pa.Builder(definition, context) as builder:
        with cred.signer() as signer:
            builder.sign(signer, mime, io.BytesIO(image), out)
    return out.getvalue()


@dataclass
class Reading:
    """What the C2PA reader found. ``state``: Trusted (valid and signed by a trusted chain), Valid (valid, but
    the signer is not trusted here), Invalid, or None (no manifest)."""

    state: str | None
    manifest: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    @property
    def onbrand(self) -> dict[str, Any] | None:
        """The Onbrand assertion (figures, credential kind and the record as JSON text)."""
        for assertion in self.manifest.get("assertions") or []:
            if assertion.get("label") == ASSERTION:
                data: dict[str, Any] = assertion.get("data") or {}
                return data
        return None

    @property
    def integrity(self) -> dict[str, Any] | None:
        """The integrity record the manifest carries (None: no Onbrand assertion, or an unreadable one)."""
        try:
            record = json.loads((self.onbrand or {})["record"])
        except (KeyError, TypeError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    @property
    def development(self) -> bool:
        return (self.onbrand or {}).get("credential") == "development"

    @property
    def signer(self) -> str:
        info = self.manifest.get("signature_info") or {}
        return f"{info.get('common_name', '?')} ({info.get('issuer', '?')})"

    @property
    def source_type(self) -> str | None:
        for assertion in self.manifest.get("assertions") or []:
            if str(assertion.get("label", "")).startswith("c2pa.actions"):
                for action in (assertion.get("data") or {}).get("actions") or []:
                    if action.get("action") == "c2pa.created":
                        return str(action.get("digitalSourceType"))
        return None


def read(image: bytes, anchors: bytes = b"") -> Reading:
    """Read and validate the image's manifest; ``anchors`` (PEM roots) decide whether the signer is trusted."""
    settings: dict[str, Any] = {"trust": {"trust_anchors": anchors.decode()}} if anchors else {}
    try:
        mime = mime_of(image)
        with c2pa.Context.from_dict(settings) as context:
            reader = c2pa.Reader.try_create(mime, io.BytesIO(image), None, context)
            if reader is None:
                return Reading(None, failures=["the image carries no C2PA manifest"])
            with reader:
                state, active = reader.get_validation_state(), reader.get_active_manifest() or {}
                results = reader.get_validation_results() or {}
    except (c2pa.C2paError, ValueError) as exc:
        return Reading("Invalid", failures=[f"the C2PA manifest cannot be read: {exc}"])
    failed = (results.get("activeManifest") or {}).get("failure") or []
    return Reading(state, active, [f"{f.get('code')}: {f.get('explanation')}" for f in failed])
