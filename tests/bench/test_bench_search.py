"""Search at 100k assets: HNSW build time, top-5 latency p50/p99 (vector and hybrid) with and without filters, recall@5.

The library: one tenant with 100,000 assets and a second one with 2,000, 20 brands each (uniform),
kinds product 30% / background 50% / reference 20%, titles composed from vocabularies
(colour × material × product; mood × scene × time of day; style × format × product: see
tests/bench/synthetic_library.py). Everything comes from one seeded numpy Generator.

How the vectors are made (real MiniLM embeddings of all 102k texts would take 15-30 min on 2 cores):
  1. Real: SAMPLE (3,000) distinct titles, split by the kind shares, are embedded with the real
     all-MiniLM-L6-v2 (workers.models.text_embedder); each becomes one asset with its real vector.
  2. Synthetic, for every other asset: pick a random sample title s of the asset's kind and one of its
     10 nearest real neighbours b of the same kind; v = normalize((1-t)·s + t·b + n) with t ~ U(0, 1)
     and n Gaussian noise with the covariance of the real embeddings (their principal directions and
     spreads), scaled so that cos(normalize(x + n), x) ≈ 0.93. The vector lies between two related
     real titles, pushed off that segment in the directions real MiniLM vectors vary in. cos(v, s):
     median 0.89, p10 0.76, p90 0.94, close to real near-duplicate texts measured in the same run (a
     sample title with one slot swapped, embedded for real: median 0.78, p90 0.91). The asset's title
     is such a one-slot variant of s.
  3. The check printed by every run, with 3,000 vectors of each sort (median top-1 cosine):
     held-out queries against real vectors 0.875, against synthetic ones 0.83; each item's nearest
     neighbour among real vectors 0.87, among synthetic ones 0.86. Isotropic noise alone (the simplest
     model, normalize(s + σ·N(0, I)) at cos 0.85) is printed too, and is not used: it scatters vectors
     off the manifold of real embeddings (query top-1 0.74, item NN 0.71).
Queries: 200 real MiniLM embeddings of held-out texts over the same vocabularies with other templates
("navy blue sneaker in suede", "harbour at dusk, moody mood"), never a stored title.

Loading: COPY (assets as text, so assets.search_tsv is generated from the titles; embeddings binary),
the model's HNSW index dropped first and built once afterwards by search.ensure_space_index (which sets
maintenance_work_mem itself, build_memory="1GB") on an engine whose connections carry
max_parallel_maintenance_workers=2 as a startup option; the parallel workers seen during the build are
printed. Then VACUUM ANALYZE. The schema is migration 0002's, btree ix_asset_embeddings_filters included.

Measured through shared.search.search(k=5) as shipped (CANDIDATES_PER_PART, EF_SEARCH, its set_config
tuning with plan_cache_mode = force_custom_plan), a new session and transaction per query, as the
gateway runs it:
  - mode="vector": p50/p99 and recall@5 against the exact float32 cosine top-5 (numpy) over the same
    filtered rows (and "tie-tolerant": a hit within 0.01 cosine of the exact 5th best counts);
  - mode="hybrid" (the gateway's default), q = the query's text, so the keyword part runs full-text
    over assets.search_tsv: p50/p99, and for information the share of its top-5 in the exact vector
    top-5 (not a recall: hybrid also ranks by keywords) and of its hits with a keyword part.
For reference, the raw index query (ORDER BY halfvec distance LIMIT 5, no re-ranking) is timed and
scored for ef_search 40, 64, 100, 200; one what-if, ef_search=200 through search.search
(search.EF_SEARCH monkeypatched). EXPLAIN shows the plan each case's query gets (custom plans are
forced, so the plan for its own parameters). Last, sizes and a full-precision vector(384) HNSW index
for comparison (build time, size, recall). A summary line per case and the targets (vector mode:
p99 < 15 ms, recall@5 >= 0.95 in every case) close the run. Figures only: the asserts are sanity
checks (recall ≥ 0.9, 5 hits, no other tenant's asset, the HNSW index in the tenant-only and kind
plans), never timings.
"""

from __future__ import annotations

import hashlib
import os
import re
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
import pytest
from psycopg.types.json import Jsonb
from sqlalchemy import create_engine, event, text

from shared import search
from shared.db.models import Brand, Tenant
from shared.db.session import get_engine, session_scope, sqlalchemy_url
from tests.bench import synthetic_library as sl
from tests.system import migrated_db

pytestmark = [pytest.mark.bench, pytest.mark.timeout(900)]

SEED = 20240611
N_MAIN = 100_000
N_SMALL = 2_000
N_BRANDS = 20
SAMPLE = 3_000  # distinct titles embedded with the real model
CALIBRATION = 300  # one-slot near-duplicates embedded for real, to compare with the synthetic spread
N_QUERIES = 200
K = 5
NEIGHBOURS = 10
NOISE_COSINE = 0.93
EF_SEARCH = (40, 64, 100, 200)  # the raw index query sweep
WHAT_IF_EF = 200  # search.EF_SEARCH in the what-if
TIE = 0.01  # cosine: a miss this close to the exact 5th best is a near-tie
TARGET_RECALL = 0.95
TARGET_P99_MS = 15.0
DIM = 384
BUILD_MEMORY = "1GB"  # search.ensure_space_index(build_memory=...)
BUILD_OPTIONS = {"max_parallel_maintenance_workers": "2"}  # startup options of the build engine's connections


@dataclass(frozen=True)
class Case:
    name: str
    tenant: int  # 0: the 100k tenant, 1: the 2k one
    kind: bool  # filter by the query's kind
    brand: bool  # filter by the query's brand


CASES = (
    Case("tenant only", 0, False, False),
    Case("kind", 0, True, False),
    Case("kind+brand", 0, True, True),
    Case("small tenant (2k of 102k)", 1, False, False),
)


@dataclass
class Library:
    url: str
    model: str
    tenants: list[uuid.UUID]
    brands: list[list[uuid.UUID]]  # per tenant
    ids: list[uuid.UUID]  # asset id per row
    vectors: np.ndarray  # (rows, 384) float32, exactly what was inserted
    tenant_of: np.ndarray
    kind_of: np.ndarray  # index into sl.KINDS
    brand_of: np.ndarray  # index into brands[tenant]
    queries: list[str]
    query_vectors: np.ndarray
    query_kinds: np.ndarray
    query_brands: np.ndarray
    build_seconds: float = 0.0
    row_of: dict[uuid.UUID, int] = field(default_factory=dict)

    def filters(self, case: Case, q: int) -> search.Filters:
        tenant = self.tenants[case.tenant]
        return search.Filters(
            tenant_id=tenant,
            kind=sl.KINDS[self.query_kinds[q]] if case.kind else None,
            brand_id=self.brands[case.tenant][self.query_brands[q]] if case.brand else None,
        )

    def mask(self, case: Case, q: int) -> np.ndarray:
        """The rows the case's filters keep for query q."""
        keep = self.tenant_of == case.tenant
        if case.kind:
            keep &= self.kind_of == self.query_kinds[q]
        if case.brand:
            keep &= self.brand_of == self.query_brands[q]
        return keep

    def exact(self, case: Case) -> Exact:
        """The exact top-K per query over the rows the case's filters keep (float32 cosine, numpy)."""
        found, fifth = [], []
        for q in range(len(self.queries)):
            rows = np.flatnonzero(self.mask(case, q))
            best = sl.top_k(self.vectors[rows], self.query_vectors[q : q + 1], K)[0]
            found.append({self.ids[i] for i in rows[best]})
            fifth.append(float(self.vectors[rows[best[-1]]] @ self.query_vectors[q]))
        return Exact(found, fifth)

    def similarity(self, q: int, asset_id: uuid.UUID) -> float:
        if not self.row_of:
            self.row_of.update({asset_id: i for i, asset_id in enumerate(self.ids)})
        return float(self.vectors[self.row_of[asset_id]] @ self.query_vectors[q])


@dataclass
class Exact:
    ids: list[set[uuid.UUID]]
    fifth: list[float]  # the K-th best similarity per query


def _embed(texts: list[str]) -> np.ndarray:
    from workers.models import text_embedder

    out = []
    for start in range(0, len(texts), text_embedder.MAX_TEXTS):
        out += text_embedder.embed(texts[start : start + text_embedder.MAX_TEXTS])
    return np.asarray(out, dtype=np.float32)


def _spread(x: np.ndarray) -> str:
    p10, p50, p90 = np.percentile(x, [10, 50, 90])
    return f"median {p50:.3f} p10 {p10:.3f} p90 {p90:.3f}"


def _p50_p99(samples: list[float]) -> tuple[float, float]:
    """(p50, p99) in ms; p99 by nearest rank (the 2nd slowest of 200)."""
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(np.ceil(0.99 * len(ordered))) - 1)]
    return statistics.median(ordered) * 1000, p99 * 1000


def _ms(samples: list[float]) -> str:
    p50, p99 = _p50_p99(samples)
    return f"p50 {p50:5.2f} ms p99 {p99:5.2f} ms"


def _raw_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


# --------------------------------------------------------------------------- vectors


def _make_vectors(rng: np.random.Generator) -> dict[str, Any]:
    kinds, titles, parts = sl.sample_titles(rng, SAMPLE)
    kind_idx = np.array([sl.KINDS.index(k) for k in kinds])
    calib = rng.choice(SAMPLE, CALIBRATION, replace=False)
    calib_texts = [sl.variant(rng, kinds[i], parts[i]) for i in calib]
    query_kinds, queries = sl.query_texts(rng, N_QUERIES, set(titles))

    _embed(["warm up"])
    started = time.perf_counter()
    real = _embed(titles)
    took = time.perf_counter() - started
    near = _embed(calib_texts)
    query_vectors = _embed(queries)
    print(
        f"\nBENCH vectors: real MiniLM for {SAMPLE} sample titles in {took:.1f} s ({SAMPLE / took:.0f} texts/s, "
        f"2 cores); +{CALIBRATION} near-duplicate titles and {N_QUERIES} queries"
    )

    # Each sample title's nearest real neighbours of the same kind (the interpolation partners).
    sims = real @ real.T
    np.fill_diagonal(sims, -2.0)
    sims[kind_idx[:, None] != kind_idx[None, :]] = -2.0
    neighbours = np.argsort(-sims, axis=1)[:, :NEIGHBOURS]
    noise = sl.Noise.fit(real, NOISE_COSINE)

    n_synthetic = N_MAIN + N_SMALL - SAMPLE
    rows_kind = np.concatenate([kind_idx, rng.choice(3, n_synthetic, p=sl.KIND_SHARES)])
    by_kind = [np.flatnonzero(kind_idx == k) for k in range(3)]
    sources = np.empty(n_synthetic, dtype=np.int64)
    for k in range(3):
        where = np.flatnonzero(rows_kind[SAMPLE:] == k)
        sources[where] = rng.choice(by_kind[k], len(where))
    partners = neighbours[sources, rng.integers(0, NEIGHBOURS, n_synthetic)]
    t = rng.uniform(0.0, 1.0, (n_synthetic, 1)).astype(np.float32)
    base = sl.normalize((1 - t) * real[sources] + t * real[partners])
    synthetic = sl.synthesize(rng, base, np.arange(n_synthetic), noise)
    vectors = np.concatenate([real, synthetic])
    row_titles = titles + [sl.variant(rng, kinds[s], parts[s]) for s in sources]

    real_near = (real[calib] * near).sum(axis=1)
    print(
        f"BENCH vectors: real near-duplicates (a sample title with one slot swapped) cos to the original: "
        f"{_spread(real_near)}"
    )
    print(
        f"BENCH vectors: synthetic = normalize((1-t)·s + t·b + n), t~U(0,1), b one of s's {NEIGHBOURS} nearest "
        f"same-kind real titles, n ~ N(0, Σ_real) at cos {NOISE_COSINE}; cos(v, s): "
        f"{_spread((synthetic * real[sources]).sum(axis=1))}"
    )
    subset = synthetic[rng.choice(n_synthetic, SAMPLE, replace=False)]
    probe = min(300, SAMPLE)
    print(
        f"BENCH NN check ({SAMPLE} vectors each) query top-1 cos: real {_spread(sl.nn_cosine(real, query_vectors))}"
        f" | synthetic {_spread(sl.nn_cosine(subset, query_vectors))}"
    )
    print(
        f"BENCH NN check ({SAMPLE} vectors each) item NN cos:     real "
        f"{_spread(sl.nn_cosine(real, real[:probe], exclude_self=True))} | synthetic "
        f"{_spread(sl.nn_cosine(subset, subset[:probe], exclude_self=True))}"
    )
    iso_cos = float(np.clip(np.median(real_near), 0.85, 0.9))
    iso = sl.normalize(
        real[sources[:SAMPLE]]
        + rng.standard_normal((SAMPLE, DIM)).astype(np.float32) * np.float32(np.sqrt((1 / iso_cos**2 - 1) / DIM))
    )
    print(
        f"BENCH NN check isotropic-noise model (cos {iso_cos:.2f} to source, not used): query top-1 "
        f"{_spread(sl.nn_cosine(iso, query_vectors))}; item NN "
        f"{_spread(sl.nn_cosine(iso, iso[:probe], exclude_self=True))}"
    )
    print(f"BENCH NN check all {len(vectors)} vectors: query top-1 cos {_spread(sl.nn_cosine(vectors, query_vectors))}")
    return {
        "vectors": vectors,
        "kinds": rows_kind,
        "titles": row_titles,
        "queries": queries,
        "query_vectors": query_vectors,
        "query_kinds": np.array([sl.KINDS.index(k) for k in query_kinds]),
    }


# --------------------------------------------------------------------------- loading


def _tenants_and_brands() -> tuple[list[uuid.UUID], list[list[uuid.UUID]]]:
    tenants, brands = [], []
    with session_scope() as session:
        for name in ("bench-100k", "bench-2k"):
            tenant = Tenant(id=uuid.uuid4(), name=name)
            session.add(tenant)
            session.flush()
            rows = [Brand(id=uuid.uuid4(), tenant_id=tenant.id, name=f"{name}-brand-{i}") for i in range(N_BRANDS)]
            session.add_all(rows)
            session.flush()
            tenants.append(tenant.id)
            brands.append([b.id for b in rows])
    return tenants, brands


ASSET_COLUMNS = (
    "id, tenant_id, brand_id, kind, title, description, tags, attributes, kpis, sha256, content_type, "
    "width, height, has_alpha, byte_size, storage_key, thumb_key"
)
EMBEDDING_COLUMNS = "id, tenant_id, asset_id, model, modality, dim, embedding, kind, brand_id, tags"
EMBEDDING_TYPES = ["uuid", "uuid", "uuid", "varchar", "varchar", "int4", "vector", "varchar", "uuid", "varchar[]"]


def _copy(url: str, lib: Library, titles: list[str], rng: np.random.Generator) -> float:
    from pgvector.psycopg import register_vector

    started = time.perf_counter()
    ctr = rng.uniform(0.005, 0.05, len(lib.ids))
    with psycopg.connect(url) as conn:
        register_vector(conn)
        with conn.cursor() as cur, cur.copy(f"COPY assets ({ASSET_COLUMNS}) FROM STDIN") as copy:
            for i, asset_id in enumerate(lib.ids):
                tenant = lib.tenants[lib.tenant_of[i]]
                kind = sl.KINDS[lib.kind_of[i]]
                digest = hashlib.sha256(asset_id.bytes).hexdigest()
                words = titles[i].split()
                copy.write_row(
                    (
                        asset_id,
                        tenant,
                        lib.brands[lib.tenant_of[i]][lib.brand_of[i]],
                        kind,
                        titles[i],
                        f"{titles[i]}, shot for the catalogue.",
                        [kind, words[0], words[-1]],
                        Jsonb({"source": "bench"}),
                        Jsonb({"ctr": round(float(ctr[i]), 4)}),
                        digest,
                        "image/png",
                        1024,
                        1024,
                        kind == "product",
                        200_000,
                        f"bench/{digest}.png",
                        f"bench/{digest}-t.png",
                    )
                )
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY asset_embeddings ({EMBEDDING_COLUMNS}) FROM STDIN WITH (FORMAT BINARY)") as copy,
        ):
            copy.set_types(EMBEDDING_TYPES)
            for i, asset_id in enumerate(lib.ids):
                kind = sl.KINDS[lib.kind_of[i]]
                words = titles[i].split()
                copy.write_row(
                    (
                        uuid.uuid4(),
                        lib.tenants[lib.tenant_of[i]],
                        asset_id,
                        lib.model,
                        "text",
                        DIM,
                        lib.vectors[i],
                        kind,
                        lib.brands[lib.tenant_of[i]][lib.brand_of[i]],
                        [kind, words[0], words[-1]],
                    )
                )
    return time.perf_counter() - started


def _watch_parallel_workers(url: str, stop: threading.Event, seen: list[int]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.wait(0.25):
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'parallel worker' "
                "AND datname = current_database()"
            ).fetchone()
            seen.append(int(row[0]) if row else 0)


def _build_index(url: str, model: str) -> tuple[float, dict[str, str]]:
    """The production DDL (search.ensure_space_index) on an engine whose connections carry BUILD_OPTIONS."""
    options = " ".join(f"-c {k}={v}" for k, v in BUILD_OPTIONS.items())
    engine = create_engine(sqlalchemy_url(url), connect_args={"options": options})
    stop, seen = threading.Event(), [0]
    watcher = threading.Thread(target=_watch_parallel_workers, args=(url, stop, seen), daemon=True)
    try:
        with engine.connect() as conn:
            shown = {k: conn.execute(text(f"SHOW {k}")).scalar_one() for k in BUILD_OPTIONS}
        watcher.start()
        started = time.perf_counter()
        search.ensure_space_index(engine, model, DIM, build_memory=BUILD_MEMORY)
        took = time.perf_counter() - started
        shown["parallel workers seen"] = str(max(seen))
        return took, shown
    finally:
        stop.set()
        if watcher.is_alive():
            watcher.join()
        engine.dispose()


@pytest.fixture(scope="module")
def library(stack_urls: dict[str, str]) -> Iterator[Library]:
    from workers.models import text_embedder

    started = time.perf_counter()
    rng = np.random.default_rng(SEED)
    made = _make_vectors(rng)
    rows = N_MAIN + N_SMALL
    tenant_of = np.concatenate([np.zeros(N_MAIN, dtype=np.int64), np.ones(N_SMALL, dtype=np.int64)])
    rng.shuffle(tenant_of)  # real and synthetic rows in both tenants
    with pytest.MonkeyPatch.context() as mp, migrated_db(stack_urls, mp) as db_url:
        url = _raw_url(os.environ.get("ONBRAND_DATABASE_URL", db_url))
        tenants, brands = _tenants_and_brands()
        lib = Library(
            url=url,
            model=text_embedder.model_id(),
            tenants=tenants,
            brands=brands,
            ids=[uuid.UUID(bytes=rng.bytes(16), version=4) for _ in range(rows)],
            vectors=made["vectors"],
            tenant_of=tenant_of,
            kind_of=made["kinds"],
            brand_of=rng.integers(0, N_BRANDS, rows),
            queries=made["queries"],
            query_vectors=made["query_vectors"],
            query_kinds=made["query_kinds"],
            query_brands=rng.integers(0, N_BRANDS, N_QUERIES),
        )
        index = search.space_index_name(lib.model)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP INDEX IF EXISTS {index}")  # load first, build once
        load = _copy(url, lib, made["titles"], rng)
        shares = ", ".join(f"{k} {s:.0%}" for k, s in zip(sl.KINDS, sl.KIND_SHARES, strict=True))
        print(
            f"BENCH load: {rows} assets + {rows} embeddings by COPY in {load:.1f} s "
            f"(tenants {N_MAIN} + {N_SMALL}, {N_BRANDS} brands each, kinds {shares})"
        )
        lib.build_seconds, shown = _build_index(url, lib.model)
        print(
            f"BENCH HNSW build (halfvec(384), m=16, ef_construction=64, CREATE INDEX CONCURRENTLY via "
            f"search.ensure_space_index, build_memory={BUILD_MEMORY}; connection option "
            f"{', '.join(f'{k}={v}' for k, v in shown.items())}): "
            f"{lib.build_seconds:.1f} s for {rows} vectors"
        )
        started_vacuum = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE assets")
            conn.execute("VACUUM ANALYZE asset_embeddings")
            settings = {k: conn.execute(f"SHOW {k}").fetchone()[0] for k in ("shared_buffers", "work_mem")}
        server = ", ".join(f"{k}={v}" for k, v in settings.items())
        print(
            f"BENCH VACUUM ANALYZE {time.perf_counter() - started_vacuum:.1f} s; server {server}; "
            f"setup total {time.perf_counter() - started:.0f} s"
        )
        yield lib


# --------------------------------------------------------------------------- queries


def _search(lib: Library, case: Case, q: int, mode: search.Mode = "vector") -> list[search.Hit]:
    space = search.Space(lib.model, DIM, lib.query_vectors[q].tolist())
    with session_scope() as session:
        return search.search(session, lib.queries[q], lib.filters(case, q), text_space=space, k=K, mode=mode)


def _raw_sql(lib: Library, case: Case, distance: str = "halfvec") -> str:
    cast = f"{distance}({DIM})"
    where = (
        ["e.tenant_id = %(tenant)s"]
        + (["e.kind = %(kind)s"] if case.kind else [])
        + (["e.brand_id = %(brand)s"] if case.brand else [])
    )
    return (
        f"SELECT e.asset_id FROM asset_embeddings e WHERE e.model = '{lib.model}' AND {' AND '.join(where)} "
        f"ORDER BY e.embedding::{cast} <=> %(q)s::{cast} LIMIT {K}"
    )


def _raw_params(lib: Library, case: Case, q: int) -> dict[str, Any]:
    f = lib.filters(case, q)
    return {"tenant": f.tenant_id, "kind": f.kind, "brand": f.brand_id, "q": search.vector_text(lib.query_vectors[q])}


def _run_raw(
    conn: psycopg.Connection, lib: Library, case: Case, ef: int, distance: str = "halfvec"
) -> tuple[list[set[uuid.UUID]], list[float]]:
    """The bare index query with search.search's settings (one set_config round trip), ef_search=ef."""
    statement = _raw_sql(lib, case, distance)
    found, took = [], []
    for q in range(len(lib.queries)):
        params = _raw_params(lib, case, q)
        started = time.perf_counter()
        with conn.transaction():
            conn.execute(
                "SELECT set_config('hnsw.iterative_scan', 'relaxed_order', true), "
                "set_config('hnsw.ef_search', %s, true), "
                "set_config('plan_cache_mode', 'force_custom_plan', true)",
                (str(int(ef)),),
            )
            rows = conn.execute(statement, params).fetchall()
        took.append(time.perf_counter() - started)
        found.append({r[0] for r in rows})
    return found, took


def _recall(found: list[set[uuid.UUID]], exact: Exact) -> float:
    return float(np.mean([len(f & e) / K for f, e in zip(found, exact.ids, strict=True)]))


def _tolerant(lib: Library, found: list[set[uuid.UUID]], exact: Exact) -> float:
    """recall@5 where a hit within TIE cosine of the exact 5th best counts: are the misses near-ties?"""
    return float(
        np.mean([sum(lib.similarity(q, a) >= exact.fifth[q] - TIE for a in hits) / K for q, hits in enumerate(found)])
    )


@dataclass
class Run:
    took: list[float]  # seconds per query
    hits: list[list[search.Hit]]

    @property
    def found(self) -> list[set[uuid.UUID]]:
        return [{h.asset_id for h in hits} for hits in self.hits]


def _measure(lib: Library, case: Case, mode: search.Mode = "vector") -> Run:
    """search.search over every query after a warm-up; checks 5 hits each and no other tenant's asset."""
    others = {lib.ids[i] for i in np.flatnonzero(lib.tenant_of != case.tenant)}
    for q in range(20):  # warm up: plans (psycopg prepares a statement on its 5th run), caches, the pool
        _search(lib, case, q, mode)
    run = Run([], [])
    for q in range(len(lib.queries)):
        started = time.perf_counter()
        hits = _search(lib, case, q, mode)
        run.took.append(time.perf_counter() - started)
        assert len(hits) == K, (case.name, mode, lib.queries[q])
        run.hits.append(hits)
    assert not set().union(*run.found) & others, f"a hit from another tenant ({case.name}, {mode})"
    return run


@dataclass
class Figures:
    vector: tuple[float, float]  # p50, p99 ms
    hybrid: tuple[float, float]
    recall: float


@pytest.fixture(scope="module")
def summary() -> Iterator[dict[str, Figures]]:
    """Filled by the latency test; printed when the module ends, after every other figure."""
    figures: dict[str, Figures] = {}
    yield figures
    if not figures:
        return
    for name, f in figures.items():
        print(
            f"BENCH summary [{name:<25}] vector p50/p99 {f.vector[0]:.2f}/{f.vector[1]:.2f} ms, "
            f"hybrid p50/p99 {f.hybrid[0]:.2f}/{f.hybrid[1]:.2f} ms, recall@5 {f.recall:.3f}"
        )
    slow = [name for name, f in figures.items() if f.vector[1] >= TARGET_P99_MS]
    short = [name for name, f in figures.items() if f.recall < TARGET_RECALL]
    worst_p99 = max(figures.items(), key=lambda item: item[1].vector[1])
    worst_recall = min(figures.items(), key=lambda item: item[1].recall)
    print(
        f"BENCH targets: p99 < {TARGET_P99_MS:.0f} ms (vector mode, every case) "
        f"{'not met (' + ', '.join(slow) + ')' if slow else 'met'}, worst {worst_p99[1].vector[1]:.2f} ms "
        f"[{worst_p99[0]}]; recall@5 >= {TARGET_RECALL} (vector mode, every case) "
        f"{'not met (' + ', '.join(short) + ')' if short else 'met'}, lowest {worst_recall[1].recall:.3f} "
        f"[{worst_recall[0]}]"
    )


def test_search_latency_and_recall(
    library: Library, summary: dict[str, Figures], monkeypatch: pytest.MonkeyPatch
) -> None:
    lib = library
    meets: dict[str, int | None] = {}
    exact = {case: lib.exact(case) for case in CASES}
    print(f"BENCH load average before the queries (2 cores, shared machine): {os.getloadavg()[0]:.1f}")
    print(
        f"BENCH search.search as shipped: CANDIDATES_PER_PART={search.CANDIDATES_PER_PART}, "
        f"EF_SEARCH={search.EF_SEARCH} (ef = max(EF_SEARCH, candidates)), plan_cache_mode=force_custom_plan"
    )
    for case in CASES:
        vector = _measure(lib, case, "vector")
        recall = _recall(vector.found, exact[case])
        rows = int(np.mean([lib.mask(case, q).sum() for q in range(len(lib.queries))]))
        print(
            f"BENCH search.search vector k=5 [{case.name:<25}] ~{rows:>6} rows match: {_ms(vector.took)}  "
            f"recall@5 {recall:.3f} (tie-tolerant {_tolerant(lib, vector.found, exact[case]):.3f})"
        )
        assert recall >= 0.9, (case.name, recall)
        hybrid = _measure(lib, case, "hybrid")
        keyword = float(np.mean([(h.parts.get("keyword") or 0.0) > 0 for hits in hybrid.hits for h in hits]))
        print(
            f"BENCH search.search hybrid k=5 [{case.name:<25}] ~{rows:>6} rows match: {_ms(hybrid.took)}  "
            f"in exact vector top-5 {_recall(hybrid.found, exact[case]):.3f}, hits with a keyword part "
            f"{keyword:.0%}"
        )
        assert keyword > 0, f"hybrid found no keyword match ({case.name}): is assets.search_tsv filled?"
        summary[case.name] = Figures(_p50_p99(vector.took), _p50_p99(hybrid.took), recall)
        with psycopg.connect(lib.url) as conn:
            _run_raw(conn, lib, case, EF_SEARCH[0])  # warm up
            for ef in EF_SEARCH:
                raw_found, raw_took = _run_raw(conn, lib, case, ef)
                raw_recall = _recall(raw_found, exact[case])
                if raw_recall >= TARGET_RECALL and case.name not in meets:
                    meets[case.name] = ef
                print(
                    f"BENCH   raw index query LIMIT 5 ef_search={ef:<3} [{case.name:<25}] {_ms(raw_took)}  "
                    f"recall@5 {raw_recall:.3f}"
                )
        meets.setdefault(case.name, None)
    print(
        "BENCH lowest ef_search with raw recall@5 >= 0.95: "
        + ", ".join(f"{name}: {ef if ef is not None else f'> {EF_SEARCH[-1]}'}" for name, ef in meets.items())
    )

    # What-if: a wider HNSW beam through the same code path.
    with monkeypatch.context() as mp:
        mp.setattr(search, "EF_SEARCH", WHAT_IF_EF)
        for case in CASES:
            run = _measure(lib, case, "vector")
            print(
                f"BENCH what-if search.EF_SEARCH={WHAT_IF_EF} vector [{case.name:<25}] {_ms(run.took)}  "
                f"recall@5 {_recall(run.found, exact[case]):.3f} "
                f"(tie-tolerant {_tolerant(lib, run.found, exact[case]):.3f})"
            )
    print(f"BENCH load average after the queries: {os.getloadavg()[0]:.1f}")


def _capture(run: Callable[[], Any]) -> list[tuple[str, Any]]:
    """search.search's set_config and vector statements (with parameters), caught on the way to the driver."""
    seen: list[tuple[str, Any]] = []

    def catch(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if "set_config" in statement or ("asset_embeddings" in statement and "ORDER BY" in statement):
            seen.append((statement, parameters))

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", catch)
    try:
        run()
    finally:
        event.remove(engine, "before_cursor_execute", catch)
    assert seen and "ORDER BY" in seen[-1][0], "search.search sent no vector query"
    return seen


def _short(line: str) -> str:
    return re.sub(r"'\[[^']*\]'", "'[q]'", line.strip())


def _plan(lib: Library, case: Case) -> list[str]:
    """The plan of search.search's vector CTE for the case's first query, under search.search's own settings
    (replayed in the same transaction), so the custom plan that query gets."""
    statements = _capture(lambda: _search(lib, case, 0))
    *settings, (statement, params) = statements
    with session_scope() as session:
        conn = session.connection()
        for setting, setting_params in settings:
            conn.exec_driver_sql(setting, setting_params)
        lines = [r[0] for r in conn.exec_driver_sql("EXPLAIN " + statement, params)]
    start = next(i for i, line in enumerate(lines) if "CTE vector" in line)
    depth = len(lines[start]) - len(lines[start].lstrip())
    body = lines[start + 1 :]
    end = next((i for i, line in enumerate(body) if len(line) - len(line.lstrip()) <= depth), len(body))
    return [_short(line) for line in body[:end]]


def _which(plan: list[str], index: str) -> str:
    if any(index in line for line in plan):
        return "HNSW index scan"
    scans = [m.group(1) for line in plan if (m := re.search(r"Index Scan (?:using|on) (\w+)", line))]
    return "exact sort of the filtered rows" + (f" (found through {', '.join(scans)})" if scans else "")


def test_plans_use_the_hnsw_index(library: Library) -> None:
    """What each case's query gets: search.search forces custom plans, so the plan for its own parameters.
    The big tenant, unfiltered or by kind, must use HNSW; kind+brand (~1-2 % of the tenant) and the small
    tenant may rightly be served by an exact sort of their rows (ix_asset_embeddings_filters)."""
    lib = library
    index = search.space_index_name(lib.model)
    for case in CASES:
        plan = _plan(lib, case)
        print(f"BENCH plan [{case.name}]: {_which(plan, index)}: " + " | ".join(plan))
        if case.tenant == 0 and not case.brand:
            assert any(index in line for line in plan), (case.name, plan)
        else:
            assert any(index in line for line in plan) or any("Sort" in line for line in plan), (case.name, plan)


def test_index_size_and_full_precision_comparison(library: Library) -> None:
    lib = library
    index = search.space_index_name(lib.model)
    rows = len(lib.ids)
    with psycopg.connect(lib.url, autocommit=True) as conn:
        size = conn.execute("SELECT pg_relation_size(%s::regclass)", (index,)).fetchone()[0]
        table, total = conn.execute(
            "SELECT pg_relation_size('asset_embeddings'), pg_total_relation_size('asset_embeddings')"
        ).fetchone()
        assets = conn.execute("SELECT pg_total_relation_size('assets')").fetchone()[0]
        print(
            f"BENCH sizes: HNSW halfvec index {size / 2**20:.1f} MiB = {size / rows:.0f} B/vector "
            f"(2×384 = 768 B of halfvec + graph and page overhead); asset_embeddings heap {table / 2**20:.1f} MiB "
            f"({table / rows:.0f} B/row, float32 vector inline), with all its indexes {total / 2**20:.1f} MiB; "
            f"assets with indexes {assets / 2**20:.1f} MiB"
        )

        full = "bench_full_precision_hnsw"
        conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (BUILD_MEMORY,))
        for setting, value in BUILD_OPTIONS.items():
            conn.execute("SELECT set_config(%s, %s, false)", (setting, value))
        started = time.perf_counter()
        conn.execute(
            f"CREATE INDEX CONCURRENTLY {full} ON asset_embeddings USING hnsw "
            f"((embedding::vector({DIM})) vector_cosine_ops) WHERE model = '{lib.model}'"
        )
        build = time.perf_counter() - started
        full_size = conn.execute("SELECT pg_relation_size(%s::regclass)", (full,)).fetchone()[0]
    try:
        case = CASES[0]
        exact = lib.exact(case)
        ef = search.EF_SEARCH
        with psycopg.connect(lib.url) as conn:
            plan = [r[0] for r in conn.execute("EXPLAIN " + _raw_sql(lib, case, "vector"), _raw_params(lib, case, 0))]
            assert any(full in line for line in plan), plan
            _run_raw(conn, lib, case, ef, "vector")  # warm up
            full_found, full_took = _run_raw(conn, lib, case, ef, "vector")
            half_found, half_took = _run_raw(conn, lib, case, ef, "halfvec")
        print(
            f"BENCH halfvec vs vector(384) HNSW, raw LIMIT 5, ef_search={ef}, tenant only: build "
            f"{lib.build_seconds:.1f} s vs {build:.1f} s, size {size / 2**20:.1f} vs {full_size / 2**20:.1f} MiB, "
            f"recall@5 {_recall(half_found, exact):.3f} vs {_recall(full_found, exact):.3f}, {_ms(half_took)} vs "
            f"{_ms(full_took)}"
        )
        assert size < full_size
    finally:
        with psycopg.connect(lib.url, autocommit=True) as conn:
            conn.execute(f"DROP INDEX IF EXISTS {full}")
