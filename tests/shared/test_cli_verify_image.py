"""`onbrand verify IMAGE`: the file's C2PA manifest validates against this deployment's trust anchors, and
the product it names is re-derived from the stored source and found bit for bit."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from shared import integrity, provenance
from shared.cli.main import app
from shared.config import get_settings
from shared.storage import Storage, get_storage
from tests.factories import stored_composite


@pytest.fixture
def storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Storage]:
    monkeypatch.setenv("ONBRAND_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    get_storage.cache_clear()
    yield get_storage()
    get_settings.cache_clear()
    get_storage.cache_clear()


def signed(image: bytes, record: dict[str, object], cred: provenance.Credential) -> bytes:
    return provenance.sign(
        image, provenance.manifest("rank-1.png", record, {"adapter": "compositor"}, None, True), cred
    )


def run(path: Path) -> tuple[int, str]:
    done = CliRunner().invoke(app, ["verify", str(path)])
    return done.exit_code, done.output


def test_a_signed_result_verifies_and_any_edit_fails(storage: Storage, tmp_path: Path) -> None:
    image, record = stored_composite(storage)
    cred = provenance.credential(get_settings())  # the deployment's (development) chain, as deliver signs
    good = tmp_path / "rank-1.png"
    good.write_bytes(signed(image, record, cred))
    code, out = run(good)
    assert code == 0, out
    assert "c2pa       Trusted" in out and "development credential (not trusted)" in out
    assert "100.00% of" in out and record["source"]["sha256"] in out and out.strip().endswith("verified")

    flipped = bytearray(good.read_bytes())
    flipped[len(flipped) // 2] ^= 0x01
    (tmp_path / "flipped.png").write_bytes(bytes(flipped))
    code, out = run(tmp_path / "flipped.png")
    assert code == 1 and "c2pa       Invalid" in out and "dataHash.mismatch" in out

    # One product pixel edited, then re-signed with the deployment's own key: the manifest is valid, the
    # product re-check against the source is what catches it.
    arr = np.array(Image.open(io.BytesIO(image)))
    layer = integrity.derive_layer(
        Image.open(io.BytesIO(storage.get("t/source.png"))),
        Image.open(io.BytesIO(storage.get("t/alpha.png"))),
        integrity.Transform.from_json(record["transform"]),
    )
    y, x = np.argwhere(np.asarray(layer)[:, :, 3] == 255)[0]
    arr[y, x] = 255 - arr[y, x]
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    (tmp_path / "edited.png").write_bytes(signed(buf.getvalue(), record, cred))
    code, out = run(tmp_path / "edited.png")
    assert code == 1 and "c2pa       Trusted" in out and "1 of" in out and "re-derived opaque pixels differ" in out


def test_a_foreign_signer_an_unsigned_image_and_a_missing_source_fail(storage: Storage, tmp_path: Path) -> None:
    image, record = stored_composite(storage)
    chain, key, root = provenance.make_chain("Mallory", "Mallory")
    foreign = provenance.Credential(chain, key, root, development=False)
    provenance.credential(get_settings())  # this deployment has its own chain
    (tmp_path / "foreign.png").write_bytes(signed(image, record, foreign))
    code, out = run(tmp_path / "foreign.png")
    assert code == 1 and "c2pa       Valid" in out and "signingCredential.untrusted" in out

    (tmp_path / "plain.png").write_bytes(image)
    code, out = run(tmp_path / "plain.png")
    assert code == 1 and "no manifest" in out and "carries no C2PA manifest" in out

    (tmp_path / "good.png").write_bytes(signed(image, record, provenance.credential(get_settings())))
    storage.put("t/source.png", b"replaced", "image/png")
    code, out = run(tmp_path / "good.png")
    assert code == 1 and "source bytes do not hash to the recorded sha256" in out
