"""`onbrand assets import|status|reembed|prune-embeddings`: the client on its own (metadata, batching,
retries) and as a real subprocess against the running system."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image, ImageDraw

from shared.cli import library_import as li
from shared.cli.procs import onbrand_cmd
from tests.system import System

TEXT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
SHAPES = ("rectangle", "ellipse", "triangle")


def make_png(path: Path, i: int, size: int = 64) -> None:
    """A small image, distinct for every i: background colour, a shape and its place."""
    bg = ((i * 53) % 256, (i * 97 + 40) % 256, (i * 151 + 80) % 256)
    fg = (255 - bg[0], 255 - bg[1], 255 - bg[2])
    image = Image.new("RGB", (size, size), bg)
    draw = ImageDraw.Draw(image)
    x, y = 4 + (i * 7) % (size // 2), 4 + (i * 11) % (size // 2)
    box = (x, y, x + size // 3, y + size // 3)
    shape = SHAPES[i % len(SHAPES)]
    if shape == "rectangle":
        draw.rectangle(box, fill=fg)
    elif shape == "ellipse":
        draw.ellipse(box, fill=fg)
    else:
        draw.polygon([(box[0], box[3]), (box[2], box[3]), ((box[0] + box[2]) // 2, box[1])], fill=fg)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, "PNG")


def build_folder(root: Path) -> Path:
    """30 distinct images (2 in a sub-folder, one .PNG) + sidecars, a manifest, a fake PNG and a duplicate.

    Expected: 32 files; 29 created, 1 existing (the duplicate), 2 failed (the invalid sidecar, locally;
    the text file, by the gateway with unsupported_media_type).
    """
    for i in range(28):
        make_png(root / f"a{i:02d}_red-shoe_{SHAPES[i % 3]}.png", i)
    make_png(root / "sub" / "b01.png", 28)
    make_png(root / "sub" / "B02.PNG", 29)
    (root / "a03_red-shoe_rectangle.json").write_text(
        json.dumps(
            {
                "kind": "background",
                "title": "Sunset street",
                "tags": ["street", "sunset"],
                "description": "an urban street at dusk",
            }
        )
    )
    (root / "a05_red-shoe_triangle.json").write_text(json.dumps({"kind": "poster"}))
    (root / "manifest.jsonl").write_text(
        json.dumps({"file": "sub/b01.png", "title": "From the manifest", "kpis": {"ctr": 0.05}}) + "\n"
    )
    (root / "notes.txt").write_text("not an image")
    (root / "y_not_really.png").write_text("this is a text file, not a PNG\n" * 10)
    shutil.copy(root / "a00_red-shoe_rectangle.png", root / "z_duplicate.png")
    return root


def onbrand(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(onbrand_cmd(*args), env=env, capture_output=True, text=True, timeout=300)


# --------------------------------------------------------------------------- client only (no system)


def test_metadata_from_flags_manifest_and_sidecar(tmp_path: Path) -> None:
    folder = build_folder(tmp_path / "lib")
    images, manifest, orphans = li.plan(li.Options(directory=folder, api_url="http://x", api_key="k"))
    rels = [p.relative_to(folder).as_posix() for p in images]
    assert len(images) == 32 and not orphans and rels == sorted(rels) and "sub/B02.PNG" in rels
    defaults = {"kind": "product", "tags": ["shoe"], "brand_id": "7f1f5a52-4b7c-4bd4-9d0a-3f4cf0b8e7a1"}

    plain = li.build_item(folder / "a00_red-shoe_rectangle.png", folder, defaults, manifest)
    assert isinstance(plain, li.Item)
    assert plain.metadata is not None and plain.metadata["title"] == "a00 red shoe rectangle"
    assert plain.metadata["tags"] == ["shoe"] and plain.metadata["brand_id"] == defaults["brand_id"]

    sidecar = li.build_item(folder / "a03_red-shoe_rectangle.png", folder, defaults, manifest)
    assert isinstance(sidecar, li.Item) and sidecar.metadata is not None
    assert sidecar.metadata["kind"] == "background" and sidecar.metadata["tags"] == ["street", "sunset"]

    listed = li.build_item(folder / "sub" / "b01.png", folder, defaults, manifest)
    assert isinstance(listed, li.Item) and listed.metadata is not None
    assert listed.metadata["title"] == "From the manifest" and listed.metadata["kpis"] == {"ctr": 0.05}

    bad = li.build_item(folder / "a05_red-shoe_triangle.png", folder, defaults, manifest)
    assert isinstance(bad, li.Failure) and bad.code == "invalid_metadata" and "kind" in bad.detail


def test_manifest_orphans_and_bad_lines(tmp_path: Path) -> None:
    make_png(tmp_path / "one.png", 1)
    (tmp_path / "metadata.jsonl").write_text('{"file": "./one.png", "title": "x"}\n{"file": "gone.png"}\n')
    images, manifest, orphans = li.plan(li.Options(directory=tmp_path, api_url="http://x", api_key="k"))
    assert [p.name for p in images] == ["one.png"] and manifest["one.png"] == {"title": "x"}
    assert [(f.file, f.code) for f in orphans] == [("gone.png", "file_not_found")]
    (tmp_path / "metadata.jsonl").write_text("{not json\n")
    with pytest.raises(li.ImportAborted, match="line 1"):
        li.load_manifest(tmp_path)


def test_batches_respect_count_and_bytes() -> None:
    items = [li.Item(path=Path(f"{i}.png"), rel=f"{i}.png", size=size) for i, size in enumerate([5, 5, 5, 30, 5])]
    assert [[it.rel for it in b] for b in li.batches(iter(items), 2, max_bytes=20)] == [
        ["0.png", "1.png"],
        ["2.png"],
        ["3.png"],
        ["4.png"],
    ]


def _ok(request: httpx.Request, n: int) -> httpx.Response:
    items = [{"index": i, "status": "created", "asset": None, "problem": None} for i in range(n)]
    return httpx.Response(200, json={"created": n, "existing": 0, "failed": 0, "items": items})


def test_post_batch_retries_5xx_429_and_honours_retry_after(tmp_path: Path) -> None:
    for i in range(3):
        make_png(tmp_path / f"{i}.png", i)
    batch = [li.Item(path=tmp_path / f"{i}.png", rel=f"{i}.png", metadata={"kind": "product"}) for i in range(3)]
    answers = iter([httpx.Response(503), httpx.Response(429, headers={"Retry-After": "7"})])
    bodies: list[bytes] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(request.read())
        return next(answers, None) or _ok(request, 3)

    slept: list[float] = []
    with httpx.Client(transport=httpx.MockTransport(handler), base_url="http://gw") as client:
        outcome = li.post_batch(client, batch, sleep=slept.append)
    assert outcome.created == 3 and not outcome.failures
    assert slept == [li.BACKOFF_S[0], 7.0] and len(bodies) == 3 and len(set(map(len, bodies))) == 1  # re-sent whole

    def always_down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    with httpx.Client(transport=httpx.MockTransport(always_down), base_url="http://gw") as client:
        outcome = li.post_batch(client, batch, sleep=slept.append)
    assert [f.code for f in outcome.failures] == ["connection_error"] * 3

    with (
        httpx.Client(
            transport=httpx.MockTransport(lambda r: httpx.Response(401, json={"code": "unauthorized"})),
            base_url="http://gw",
        ) as client,
        pytest.raises(li.ImportAborted, match="API key"),
    ):
        li.post_batch(client, batch, sleep=slept.append)


def test_import_requires_an_api_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ONBRAND_API_KEY"}
    done = subprocess.run(
        onbrand_cmd("assets", "import", str(tmp_path), "--brand", "x"), env=env, capture_output=True, text=True
    )
    assert done.returncode == 2 and "ONBRAND_API_KEY" in done.stderr


def test_status_and_prune_on_a_fresh_database(fresh_db: str) -> None:
    from shared.db.models import Asset, AssetEmbedding
    from shared.db.session import session_scope
    from shared.tenants import create_tenant

    with session_scope() as session:
        tenants = [create_tenant(session, name)[0] for name in ("one", "two")]
        for n, tenant_id in enumerate([tenants[0]] * 3 + [tenants[1]]):
            asset = Asset(
                tenant_id=tenant_id,
                kind="product",
                sha256=f"{n:064d}",
                content_type="image/png",
                width=1,
                height=1,
                byte_size=1,
                storage_key=f"k{n}",
                thumb_key=f"t{n}",
            )
            session.add(asset)
            session.flush()
            for model in ("old/model", "new/model")[: 1 + (n % 2)]:  # assets 1 and 3 have both
                session.add(
                    AssetEmbedding(
                        tenant_id=tenant_id,
                        asset_id=asset.id,
                        model=model,
                        dim=2,
                        embedding=[0.6, 0.8],
                        kind="product",
                        tags=[],
                    )
                )
    env = {**os.environ}

    def cli(*args: str) -> dict[str, Any]:
        done = onbrand(env, "assets", *args)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    one = cli("status", "--tenant", str(tenants[0]))
    assert one["assets"] == 3 and one["models"] == {
        "new/model": {"modality": "text", "embedded": 1, "missing": 2},
        "old/model": {"modality": "text", "embedded": 3, "missing": 0},
    }
    assert cli("status")["models"]["new/model"]["embedded"] == 2

    dry = cli("prune-embeddings", "--keep", "new/model")
    assert dry == {
        "keep": ["new/model"],
        "models": {"new/model": 2, "old/model": 4},
        "delete": {"old/model": 4},
        "dry_run": True,
        "deleted": 0,
    }
    assert onbrand(env, "assets", "prune-embeddings", "--keep", "typo/model", "--yes").returncode == 1
    assert cli("status")["models"]["old/model"]["embedded"] == 4
    assert cli("prune-embeddings", "--keep", "new/model", "--yes")["deleted"] == 4
    assert list(cli("status")["models"]) == ["new/model"]


# --------------------------------------------------------------------------- against the running system


def wait_embedded(env: dict[str, str], tenant_id: str, assets: int, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        done = onbrand(env, "assets", "status", "--tenant", tenant_id)
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        text = status["models"].get(TEXT_MODEL)
        if status["assets"] == assets and text and text["missing"] == 0:
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"embeddings not caught up after {timeout:.0f}s: {status}")
        time.sleep(1.0)


@pytest.mark.slow
def test_import_a_folder_then_again(system: System, tmp_path: Path) -> None:
    folder = build_folder(tmp_path / "lib")
    tenant = system.tenant("importer")
    api = httpx.Client(base_url=system.url, headers={"Authorization": f"Bearer {tenant['api_key']}"}, timeout=30)
    brand = api.post("/v1/brands", json={"name": "Stride"}).json()
    # --api-url comes from ONBRAND_PUBLIC_URL in the system's environment
    env = {**system.env, "ONBRAND_API_KEY": tenant["api_key"]}

    done = onbrand(
        env,
        "assets",
        "import",
        str(folder),
        "--brand",
        brand["id"],
        "--tag",
        "shoe",
        "--batch-size",
        "8",
        "--concurrency",
        "2",
    )
    assert done.returncode == 2, done.stderr
    summary = json.loads(done.stdout)
    assert {k: summary[k] for k in ("files", "created", "existing", "failed")} == {
        "files": 32,
        "created": 29,
        "existing": 1,
        "failed": 2,
    }, summary
    assert {(f["file"], f["code"]) for f in summary["failures"]} == {
        ("a05_red-shoe_triangle.png", "invalid_metadata"),
        ("y_not_really.png", "unsupported_media_type"),
    }
    assert summary["seconds"] > 0 and summary["assets_per_second"] > 0
    assert "created=" in done.stderr  # the progress bar

    backgrounds = api.get("/v1/assets", params={"kind": "background"}).json()["items"]
    assert [(a["title"], a["tags"], a["description"], a["brand_id"]) for a in backgrounds] == [
        ("Sunset street", ["street", "sunset"], "an urban street at dusk", brand["id"])
    ]
    products = api.get("/v1/assets", params={"kind": "product", "limit": 100}).json()["items"]
    assert len(products) == 28 and all(a["brand_id"] == brand["id"] for a in products)
    by_title = {a["title"]: a for a in products}
    assert by_title["From the manifest"]["kpis"] == {"ctr": 0.05}
    assert by_title["a00 red shoe rectangle"]["tags"] == ["shoe"]

    status = wait_embedded(env, tenant["tenant_id"], assets=29)
    assert status["models"][TEXT_MODEL]["embedded"] == 29

    again = onbrand(
        env,
        "assets",
        "import",
        str(folder),
        "--brand",
        brand["id"],
        "--quiet",
        "--api-url",
        system.url,
        "--api-key",
        tenant["api_key"],
    )
    assert again.returncode == 2 and again.stderr == "", again.stderr
    second = json.loads(again.stdout)
    assert {k: second[k] for k in ("files", "created", "existing", "failed")} == {
        "files": 32,
        "created": 0,
        "existing": 30,
        "failed": 2,
    }, second

    dry = onbrand(env, "assets", "prune-embeddings", "--keep", "some/other-model")
    assert dry.returncode == 0, dry.stderr
    report = json.loads(dry.stdout)
    assert report["dry_run"] is True and report["deleted"] == 0
    assert report["models"][TEXT_MODEL] >= 29 and report["delete"][TEXT_MODEL] == report["models"][TEXT_MODEL]
    assert wait_embedded(env, tenant["tenant_id"], assets=29, timeout=0)["models"][TEXT_MODEL]["embedded"] == 29

    refused = onbrand(env, "assets", "prune-embeddings", "--keep", "some/other-model", "--yes")
    assert refused.returncode == 1 and "refusing" in refused.stderr
    assert wait_embedded(env, tenant["tenant_id"], assets=29, timeout=0)["models"][TEXT_MODEL]["embedded"] == 29


@pytest.mark.slow
def test_reembed_sends_the_task_and_a_bad_key_stops_the_import(system: System, tmp_path: Path) -> None:
    tenant = system.tenant("reembedder")
    done = onbrand(system.env, "assets", "reembed", "--tenant", tenant["tenant_id"])
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["sent"] == "onbrand.reembed"
    log = system.home / "logs" / "worker-cpu.log"

    def finished() -> list[str]:
        return [
            line
            for line in log.read_text().splitlines()
            if "onbrand.reembed[" in line and ("succeeded" in line or "raised" in line)
        ]

    deadline = time.monotonic() + 30
    while not finished() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert finished() and "succeeded" in finished()[-1]
    assert onbrand(system.env, "assets", "reembed", "--tenant", "nope").returncode == 2

    make_png(tmp_path / "one.png", 1)
    refused = onbrand(
        {**system.env, "ONBRAND_API_KEY": "onb_wrong"},
        "assets",
        "import",
        str(tmp_path),
        "--brand",
        "7f1f5a52-4b7c-4bd4-9d0a-3f4cf0b8e7a1",
        "--quiet",
    )
    assert refused.returncode == 1 and "API key" in refused.stderr
