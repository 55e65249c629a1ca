"""Hybrid search on the labelled evaluation set, in process: real Postgres + pgvector, real MiniLM.

Prints recall@5 and MRR of hybrid vs vector-only vs keyword-only (the figures in the README) and
holds the hybrid ranking to them. Also: the retrieve stage's entity search and tenant isolation.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from shared import search
from shared.db.models import Asset, AssetEmbedding, Brand, Tenant
from shared.db.session import session_scope
from tests import retrieval_eval
from tests.system import migrated_db

pytestmark = pytest.mark.timeout(300)


def _asset(tenant_id: uuid.UUID, brand_id: uuid.UUID | None, spec: dict[str, Any]) -> Asset:
    digest = hashlib.sha256(f"{tenant_id}{spec['key']}".encode()).hexdigest()
    return Asset(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        brand_id=brand_id,
        kind=spec["kind"],
        title=spec["title"],
        description=spec["description"],
        tags=spec["tags"],
        attributes=spec["attributes"],
        kpis=spec["kpis"],
        sha256=digest,
        content_type="image/png",
        width=1,
        height=1,
        has_alpha=False,
        byte_size=1,
        storage_key=f"eval/{digest}.png",
        thumb_key=f"eval/{digest}-t.png",
    )


def _load_tenant(name: str, data: dict[str, Any]) -> tuple[uuid.UUID, dict[str, uuid.UUID], dict[str, str]]:
    """One tenant with the set's brands and assets; (tenant id, brand ids, asset id -> key)."""
    with session_scope() as session:
        tenant = Tenant(id=uuid.uuid4(), name=name)
        session.add(tenant)
        session.flush()
        brands = {b: Brand(id=uuid.uuid4(), tenant_id=tenant.id, name=b) for b in data["brands"]}
        session.add_all(brands.values())
        session.flush()
        assets = [_asset(tenant.id, brands[a["brand"]].id if a["brand"] else None, a) for a in data["assets"]]
        session.add_all(assets)
        keys = {str(a.id): spec["key"] for a, spec in zip(assets, data["assets"], strict=True)}
    return tenant.id, {b: v.id for b, v in brands.items()}, keys


@pytest.fixture(scope="module")
def library(stack_urls: dict[str, str]) -> Iterator[dict[str, Any]]:
    from workers.jobs import library as lib

    data = retrieval_eval.load()
    with pytest.MonkeyPatch.context() as mp, migrated_db(stack_urls, mp):
        tenant_id, brands, keys = _load_tenant("eval", data)
        other_id, _, other_keys = _load_tenant("other", data)  # the same library in another tenant
        assert lib.embed_asset_ids(list(keys) + list(other_keys)) == 2 * len(data["assets"])
        yield {"data": data, "tenant_id": tenant_id, "brands": brands, "keys": keys, "other_keys": other_keys}


def _text_space(q: str) -> search.Space:
    from workers.jobs import library as lib

    text = lib.embed_query(q)["text"]
    return search.Space(text["model"], text["dim"], text["vector"])


def _ranked(lib: dict[str, Any], mode: search.Mode, k: int = 10) -> Any:
    def run(query: dict[str, Any]) -> list[str]:
        brand = lib["brands"][query["brand"]] if query["brand"] else None
        filters = search.Filters(tenant_id=lib["tenant_id"], kind=query["kind"], brand_id=brand)
        with session_scope() as session:
            hits = search.search(session, query["q"], filters, text_space=_text_space(query["q"]), k=k, mode=mode)
        return [lib["keys"][str(h.asset_id)] for h in hits]

    return run


def test_hybrid_beats_each_part_on_the_evaluation_set(library: dict[str, Any]) -> None:
    queries = library["data"]["queries"]
    assert len(library["data"]["assets"]) >= 40 and len(queries) >= 30
    scores = {mode: retrieval_eval.evaluate(queries, _ranked(library, mode)) for mode in search.MODES}
    for mode, score in scores.items():
        print(score.row(mode))
    hybrid = scores["hybrid"]
    assert hybrid.recall_at_5 >= 0.9 and hybrid.mrr >= 0.8
    assert hybrid.recall_at_5 >= max(scores["vector"].recall_at_5, scores["keyword"].recall_at_5)
    assert hybrid.mrr >= max(scores["vector"].mrr, scores["keyword"].mrr) - 0.02


def test_hits_carry_their_parts_and_search_is_tenant_scoped(library: dict[str, Any]) -> None:
    filters = search.Filters(tenant_id=library["tenant_id"])
    with session_scope() as session:
        hits = search.search(
            session, "white leather sneaker", filters, text_space=_text_space("white leather sneaker"), k=20
        )
    assert hits and all(str(h.asset_id) in library["keys"] for h in hits)  # never the other tenant's copy
    top = hits[0]
    assert library["keys"][str(top.asset_id)] == "nw-sneaker-white"
    assert top.parts["vector"] and top.parts["keyword"] and top.parts["image"] is None
    expected = search.WEIGHTS["vector"] * top.parts["vector"] + search.WEIGHTS["keyword"] * top.parts["keyword"]
    assert top.score == pytest.approx(expected, abs=1e-3)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_kpi_boost_lifts_better_performing_references(library: dict[str, Any]) -> None:
    filters = search.Filters(tenant_id=library["tenant_id"], kind="reference")
    space = _text_space("campaign")
    with session_scope() as session:
        plain = search.search(session, "campaign", filters, text_space=space, k=12)
        boosted = search.search(session, "campaign", filters, text_space=space, k=12, boost="ctr")
        ctr = dict(
            session.execute(
                select(Asset.id, Asset.kpis["ctr"].as_float()).where(Asset.id.in_([h.asset_id for h in boosted]))
            ).all()
        )
    assert all(h.parts["kpi"] is None for h in plain)
    best = max(boosted, key=lambda h: ctr[h.asset_id])
    assert best.parts["kpi"] == 1.0
    assert boosted.index(best) < [h.asset_id for h in plain].index(best.asset_id) or boosted[0] is best


def test_filters_and_input_checks(library: dict[str, Any]) -> None:
    filters = search.Filters(tenant_id=library["tenant_id"], kind="background", tags=("beach",))
    with session_scope() as session:
        hits = search.search(session, "sunny", filters, text_space=_text_space("sunny"), k=10)
        tags = session.scalars(
            select(AssetEmbedding.tags).where(AssetEmbedding.asset_id.in_([h.asset_id for h in hits]))
        ).all()
        assert hits and all("beach" in t for t in tags)
        for bad, match in (({"q": " "}, "q"), ({"k": 0}, "k"), ({"mode": "fuzzy"}, "mode")):
            args = {"q": "shoe", "k": 5, "mode": "hybrid", **bad}
            with pytest.raises(ValueError, match=match):
                search.search(session, args["q"], filters, k=args["k"], mode=args["mode"])


def test_retrieve_stage_finds_the_relevant_assets(library: dict[str, Any]) -> None:
    """The retrieve stage's own entity search (brand scope + brand-less assets, top 5) on the same set."""
    from shared.db.models import Campaign
    from workers.pipeline import retrieve

    specs = {a["key"]: a for a in library["data"]["assets"]}
    queries = [q for q in library["data"]["queries"] if q["kind"]]  # the stage always searches one kind
    spaces = retrieve.query_spaces([q["q"] for q in queries])

    def ranked(query: dict[str, Any]) -> list[str]:
        brand = query["brand"] or specs[query["relevant"][0]]["brand"]
        campaign = Campaign(tenant_id=library["tenant_id"], brand_id=library["brands"][brand])
        with session_scope() as session:
            found = retrieve.matches(session, campaign, (query["q"], query["kind"], None), spaces[queries.index(query)])
        return [library["keys"][m.asset_id] for m in found]

    score = retrieval_eval.evaluate(queries, ranked)
    print(score.row("retrieve"))
    assert score.recall_at_5 >= 0.9
