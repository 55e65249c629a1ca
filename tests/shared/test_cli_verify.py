"""`onbrand verify`: every result re-derived from the stored source + mask, checked bit for bit, from the
database and object storage the settings name."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from shared import integrity
from shared.cli.main import app
from shared.db.models import Campaign, Candidate, Result
from shared.db.session import session_scope
from shared.storage import Storage
from tests.factories import cutout, make_campaign
from workers.imaging import composition, compositor


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def storage(fresh_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Storage]:
    from shared.config import get_settings
    from shared.storage import get_storage

    monkeypatch.setenv("ONBRAND_HOME", str(tmp_path))
    get_settings.cache_clear()
    get_storage.cache_clear()
    yield get_storage()
    get_settings.cache_clear()
    get_storage.cache_clear()


def seeded(storage: Storage) -> tuple[str, list[Candidate]]:
    """A campaign with three candidates made as generate makes them (two of them results)."""
    campaign_id = make_campaign()
    photo = cutout(200, 260)
    alpha = np.asarray(photo.getchannel("A"))
    src, mask = png(photo.convert("RGB")), png(Image.fromarray(alpha))
    storage.put("t/source.png", src, "image/png")
    storage.put("t/alpha.png", mask, "image/png")
    crop = integrity.mask_box(alpha)
    size = (crop[2] - crop[0], crop[3] - crop[1])
    cut = integrity.cut_out(photo, alpha, crop)
    layouts = composition.plan([(320, 320)], size, cutout=cut).layouts[:3]
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(campaign_id))
        assert campaign is not None
        rows = []
        for i, lay in enumerate(layouts):
            t = composition.transform_of(lay, size, crop)
            layer = integrity.derive_layer(photo.convert("RGB"), alpha, t)
            image = compositor.compose(layer, compositor.backdrop((320, 320), ["#336699"]))
            key = f"t/{lay.layout_key}.png"
            storage.put(key, png(image), "image/png")
            record = integrity.record(
                integrity.stored_ref("t/source.png", src, kind="asset"),
                integrity.stored_ref("t/alpha.png", mask),
                t,
                image,
                layer,
            )
            cand = Candidate(
                tenant_id=campaign.tenant_id,
                campaign_id=campaign.id,
                layout_key=lay.layout_key,
                image_key=key,
                integrity=record,
            )
            session.add(cand)
            session.flush()
            if i < 2:
                session.add(
                    Result(tenant_id=campaign.tenant_id, campaign_id=campaign.id, candidate_id=cand.id, rank=i + 1)
                )
            rows.append(cand)
        for row in rows:
            session.expunge(row)
    return campaign_id, rows


def test_every_result_verifies_and_a_tampered_one_fails(storage: Storage) -> None:
    campaign_id, rows = seeded(storage)
    runner = CliRunner()
    done = runner.invoke(app, ["verify", campaign_id])
    assert done.exit_code == 0, done.output
    assert "verified 2/2" in done.output and done.output.count("100.00%") == 2
    assert runner.invoke(app, ["verify", campaign_id, "--all"]).output.strip().endswith("verified 3/3")

    # One product pixel of the rank-2 result edited after the fact: verify names it and exits 1.
    key = rows[1].image_key
    assert key is not None
    arr = np.array(Image.open(io.BytesIO(storage.get(key))))
    ys, xs = np.nonzero(np.all(arr == arr[arr.shape[0] // 2, arr.shape[1] // 2], axis=2))
    layer_alpha = np.asarray(
        integrity.derive_layer(
            Image.open(io.BytesIO(storage.get("t/source.png"))),
            Image.open(io.BytesIO(storage.get("t/alpha.png"))),
            integrity.Transform.from_json(rows[1].integrity["transform"]),
        )
    )[:, :, 3]
    y, x = np.argwhere(layer_alpha == 255)[0]
    arr[y, x] = 255 - arr[y, x]
    storage.put(key, png(Image.fromarray(arr)), "image/png")
    failed = runner.invoke(app, ["verify", campaign_id])
    assert failed.exit_code == 1 and "verified 1/2" in failed.output
    assert "FAILED: 1 of" in failed.output and "re-derived opaque pixels differ" in failed.output


def test_a_replaced_source_fails_and_an_unknown_campaign_has_nothing_to_verify(storage: Storage) -> None:
    campaign_id, _ = seeded(storage)
    storage.put("t/source.png", png(cutout(200, 260, seed=3).convert("RGB")), "image/png")
    done = CliRunner().invoke(app, ["verify", campaign_id])
    assert done.exit_code == 1 and "source bytes do not hash to the recorded sha256" in done.output
    empty = CliRunner().invoke(app, ["verify", str(uuid.uuid4())])
    assert empty.exit_code == 1 and "verified 0/0" in empty.output
