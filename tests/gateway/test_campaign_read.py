"""GET /v1/campaigns/{id} and GET /v1/brands/{id} read on the event loop (shared.db.aio): the same views as the ORM
path builds, tenant-scoped, and a 503 (not a 500) when Postgres is gone."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from shared.db import session as db_session
from shared.db.models import (
    Campaign,
    CampaignStatus,
    Candidate,
    Feedback,
    FeedbackStatus,
    LlmCall,
    Result,
    ResultDecision,
    ReviewState,
    StageRun,
    StageRunStatus,
)
from tests.factories import Tenant, assert_problem, post_campaign

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def _run(cid: uuid.UUID, tenant: Tenant, stage: str, rnd: int, status: StageRunStatus, item: int = 0) -> StageRun:
    started = T0 + timedelta(seconds=10 * rnd + item)
    finished = started + timedelta(seconds=3) if status != StageRunStatus.RUNNING else None
    return StageRun(
        id=uuid.uuid4(), tenant_id=tenant.id, campaign_id=cid, stage=stage, round=rnd, item=item, status=status,
        started_at=started, finished_at=finished,
    )  # fmt: skip


def _result(cid: uuid.UUID, tenant: Tenant, rnd: int, rank: int, decision: ResultDecision | None) -> list[Any]:
    cand = Candidate(
        id=uuid.uuid4(), tenant_id=tenant.id, campaign_id=cid, layout_key=f"r{rnd}-{rank}", rank=rank,
        image_key=f"t/{cid}/{rnd}-{rank}.png", layer_key=f"t/{cid}/{rnd}-{rank}-layer.png", aesthetic=5.0 + rank / 10,
        placement={"x": 0.1 * rank, "y": 0.2, "scale": 0.5, "canvas": {"width": 1080, "height": 1350}},
        qc={"verdicts": {"fidelity": {"passed": True}}}, integrity={"exact_fraction": 1.0},
    )  # fmt: skip
    result = Result(
        id=uuid.uuid4(), tenant_id=tenant.id, campaign_id=cid, candidate_id=cand.id, review_round=rnd, rank=rank,
        decision=decision, decided_by="key:onb_x" if decision else None, decided_at=T0 if decision else None,
        fully_checked=rank != 2, needs_review=rank == 2, review={"unchecked": ["brand"]} if rank == 2 else {},
    )  # fmt: skip
    return [cand, result]


def _reviewed_campaign(client: TestClient, tenant: Tenant) -> str:
    """A campaign in its second review round: stage runs over three rounds (one running), round 0's results decided
    with feedback, round 1's results, LLM calls: every table the view reads has rows."""
    sizes = [{"width": 1080, "height": 1350}, {"width": 1080, "height": 1080}]
    cid = uuid.UUID(post_campaign(client, tenant, sizes=sizes)["id"])
    with db_session.session_scope() as session:
        campaign = session.get(Campaign, cid)
        campaign.status, campaign.current_stage, campaign.round = CampaignStatus.RUNNING, "qc", 2
        campaign.review_round, campaign.review_state = 1, ReviewState.PENDING
        campaign.state = {"review": {"entry_stage": "generate", "first_round": 2}}
        rows: list[Any] = [
            _run(cid, tenant, "decompose", 0, StageRunStatus.SUCCEEDED),
            _run(cid, tenant, "generate", 0, StageRunStatus.SUCCEEDED),
            _run(cid, tenant, "generate", 2, StageRunStatus.SUCCEEDED, item=0),
            _run(cid, tenant, "generate", 2, StageRunStatus.FAILED, item=1),
            _run(cid, tenant, "qc", 2, StageRunStatus.RUNNING),
            *_result(cid, tenant, 0, 1, ResultDecision.APPROVED),
            *_result(cid, tenant, 0, 2, ResultDecision.REJECTED),
            *_result(cid, tenant, 1, 1, None),
            *_result(cid, tenant, 1, 2, None),
            Feedback(
                id=uuid.uuid4(),
                tenant_id=tenant.id,
                campaign_id=cid,
                review_round=1,
                text="bigger",
                reasons=["scale"],
                reviewer="key:onb_x",
                status=FeedbackStatus.APPLIED,
                change={"scale": 1.2},
                notes=["scale up"],
                router="rules",
                entry_stage="generate",
                first_round=2,
                created_at=T0,
            ),  # fmt: skip
            *[
                LlmCall(
                    id=uuid.uuid4(),
                    tenant_id=tenant.id,
                    campaign_id=cid,
                    stage="decompose",
                    backend="local",
                    model="smollm2",
                    latency_ms=120.5 + i,
                    tokens_in=100 + i,
                    tokens_out=20,
                    cost_usd=0.001 * i or None,
                )  # fmt: skip
                for i in range(3)
            ],
        ]
        for row in rows:
            session.add(row)
            session.flush()  # candidates before the results that name them
    return str(cid)


def _unsigned(view: Any) -> Any:
    """The view with its object URLs' signatures left out: a URL signed in another second expires in another one."""
    if isinstance(view, dict):
        return {
            k: v.split("?")[0] if k.endswith("_url") and isinstance(v, str) else _unsigned(v) for k, v in view.items()
        }
    if isinstance(view, list):
        return [_unsigned(v) for v in view]
    return view


def test_the_status_poll_shows_what_the_orm_path_shows(client: TestClient, acme: Tenant) -> None:
    cid = _reviewed_campaign(client, acme)
    polled = client.get(f"/v1/campaigns/{cid}", headers=acme.auth)
    assert polled.status_code == 200, polled.text
    listed = client.get("/v1/campaigns?status=running&limit=100", headers=acme.auth).json()["items"]
    orm = next(c for c in listed if c["id"] == cid)  # the list page builds its views through the ORM session
    assert _unsigned(polled.json()) == _unsigned(orm)
    assert polled.json()["results"][0]["image_url"].split("?")[0].endswith(".png")
    view = polled.json()
    assert [r["rank"] for r in view["results"]] == [1, 2] and {r["review_round"] for r in view["results"]} == {1}
    assert [(r["review_round"], r["approved"], r["rejected"]) for r in view["review_rounds"]] == [(0, 1, 1), (1, 0, 0)]
    assert view["review_rounds"][1]["feedback"]["text"] == "bigger"
    assert view["llm"]["calls"] == 3 and view["llm"]["tokens_in"] == 303
    generate = next(s for s in view["stages"] if s["stage"] == "generate")
    assert (generate["done"], generate["total"]) == (2, 2)  # round 2 only: the review round entered at generate


def test_another_tenants_campaign_and_brand_are_not_found(client: TestClient, acme: Tenant, globex: Tenant) -> None:
    created = post_campaign(client, acme)
    assert_problem(client.get(f"/v1/campaigns/{created['id']}", headers=globex.auth), 404, "not_found")
    assert_problem(client.get(f"/v1/brands/{created['brand_id']}", headers=globex.auth), 404, "not_found")
    assert client.get(f"/v1/brands/{created['brand_id']}", headers=acme.auth).json()["id"] == created["brand_id"]


def test_a_brand_read_shows_what_the_orm_path_shows(client: TestClient, acme: Tenant) -> None:
    body = {"name": "Kit", "palette": ["#112233"], "guidelines": [{"text": "warm light", "flexible": True}]}
    brand = client.post("/v1/brands", json=body, headers=acme.auth).json()
    listed = client.get("/v1/brands?limit=100", headers=acme.auth).json()["items"]
    assert client.get(f"/v1/brands/{brand['id']}", headers=acme.auth).json() == next(
        b for b in listed if b["id"] == brand["id"]
    )


@pytest.mark.parametrize("path", ["/v1/campaigns/{cid}", "/v1/brands/{bid}"])
def test_reads_answer_503_while_postgres_is_unreachable(
    client: TestClient, acme: Tenant, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    created = post_campaign(client, acme)
    url = path.format(cid=created["id"], bid=created["brand_id"])
    assert client.get(url, headers=acme.auth).status_code == 200  # the pool is open, its connection warm
    import psycopg

    from shared.db import aio

    async def refused(*args: Any, **kwargs: Any) -> Any:
        raise psycopg.OperationalError("connection refused")

    monkeypatch.setattr(aio, "_fetch", refused)
    response = client.get(url, headers=acme.auth)
    assert_problem(response, 503, "database_unavailable")
    assert response.headers.get("Retry-After")


def test_a_read_survives_its_connection_being_killed(client: TestClient, acme: Tenant) -> None:
    """A Postgres restart leaves the pool holding dead connections: the read retries once on a fresh one."""
    created = post_campaign(client, acme)
    url = f"/v1/brands/{created['brand_id']}"
    assert client.get(url, headers=acme.auth).status_code == 200
    with db_session.session_scope() as session:  # every other backend of this database: the read pool's among them
        killed = session.execute(
            text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
            )
        ).scalar_one()
    assert killed >= 1
    assert client.get(url, headers=acme.auth).status_code == 200
