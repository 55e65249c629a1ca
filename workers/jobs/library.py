"""Media library work on the retrieval queue: asset embeddings (batched) and query embeddings.

Spaces written for every asset:
  text       settings.text_embedding_model (MiniLM by default) over title, description, tags, attributes
  text_next  settings.text_embedding_model_next while a model change is being rolled out: the new
             space fills in the background while search keeps using `text`
  image      settings.image_embedding_model (CLIP) over the asset's thumbnail, when configured
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from shared.config import Settings, get_settings
from shared.db.models import Asset, AssetEmbedding
from shared.db.session import get_engine, session_scope
from shared.search import ensure_space_index
from shared.storage import get_storage

EMBED_BATCH = 64  # assets per embed_assets task: small enough that a query task never waits long
SWEEP_LIMIT = 5_000  # per sweep run; the next run (60 s) takes the rest


@dataclass(frozen=True)
class SpaceSpec:
    name: str
    model: str
    modality: str
    dim: Callable[[], int]
    embed: Callable[[list[Asset]], list[list[float]]]


def asset_text(asset: Asset) -> str:
    attrs = " ".join(f"{k} {v}" for k, v in (asset.attributes or {}).items())
    return ". ".join(p for p in (asset.title, asset.description, " ".join(asset.tags or []), attrs) if p)


def _thumbnail(asset: Asset) -> Image.Image:
    return Image.open(io.BytesIO(get_storage().get(asset.thumb_key))).convert("RGBA")


def spaces(settings: Settings | None = None) -> list[SpaceSpec]:
    """The spaces this deployment writes, in order."""
    from workers.models import clip_embedder, text_embedder

    settings = settings or get_settings()
    found = [
        SpaceSpec(
            "text",
            text_embedder.model_id(settings),
            "text",
            lambda: text_embedder.EMBEDDING_DIM,
            lambda assets: text_embedder.embed([asset_text(a) for a in assets], settings),
        )
    ]
    nxt = settings.text_embedding_model_next.strip()
    if nxt:
        found.append(
            SpaceSpec(
                "text_next",
                text_embedder.model_id(settings, nxt),
                "text",
                lambda: text_embedder.EMBEDDING_DIM,
                lambda assets: text_embedder.embed([asset_text(a) for a in assets], settings, nxt),
            )
        )
    if clip_embedder.enabled(settings):
        found.append(
            SpaceSpec(
                "image",
                clip_embedder.model_id(settings),
                "image",
                lambda: clip_embedder.dim(settings),
                lambda assets: clip_embedder.embed_images([_thumbnail(a) for a in assets], settings),
            )
        )
    return found


_INDEXED: set[str] = set()


def _ensure_indexes(specs: list[SpaceSpec]) -> None:
    """Each space's HNSW index, before any transaction of ours is open: CREATE INDEX CONCURRENTLY
    waits for every open transaction on the table, our own included (it would wait forever)."""
    for space in specs:
        if space.model not in _INDEXED:  # once per process: even IF NOT EXISTS takes a lock
            ensure_space_index(get_engine(), space.model, space.dim())
            _INDEXED.add(space.model)


def _missing(session: Session, assets: list[Asset], model: str) -> list[Asset]:
    done = set(
        session.scalars(
            select(AssetEmbedding.asset_id).where(
                AssetEmbedding.asset_id.in_([a.id for a in assets]), AssetEmbedding.model == model
            )
        )
    )
    return [a for a in assets if a.id not in done]


def _rows(space: SpaceSpec, assets: list[Asset], vectors: list[list[float]]) -> list[dict[str, Any]]:
    return [
        {
            "id": uuid.uuid4(),
            "tenant_id": a.tenant_id,
            "asset_id": a.id,
            "model": space.model,
            "modality": space.modality,
            "dim": len(v),
            "embedding": v,
            "kind": a.kind,
            "brand_id": a.brand_id,
            "tags": list(a.tags or []),
        }
        for a, v in zip(assets, vectors, strict=True)
    ]


def _embed_space(session: Session, space: SpaceSpec, assets: list[Asset]) -> int:
    todo = _missing(session, assets, space.model)
    if not todo:
        return 0
    vectors = space.embed(todo)
    # Two tasks may embed the same asset (a redelivery, the retrieve stage's catch-up): first wins.
    stmt = (
        insert(AssetEmbedding)
        .values(_rows(space, todo, vectors))
        .on_conflict_do_nothing(index_elements=["asset_id", "model"])
    )
    session.execute(stmt)
    return len(todo)


def embed_asset_ids(asset_ids: list[str]) -> int:
    """Embed the given assets in every configured space (idempotent); the number of vectors written."""
    ids = [uuid.UUID(str(a)) for a in asset_ids]
    specs = spaces()
    _ensure_indexes(specs)
    written = 0
    for start in range(0, len(ids), EMBED_BATCH):
        with session_scope() as session:  # commit per batch: progress survives a crash
            assets = list(session.scalars(select(Asset).where(Asset.id.in_(ids[start : start + EMBED_BATCH]))))
            written += sum(_embed_space(session, space, assets) for space in specs)
    return written


def missing_asset_ids(
    session: Session, model: str, tenant_id: uuid.UUID | None = None, brand_scope: Any = None, limit: int = 10_000
) -> list[uuid.UUID]:
    """Assets without a vector of model (oldest first): for re-embedding and catch-up."""
    has = select(AssetEmbedding.id).where(AssetEmbedding.asset_id == Asset.id, AssetEmbedding.model == model)
    stmt = select(Asset.id).where(~has.exists())
    if tenant_id is not None:
        stmt = stmt.where(Asset.tenant_id == tenant_id)
    if brand_scope is not None:
        stmt = stmt.where(brand_scope)
    return list(session.scalars(stmt.order_by(Asset.created_at).limit(limit)))


def embed_query(q: str, settings: Settings | None = None) -> dict[str, Any]:
    """The query's vectors in the spaces search uses: {"text": {model, dim, vector}, "image": ... | None}."""
    from workers.models import clip_embedder, text_embedder

    settings = settings or get_settings()
    vector = text_embedder.embed([q], settings)[0]
    result: dict[str, Any] = {
        "text": {"model": text_embedder.model_id(settings), "dim": len(vector), "vector": vector},
        "image": None,
    }
    if clip_embedder.enabled(settings):
        image_vector = clip_embedder.embed_texts([q], settings)[0]
        result["image"] = {"model": clip_embedder.model_id(settings), "dim": len(image_vector), "vector": image_vector}
    return result


def enqueue_missing(session: Session, tenant_id: uuid.UUID | None = None, limit: int = 100_000) -> int:
    """Send embed tasks (bulk priority) for assets missing a vector in any configured space."""
    from shared.queue import BULK_PRIORITY, send

    todo: set[uuid.UUID] = set()
    for space in spaces():
        todo.update(missing_asset_ids(session, space.model, tenant_id, limit=limit))
    ordered = sorted(todo)
    for start in range(0, len(ordered), EMBED_BATCH):
        send("onbrand.embed_assets", *ordered[start : start + EMBED_BATCH], priority=BULK_PRIORITY)
    return len(ordered)


def sweep() -> int:
    """Beat safety net: embed what a lost send, a crash or a new space left without vectors."""
    with session_scope() as session:
        return enqueue_missing(session, limit=SWEEP_LIMIT)
