"""Review rounds in the engine against real Postgres: a routed feedback starts the next review round at the
stage that must change (workers.engine.review), stages the change cannot affect are carried over instead of
run (flow.fan_out), route_feedback is idempotent and says when it understood nothing, feedback left routing is
re-sent or given up on, and the stage readers (retrieve, caption, plan) apply the cumulative change."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from shared.config import Settings
from shared.db.models import (
    Asset,
    Campaign,
    CampaignStatus,
    Feedback,
    FeedbackStatus,
    LlmCall,
    ReviewState,
    StageRun,
    StageRunStatus,
)
from shared.db.session import session_scope
from shared.review import SCALE_STEP, Change
from shared.search import Hit
from shared.storage import campaign_key
from tests import stage_outputs as outputs
from tests.factories import make_campaign
from workers.engine import flow, review, runner
from workers.engine.context import StageContext, StageError, now
from workers.engine.runner import execute
from workers.jobs import feedback as feedback_job
from workers.language.budget import estimate_budget
from workers.language.caption import reviewed
from workers.language.feedback import Routed
from workers.pipeline import caption, plan, retrieve
from workers.pipeline.common import save_png
from workers.pipeline.outputs import RetrieveOutput


def routed(change: Change, not_understood: list[str] | None = None, **more: Any) -> Routed:
    return Routed(change=change, not_understood=not_understood or [], router="rules", notes=[], **more)


@pytest.fixture
def sent(fresh_db: str, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(runner, "send", lambda *args: calls.append(args))
    return calls


@pytest.fixture
def storage_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    from shared.config import get_settings
    from shared.storage import get_storage

    monkeypatch.setenv("ONBRAND_HOME", str(tmp_path))
    get_settings.cache_clear()
    get_storage.cache_clear()
    yield tmp_path
    get_settings.cache_clear()
    get_storage.cache_clear()


def delivered(state: dict[str, Any] | None = None, **loop: Any) -> str:
    """A campaign that delivered review round 0 after stage-run round 2, awaiting review."""
    cid = make_campaign(state or {"retrieve": outputs.retrieve(), "segment": outputs.segment("k")})
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(cid))
        campaign.status, campaign.round, campaign.completed_at = CampaignStatus.COMPLETED, 2, now()
        campaign.review_state = ReviewState.CHANGES_REQUESTED
        campaign.loop = {"attempt": 1, "revision": 1, "decided": {"2": "deliver"}, "announced": ["x"], **loop}
    return cid


def add_feedback(cid: str, text: str = "make the product bigger", age_s: float = 0) -> str:
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(cid))
        row = Feedback(
            tenant_id=campaign.tenant_id,
            campaign_id=campaign.id,
            review_round=campaign.review_round + 1,
            text=text,
            reasons=[],
            reviewer="key:onb_test",
            created_at=now() - timedelta(seconds=age_s),
        )
        session.add(row)
        session.flush()
        return str(row.id)


def start(cid: str, fid: str, change: Change) -> list[tuple[str, str, int, int]]:
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(cid))
        row = session.get(Feedback, uuid.UUID(fid))
        return review.start_round(session, campaign, row, routed(change))


def load(cid: str) -> Campaign:
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(cid))
        session.expunge(campaign)
        return campaign


def runs(cid: str, rnd: int) -> dict[str, StageRun]:
    with session_scope() as session:
        rows = session.scalars(select(StageRun).where(StageRun.campaign_id == uuid.UUID(cid), StageRun.round == rnd))
        found = {r.stage: r for r in rows}
        session.expunge_all()
        return found


def ok(ctx: StageContext) -> dict[str, Any]:
    return {"ok": True}


def planned(ctx: StageContext) -> dict[str, Any]:
    ctx.batches = 1
    return {"ok": True}


# ---------------------------------------------------------------- start_round and the reuse in fan_out


def test_a_scale_change_starts_the_next_review_round_at_plan(sent: list[tuple[Any, ...]]) -> None:
    cid = delivered()
    fid = add_feedback(cid)
    tasks = start(cid, fid, Change(scale_steps=1))
    assert tasks == [("onbrand.plan", cid, 3, 0)]  # a new stage-run round after the last one (2)
    campaign = load(cid)
    assert (campaign.status, campaign.review_round, campaign.round) == ("running", 1, 3)
    assert campaign.completed_at is None and campaign.current_stage == "plan"
    loop = campaign.loop
    assert (loop["attempt"], loop["revision"], loop["pool_from_round"]) == (0, 0, 3)
    assert loop["decided"] == {"2": "deliver"} and loop["announced"] == ["x"]  # history kept, never redone
    record = campaign.state["review"]
    assert record["entry_stage"] == "plan" and record["first_round"] == 3 and record["reused"] == []
    assert record["change"]["scale_steps"] == 1 and record["feedback_id"] == fid
    assert runs(cid, 3)["plan"].status == StageRunStatus.PENDING
    with session_scope() as session:  # what is left to do: plan onward, not the earlier rounds' work
        assert flow.progress(session, session.get(Campaign, uuid.UUID(cid))) == 0.5
    with session_scope() as session:
        row = session.get(Feedback, uuid.UUID(fid))
        assert (row.status, row.entry_stage, row.first_round, row.router) == ("applied", "plan", 3, "rules")
        assert row.change["scale_steps"] == 1 and row.routed_at is not None


def test_changes_accumulate_and_a_qc_change_re_ranks_the_same_pool(sent: list[tuple[Any, ...]]) -> None:
    cid = delivered(pool_from_round=0)
    start(cid, add_feedback(cid), Change(scale_steps=1, placement="left"))
    with session_scope() as session:  # review round 1 delivered at stage-run round 3
        campaign = session.get(Campaign, uuid.UUID(cid))
        campaign.status = CampaignStatus.COMPLETED
    tasks = start(cid, add_feedback(cid, "too strict"), Change(qc=-1))
    campaign = load(cid)
    assert tasks == [("onbrand.rank", cid, 4, 0)] and campaign.review_round == 2
    assert campaign.loop["pool_from_round"] == 3  # the pool the reviewer saw, ranked again
    assert campaign.qc_policy == "flexible"
    change = Change.model_validate(campaign.state["review"]["change"])
    assert (change.scale_steps, change.placement, change.qc) == (1, "left", -1)  # the earlier change holds


def test_a_background_change_reruns_retrieve_and_caption_and_reuses_segment(sent: list[tuple[Any, ...]]) -> None:
    cid = delivered()
    start(cid, add_feedback(cid, "another background"), Change(background_query="a sandy beach"))
    assert execute("retrieve", cid, 3, 0, ok) == "succeeded"
    sent.clear()
    assert execute("caption", cid, 3, 0, ok) == "succeeded"
    carried = runs(cid, 3)["segment"]
    assert carried.status == StageRunStatus.SUCCEEDED
    assert carried.output == {"reused": True, "from_review_round": 0}
    tasks = [s for s in sent if s[0].startswith("onbrand.") and s[0] != "onbrand.send_webhook"]
    assert tasks == [("onbrand.scale", cid, 3, 0)]  # no segment task: the cut-out is the same
    execute("segment", cid, 3, 0, ok)  # a stray segment message is a no-op that re-sends what follows
    assert runs(cid, 3)["segment"].output == {"reused": True, "from_review_round": 0}


def test_reuse_applies_only_from_the_review_rounds_first_round(sent: list[tuple[Any, ...]]) -> None:
    cid = delivered()
    start(cid, add_feedback(cid), Change(caption_add=["a wooden bench"]))
    execute("caption", cid, 2, 0, ok)  # an older round's caption: its segment runs as it did
    assert ("onbrand.segment", cid, 2, 0) in sent and runs(cid, 2)["segment"].status == StageRunStatus.PENDING


# ---------------------------------------------------------------- route_feedback


def test_route_applies_a_change_and_redelivery_resends_only_an_unstarted_round(
    sent: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = delivered()
    fid = add_feedback(cid)
    call = {"backend": "openai", "model": "gpt-x", "tokens_in": 90, "tokens_out": 12, "latency_ms": 8.0}
    monkeypatch.setattr(feedback_job, "_route", lambda pending: routed(Change(scale_steps=1), calls=[call]))
    assert feedback_job.route(fid) == "applied"
    assert sent == [("onbrand.plan", cid, 3, 0)]
    with session_scope() as session:  # the hosted router's cost is the campaign's
        logged = session.scalars(select(LlmCall).where(LlmCall.campaign_id == uuid.UUID(cid))).all()
        assert [(c.stage, c.backend, c.tokens_in) for c in logged] == [("feedback", "openai", 90)]
    sent.clear()
    assert feedback_job.route(fid) == "resent" and sent == [("onbrand.plan", cid, 3, 0)]  # never started
    sent.clear()
    execute("plan", cid, 3, 0, planned)  # the round started: nothing to re-send
    sent.clear()
    assert feedback_job.route(fid) == "skipped" and sent == []


def test_route_passes_the_shown_background_and_marks_nothing_routable_not_understood(
    sent: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    state = {"retrieve": {**outputs.retrieve(), "background_asset_id": "11111111-1111-1111-1111-111111111111"}}
    cid = delivered(state)
    fid = add_feedback(cid, "I feel blue today")
    seen: list[Any] = []

    def router(pending: Any) -> Routed:
        seen.append(pending)
        return routed(Change(), ["I feel blue today"])

    monkeypatch.setattr(feedback_job, "_route", router)
    assert feedback_job.route(fid) == "not_understood" and sent == []
    assert seen[0].background_asset_ids == ["11111111-1111-1111-1111-111111111111"] and seen[0].qc_policy == "strict"
    campaign = load(cid)
    assert campaign.review_state == ReviewState.PENDING and campaign.status == "completed"  # no round started
    with session_scope() as session:
        row = session.get(Feedback, uuid.UUID(fid))
        assert row.status == FeedbackStatus.NOT_UNDERSTOOD and row.not_understood == ["I feel blue today"]


def test_a_router_error_is_recorded_and_raised_then_the_sweep_resends_or_gives_up(
    sent: list[tuple[Any, ...]], monkeypatch: pytest.MonkeyPatch
) -> None:
    cid = delivered()
    fid = add_feedback(cid, age_s=120)

    def down(pending: Any) -> Routed:
        raise ConnectionError("hosted backend unreachable")

    monkeypatch.setattr(feedback_job, "_route", down)
    with pytest.raises(ConnectionError):
        feedback_job.route(fid)
    with session_scope() as session:
        row = session.get(Feedback, uuid.UUID(fid))
        assert row.status == FeedbackStatus.ROUTING and "unreachable" in (row.error or "")
    fresh = add_feedback(delivered())  # just sent: its message may still be queued
    assert runner.resend_routing() == 1 and sent == [("onbrand.route_feedback", fid)]
    with session_scope() as session:
        session.get(Feedback, uuid.UUID(fid)).created_at = now() - timedelta(seconds=runner.FEEDBACK_GIVE_UP_S + 1)
    sent.clear()
    assert runner.resend_routing() == 1 and sent == []
    with session_scope() as session:
        row = session.get(Feedback, uuid.UUID(fid))
        assert row.status == FeedbackStatus.FAILED and "unreachable" in (row.error or "")
        assert session.get(Campaign, uuid.UUID(cid)).review_state == ReviewState.PENDING
        assert session.get(Feedback, uuid.UUID(fresh)).status == FeedbackStatus.ROUTING


# ---------------------------------------------------------------- plan


def stage_context(cid: str, stage: str, state: dict[str, Any], **settings: Any) -> StageContext:
    campaign = load(cid)
    campaign.state = {**campaign.state, **state}
    campaign.sizes = [{"width": 512, "height": 512}]
    return StageContext(campaign, stage, campaign.round, 0, Settings(**settings))


def plan_state(cid: str, change: Change | None) -> dict[str, Any]:
    arr = np.zeros((200, 120, 4), np.uint8)
    arr[:, :, :3], arr[:, :, 3] = (30, 90, 160), 255
    key = save_png(campaign_key(load(cid).tenant_id, uuid.uuid4(), "cutout.png"), Image.fromarray(arr, "RGBA"))
    state: dict[str, Any] = {"segment": outputs.segment(key), "scale": outputs.scale(0.4)}
    if change is not None:
        state["review"] = {"change": change.model_dump(mode="json"), "first_round": 0, "reused": []}
        state["review"] |= {"review_round": 1, "feedback_id": "f", "latest": {}, "entry_stage": "plan"}
        state["review"] |= {"from_review_round": 0}
    return state


def test_plan_grows_the_product_and_keeps_to_the_asked_column_upright(fresh_db: str, storage_home: Path) -> None:
    cid = make_campaign()
    before = stage_context(cid, "plan", plan_state(cid, None))
    plan.run(before)
    change = Change(scale_steps=1, placement="left", rotation=False)
    ctx = stage_context(cid, "plan", plan_state(cid, change))
    summary = plan.run(ctx)
    planned, base = ctx.state_patch["plan"], before.state_patch["plan"]
    assert planned["scale_share"] == pytest.approx(0.4 * SCALE_STEP)
    assert planned["layouts"][0]["scale"] > base["layouts"][0]["scale"]  # the product really placed larger
    assert {(lay["col"], lay["rotation"]) for lay in planned["layouts"]} == {(1, 0.0)}
    assert len(planned["layouts"]) == 3 and len(base["layouts"]) == 27  # 3 rows of the left column, upright
    assert planned["rotations"] == [0.0] and planned["review"] == summary["review"]
    assert planned["review"]["layouts_outside_column"] == 6 and planned["review"]["clamped"] is False


def test_plan_clamps_a_product_grown_past_the_ceiling(fresh_db: str, storage_home: Path) -> None:
    cid = make_campaign()
    ctx = stage_context(cid, "plan", plan_state(cid, Change(scale_steps=4)))
    plan.run(ctx)
    record = ctx.state_patch["plan"]["review"]
    assert record["requested_share"] == pytest.approx(0.4 * SCALE_STEP**4, abs=1e-4) and record["share"] == 0.9
    assert record["clamped"] is True
    layouts = ctx.state_patch["plan"]["layouts"]
    assert all(lay["x"] + lay["width"] <= 512 and lay["y"] + lay["height"] <= 512 for lay in layouts)  # still fits


# ---------------------------------------------------------------- caption


def test_caption_change_adds_and_removes_clauses_within_the_budget() -> None:
    result = {
        "caption": "the running shoe on an urban street with people, golden hour lighting, photo style",
        "negative_prompt": "blurry",
        "guards": {"cut": False},
    }
    out = reviewed(result, ["a wooden bench", "no cars"], ["people", "photo style", "dogs"], estimate_budget())
    assert out["caption"] == "the running shoe on an urban street, golden hour lighting, a wooden bench"
    assert {"people", "photo style", "cars"} <= set(out["negative_prompt"].split(", "))
    assert out["review"]["removed"] == ["people", "photo style"] and out["review"]["not_found"] == ["dogs"]
    assert out["guards"]["tokens"] <= out["guards"]["token_limit"]
    tight = reviewed(result, ["a very long reviewer clause " * 8], [], estimate_budget())
    assert tight["guards"]["tokens"] <= 75 and tight["caption"].startswith("the running shoe")


def test_the_caption_stage_applies_the_change(fresh_db: str) -> None:
    cid = make_campaign()
    state = {
        "decompose": outputs.decompose(["running shoe"], ["urban street"]),
        "retrieve": outputs.retrieve(),
        "review": {
            "change": Change(caption_add=["wet asphalt reflections"]).model_dump(mode="json"),
            "latest": {},
            "first_round": 0,
            "reused": [],
            "review_round": 1,
            "feedback_id": "f",
            "entry_stage": "caption",
            "from_review_round": 0,
        },
    }
    ctx = stage_context(cid, "caption", state, llm_backend="rules")
    summary = caption.run(ctx)
    assert ctx.state_patch["caption"]["caption"].endswith("wet asphalt reflections")
    assert summary["review"]["added"] == ["wet asphalt reflections"]


# ---------------------------------------------------------------- retrieve


def background_asset(cid: str, kind: str = "background") -> str:
    campaign = load(cid)
    asset = Asset(
        tenant_id=campaign.tenant_id,
        brand_id=campaign.brand_id,
        kind=kind,
        title="Sandy beach",
        description="at noon",
        sha256=uuid.uuid4().hex * 2,
        content_type="image/png",
        width=64,
        height=64,
        byte_size=1,
        storage_key="k",
        thumb_key="k",
    )
    with session_scope() as session:
        session.add(asset)
        session.flush()
        return str(asset.id)


def test_retrieve_takes_the_reviewers_background_asset_and_refuses_others(fresh_db: str) -> None:
    cid = make_campaign()
    ctx = stage_context(cid, "retrieve", {})
    found = RetrieveOutput.model_validate(outputs.retrieve())
    beach, shoe = background_asset(cid), background_asset(cid, "product")
    ctx.campaign.state = {"retrieve": {**outputs.retrieve(shoe), "product_asset_ids": [shoe]}}
    kept = retrieve.same_products(found, ctx)  # the products the reviewer saw, whatever the search says now
    assert (kept.product_asset_id, kept.products()) == (shoe, [shoe]) and found.product_asset_id != shoe
    with session_scope() as session:
        out = retrieve.reviewed_background(session, ctx, found, Change(background_asset_id=uuid.UUID(beach)))
        assert out.background_asset_id == beach and out.background_caption == "Sandy beach, at noon"
        assert out.background_reason == "chosen by the reviewer" and out.review["background_asset_id"] == beach
        for asset_id, code in ((shoe, "not_a_background"), (str(uuid.uuid4()), "background_not_found")):
            with pytest.raises(StageError) as refused:
                retrieve.reviewed_background(session, ctx, found, Change(background_asset_id=uuid.UUID(asset_id)))
            assert refused.value.code == code


def test_retrieve_searches_the_reviewers_query_without_the_excluded(
    fresh_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    queries = [("shoe", "product", None), ("street", "background", None), ("summer", "reference", "ctr")]
    change = Change(background_query="a sandy beach")
    assert retrieve.reviewed_queries(queries, change) == [
        ("shoe", "product", None),
        ("summer", "reference", "ctr"),
        ("a sandy beach", "background", None),
    ]
    ids = [uuid.uuid4() for _ in range(7)]
    asked: list[int] = []

    def search(session: Any, q: str, filters: Any, **kw: Any) -> list[Hit]:
        asked.append(kw["k"])
        return [Hit(i, 1.0 - n / 10) for n, i in enumerate(ids[: kw["k"]])]

    monkeypatch.setattr(retrieve, "search", search)
    cid = make_campaign()
    campaign, spaces, excluded = load(cid), (None, None), {str(ids[0])}
    with session_scope() as session:
        got = retrieve.matches(session, campaign, ("beach", "background", None), spaces, excluded)  # type: ignore[arg-type]
        kept = retrieve.matches(session, campaign, ("shoe", "product", None), spaces, excluded)  # type: ignore[arg-type]
    assert [m.asset_id for m in got] == [str(i) for i in ids[1:6]] and asked[0] == 6
    assert kept[0].asset_id == str(ids[0])  # exclusions are backgrounds only
