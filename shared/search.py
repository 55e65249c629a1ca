"""Hybrid asset search over pgvector and Postgres full-text, shared by the gateway and the retrieve stage.

A query is scored in parts, each in [0, 1], so a caller can see why an asset ranks where it does:
  vector   cosine similarity of the query's text embedding and the asset's metadata embedding
  image    cosine similarity of the query's CLIP text embedding and the asset's CLIP image embedding
  keyword  ts_rank of the query's words (OR-ed) against title and tags (A), attributes (B), description (C)
  kpi      percentile of the asset's chosen KPI (e.g. ctr) among the candidates that have it
score = the weighted sum of the parts present (weights below).

Candidates come from each part's own top-n (HNSW index scan for vectors, GIN for keywords); the
union is then scored on every part with exact float32 distances. Filters (tenant, kind, brand,
tags) are columns of asset_embeddings too, so pgvector's iterative index scan applies them while
scanning: a filtered query still finds k results instead of filtering a fixed top-ef afterwards.
No model code here: callers pass the query vectors in.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

Mode = Literal["hybrid", "vector", "keyword"]
Modality = Literal["text", "image"]
MODES: tuple[Mode, ...] = ("hybrid", "vector", "keyword")

# Tuned on tests/data/retrieval_eval.json (see tests/shared/test_search_eval.py); the vector part carries
# meaning (paraphrases), the keyword part rescues exact product vocabulary, SKUs and tags.
WEIGHTS = {"vector": 1.0, "image": 0.5, "keyword": 0.8, "kpi": 0.25}
CANDIDATES_PER_PART = 20  # per part, at least 4k: enough for the fusion (eval set), cheap for filters
# HNSW beam width, independent of the candidate count: 100 gives recall@5 >= 0.95 at 100k (bench).
EF_SEARCH = 100
MAX_K = 100


@dataclass(frozen=True)
class Space:
    """One embedding space and the query's vector in it."""

    model: str
    dim: int
    vector: Sequence[float]
    modality: Modality = "text"


@dataclass(frozen=True)
class Filters:
    tenant_id: uuid.UUID
    kind: str | None = None
    brand_id: uuid.UUID | None = None
    include_unbranded: bool = False  # the pipeline's scope: the brand's assets plus brand-less ones
    tags: tuple[str, ...] = ()


@dataclass
class Hit:
    asset_id: uuid.UUID
    score: float
    parts: dict[str, float | None] = field(default_factory=dict)


def space_index_name(model: str) -> str:
    """Name of a space's partial HNSW index (migration 0002 uses the same rule for the default)."""
    return "ix_emb_hnsw_" + hashlib.sha1(model.encode()).hexdigest()[:12]


def _literal(value: str) -> str:
    # Partial-index predicates must match the query literally: a bind parameter in a generic
    # (prepared) plan would not prove `model = 'x'`, and the planner would skip the index.
    return "'" + value.replace("'", "''") + "'"


def ensure_space_index(engine: Engine, model: str, dim: int, build_memory: str = "1GB") -> None:
    """Create the space's HNSW index (cosine, halfvec: half the memory, same top-k, see the bench).

    build_memory should hold the whole graph (~1.2 kB per vector): a build that spills is ~10x slower.
    """
    if not 0 < dim <= 4000:
        raise ValueError(f"dim must be in 1..4000 for a halfvec HNSW index, got {dim}")
    ddl = (
        f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {space_index_name(model)} ON asset_embeddings "
        f"USING hnsw ((embedding::halfvec({int(dim)})) halfvec_cosine_ops) WHERE model = {_literal(model)}"
    )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(text("SELECT set_config('maintenance_work_mem', :m, false)"), {"m": build_memory})
        conn.execute(text(ddl))
        conn.execute(text("RESET maintenance_work_mem"))


def vector_text(vector: Sequence[float]) -> str:
    return "[" + ",".join(f"{float(x):.7g}" for x in vector) + "]"


def _filter_sql(alias: str, filters: Filters, params: dict[str, Any]) -> str:
    clauses = [f"{alias}.tenant_id = :tenant_id"]
    params["tenant_id"] = filters.tenant_id
    if filters.kind is not None:
        clauses.append(f"{alias}.kind = :kind")
        params["kind"] = filters.kind
    if filters.brand_id is not None:
        unbranded = f" OR {alias}.brand_id IS NULL" if filters.include_unbranded else ""
        clauses.append(f"({alias}.brand_id = :brand_id{unbranded})")
        params["brand_id"] = filters.brand_id
    if filters.tags:
        clauses.append(f"{alias}.tags @> CAST(:tags AS varchar[])")
        params["tags"] = list(filters.tags)
    return " AND ".join(clauses)


def _vector_cte(name: str, space: Space, filters: Filters, n: int, params: dict[str, Any]) -> str:
    distance = f"e.embedding::halfvec({int(space.dim)}) <=> CAST(:{name}_q AS halfvec({int(space.dim)}))"
    return (
        f"{name} AS MATERIALIZED (SELECT e.asset_id FROM asset_embeddings e "
        f"WHERE e.model = {_literal(space.model)} AND {_filter_sql('e', filters, params)} "
        f"ORDER BY {distance} LIMIT {int(n)})"
    )


def _keyword_cte(filters: Filters, n: int, params: dict[str, Any]) -> str:
    return (
        f"kw AS MATERIALIZED (SELECT a.id AS asset_id FROM assets a, qq WHERE {_filter_sql('a', filters, params)} "
        f"AND a.search_tsv @@ qq.query ORDER BY ts_rank(a.search_tsv, qq.query, 32) DESC LIMIT {int(n)})"
    )


def _similarity(name: str, space: Space | None) -> str:
    if space is None:
        return f"NULL::float AS {name}"
    return (
        f"(SELECT 1 - (e.embedding <=> CAST(:{name}_q AS vector)) FROM asset_embeddings e "
        f"WHERE e.asset_id = a.id AND e.model = {_literal(space.model)}) AS {name}"
    )


# The words of the query OR-ed (plainto_tsquery ANDs them, which misses most partial matches).
QUERY_CTE = "qq AS (SELECT replace(plainto_tsquery('english', :q)::text, ' & ', ' | ')::tsquery AS query)"


def _sql(q: str, filters: Filters, spaces: dict[str, Space | None], mode: Mode, n: int) -> tuple[str, dict[str, Any]]:
    params: dict[str, Any] = {"q": q, "boost": ""}
    ctes = [QUERY_CTE]
    sources = []
    for name, space in spaces.items():
        if space is not None:  # every part is reported, even those the mode does not rank by
            params[f"{name}_q"] = vector_text(space.vector)
        if space is not None and mode in ("hybrid", "vector"):
            ctes.append(_vector_cte(name, space, filters, n, params))
            sources.append(f"SELECT asset_id FROM {name}")
    if mode in ("hybrid", "keyword"):
        ctes.append(_keyword_cte(filters, n, params))
        sources.append("SELECT asset_id FROM kw")
    if not sources:
        raise ValueError(f"mode {mode!r} needs a query vector (text_space)")
    ctes.append("cand AS (" + " UNION ".join(sources) + ")")
    select = (
        f"SELECT a.id, {_similarity('vector', spaces.get('vector'))}, {_similarity('image', spaces.get('image'))}, "
        "ts_rank(a.search_tsv, qq.query, 32) AS keyword, "
        "CASE WHEN jsonb_typeof(a.kpis -> :boost) = 'number' THEN (a.kpis ->> :boost)::float END AS kpi "
        f"FROM cand JOIN assets a ON a.id = cand.asset_id CROSS JOIN qq WHERE {_filter_sql('a', filters, params)}"
    )
    return "WITH " + ", ".join(ctes) + " " + select, params


def _kpi_percentiles(values: list[float | None]) -> list[float | None]:
    """Percentile rank (0..1) of each present value among the present values."""
    present = sorted(v for v in values if v is not None)
    if not present:
        return [None] * len(values)
    span = max(len(present) - 1, 1)
    return [None if v is None else sum(p < v for p in present) / span for v in values]


def _combine(rows: list[Any], mode: Mode, boost: str | None) -> list[Hit]:
    kpis = _kpi_percentiles([r.kpi for r in rows]) if boost else [None] * len(rows)
    hits = []
    for row, kpi in zip(rows, kpis, strict=True):
        parts = {
            "vector": _clip(row.vector),
            "image": _clip(row.image),
            "keyword": round(float(row.keyword), 4),
            "kpi": None if kpi is None else round(kpi, 4),
        }
        used = {name: value for name, value in parts.items() if value is not None and _counts(name, mode)}
        hits.append(Hit(asset_id=row.id, score=round(sum(WEIGHTS[n] * v for n, v in used.items()), 4), parts=parts))
    return hits


def _counts(part: str, mode: Mode) -> bool:
    """Which parts a mode scores with; the others are still reported, for explanation."""
    if mode == "vector":
        return part != "keyword"
    if mode == "keyword":
        return part in ("keyword", "kpi")
    return True


def _clip(similarity: float | None) -> float | None:
    return None if similarity is None else round(max(0.0, float(similarity)), 4)


def _tune(session: Session, ef_search: int) -> None:
    """Transaction-local planner settings, in one round trip.

    relaxed_order lets HNSW keep scanning until enough rows pass the filters (we re-sort anyway).
    force_custom_plan: psycopg prepares a statement on its 5th run and Postgres may then keep a
    generic plan that runs HNSW for a small tenant whose rows an exact scan would serve, and comes
    back short of k once hnsw.max_scan_tuples is spent (seen in the bench).
    """
    session.execute(
        text(
            "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true), "
            "set_config('hnsw.ef_search', :ef, true), "
            "set_config('plan_cache_mode', 'force_custom_plan', true)"
        ),
        {"ef": str(ef_search)},
    )


def search(
    session: Session,
    q: str,
    filters: Filters,
    *,
    text_space: Space | None = None,
    image_space: Space | None = None,
    k: int = 10,
    mode: Mode = "hybrid",
    boost: str | None = None,
) -> list[Hit]:
    """The top-k assets for q under filters, best first, each with its score parts."""
    if not q.strip():
        raise ValueError("q must not be empty")
    if not 1 <= k <= MAX_K:
        raise ValueError(f"k must be in 1..{MAX_K}, got {k}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    n = max(CANDIDATES_PER_PART, 4 * k)
    _tune(session, max(EF_SEARCH, n))
    sql, params = _sql(q, filters, {"vector": text_space, "image": image_space}, mode, n)
    params["boost"] = boost or ""
    hits = _combine(list(session.execute(text(sql), params)), mode, boost)
    hits.sort(key=lambda h: (-h.score, str(h.asset_id)))
    return hits[:k]
