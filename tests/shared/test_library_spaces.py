"""Embedding spaces in Postgres: a CLIP image space next to the text space (tiny random CLIP), one
partial HNSW index per space, and filters applied inside the index scan (pgvector iterative scan)."""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select, text

from shared import search
from shared.config import get_settings
from shared.db.models import Asset, AssetEmbedding, Tenant
from shared.db.session import get_engine, session_scope
from shared.storage import get_storage
from tests.factories import CLIP_PROJECTION_DIM
from tests.system import clear_caches, migrated_db

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture
def db(stack_urls: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    monkeypatch.setenv("ONBRAND_HOME", str(tmp_path))
    with migrated_db(stack_urls, monkeypatch) as url:
        yield url


def _tenant() -> uuid.UUID:
    with session_scope() as session:
        tenant = Tenant(id=uuid.uuid4(), name="spaces")
        session.add(tenant)
    return tenant.id


def _asset(tenant_id: uuid.UUID, i: int, kind: str, colour: tuple[int, int, int] = (0, 0, 0)) -> Asset:
    asset_id = uuid.uuid4()
    return Asset(
        id=asset_id,
        tenant_id=tenant_id,
        kind=kind,
        title=f"asset {i}",
        description="",
        tags=[],
        attributes={},
        kpis={},
        sha256=f"{i:064x}",
        content_type="image/png",
        width=32,
        height=32,
        has_alpha=False,
        byte_size=1,
        storage_key=f"t/{asset_id}.png",
        thumb_key=f"t/{asset_id}-thumb.png",
    )


def _put_thumb(asset: Asset, colour: tuple[int, int, int]) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(buffer, "PNG")
    get_storage().put(asset.thumb_key, buffer.getvalue(), "image/png")


def test_image_space_is_written_indexed_and_searched(
    db: str,
    clip_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from workers.jobs import library
    from workers.models import clip_embedder

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("ONBRAND_IMAGE_EMBEDDING_MODEL", str(clip_dir))
    clear_caches()
    tenant_id = _tenant()
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    assets = [_asset(tenant_id, i, "product") for i in range(3)]
    with session_scope() as session:
        session.add_all(assets)
    for asset, colour in zip(assets, colours, strict=True):
        _put_thumb(asset, colour)

    assert library.embed_asset_ids([str(a.id) for a in assets]) == 6  # 3 text + 3 image vectors
    assert library.embed_asset_ids([str(a.id) for a in assets]) == 0  # idempotent
    model = clip_embedder.model_id(get_settings())
    with session_scope() as session:
        rows = session.execute(
            select(AssetEmbedding.model, AssetEmbedding.modality, AssetEmbedding.dim).distinct()
        ).all()
        indexes = set(session.scalars(text("SELECT indexname FROM pg_indexes WHERE tablename = 'asset_embeddings'")))
    assert set(rows) == {(MINILM, "text", 384), (model, "image", CLIP_PROJECTION_DIM)}
    assert {search.space_index_name(MINILM), search.space_index_name(model)} <= indexes

    query = library.embed_query("a red product")
    assert query["image"]["model"] == model and query["image"]["dim"] == CLIP_PROJECTION_DIM
    spaces = {name: search.Space(q["model"], q["dim"], q["vector"], name) for name, q in query.items()}
    with session_scope() as session:
        hits = search.search(
            session,
            "a red product",
            search.Filters(tenant_id=tenant_id),
            k=3,
            text_space=spaces["text"],
            image_space=spaces["image"],
        )
    assert len(hits) == 3 and all(h.parts["image"] is not None for h in hits)
    part_sum = search.WEIGHTS["vector"] * hits[0].parts["vector"] + search.WEIGHTS["image"] * hits[0].parts["image"]
    assert hits[0].score == pytest.approx(part_sum + search.WEIGHTS["keyword"] * hits[0].parts["keyword"], abs=1e-3)


def _load_vectors(tenant_id: uuid.UUID, n: int, rare_every: int) -> np.ndarray:
    """n assets with random 384-d vectors in the MiniLM space; every rare_every-th is a reference."""
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(n, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    assets = [_asset(tenant_id, i, "reference" if i % rare_every == 0 else "background") for i in range(n)]
    with session_scope() as session:
        session.add_all(assets)
        session.flush()
        session.add_all(
            AssetEmbedding(tenant_id=tenant_id, asset_id=a.id, model=MINILM, dim=384, embedding=v, kind=a.kind, tags=[])
            for a, v in zip(assets, vectors, strict=True)
        )
    with get_engine().connect() as conn:
        conn.execute(text("ANALYZE asset_embeddings"))
        conn.commit()
    return vectors


def test_a_rare_kind_still_returns_k_results_from_the_index_scan(db: str) -> None:
    tenant_id = _tenant()
    _load_vectors(tenant_id, 3000, rare_every=50)  # 60 references among 3000 assets (2 %)
    query = np.random.default_rng(8).normal(size=384)
    space = search.Space(MINILM, 384, (query / np.linalg.norm(query)).tolist())
    filters = search.Filters(tenant_id=tenant_id, kind="reference")
    with session_scope() as session:
        # At this size the planner may prefer an exact sort for a 2 % filter; at 100k+ rows it takes
        # the HNSW index (see the bench). Forbid the sort so both runs below go through the index.
        session.execute(text("SET LOCAL enable_sort = off"))
        hits = search.search(session, "x", filters, text_space=space, k=5, mode="vector")
        kinds = set(session.scalars(select(Asset.kind).where(Asset.id.in_([h.asset_id for h in hits]))))
        sql, params = search._sql("x", filters, {"vector": space, "image": None}, "vector", 40)
        plan = "\n".join(session.scalars(text("EXPLAIN " + sql), params))
        # The same index query without iterative scans: ef_search=40 candidates, ~2 % of them
        # references -> the filter leaves fewer than k. This is what iterative scans fix.
        session.execute(text("SET LOCAL hnsw.iterative_scan = off"))
        session.execute(text("SET LOCAL hnsw.ef_search = 40"))
        plain = session.execute(text(sql), params).all()
    assert search.space_index_name(MINILM) in plan  # the HNSW index is what serves the query
    assert len(hits) == 5 and kinds == {"reference"}
    assert len(plain) < 5
