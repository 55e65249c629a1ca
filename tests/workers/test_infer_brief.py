"""A campaign without a brief: the brief inferred from its products and its brand's best past campaigns
(workers.language.infer_brief), read from Postgres and published by the decompose stage
(workers.pipeline.brief), and replaced by a reviewer through the feedback's structured `brief`."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from shared.config import Settings
from shared.db.models import (
    Asset,
    Campaign,
    CampaignStatus,
    Candidate,
    Feedback,
    FeedbackStatus,
    Result,
    ResultDecision,
    ReviewState,
)
from shared.db.session import session_scope
from shared.review import Change
from tests.factories import FakeOpenAI, Reply, chat_completion, make_campaign
from workers.engine import runner
from workers.engine.context import StageContext, now
from workers.jobs import feedback as feedback_job
from workers.language import infer_brief as infer
from workers.language.feedback import Routed
from workers.language.rules import rules_decompose
from workers.pipeline import brief as briefs
from workers.pipeline import decompose

RULES = Settings(llm_backend="rules")
MUG = infer.ProductFacts(
    "mug-1",
    title="Ceramic mug - 350 ml",
    description="A stoneware mug for slow mornings. Looks great on a walnut desk.",
    tags=("mug", "kitchen"),
    attributes={"colour": "sage green", "sku": "MG-350"},
)
BARE = infer.ProductFacts("lamp-1", title="Desk lamp", description="", tags=(), attributes={"material": "brass"})


def past(cid: str, scene: str, approved: int, rejected: int, **more: Any) -> infer.PastCampaign:
    fields = {"brief": f"the lamp on {scene}", "theme": None, "mood": None, "copy": None, **more}
    return infer.PastCampaign(
        cid, scene=scene, approved=approved, rejected=rejected, results=approved + rejected, **fields
    )


# ----------------------------------------------------------------------------- rules composer


def test_the_rules_brief_names_the_product_by_title_and_attributes_and_the_described_scene() -> None:
    result = infer.infer_brief([MUG], [], RULES)
    assert result["brief"] == "the sage green Ceramic mug on a walnut desk"
    assert result["backend"] == "rules" and result["fallback_reason"] is None and result["calls"] == []
    product = result["sources"]["products"][0]
    assert product == {"asset_id": "mug-1", "name": "sage green Ceramic mug", "fields": ["title", "attributes.colour"]}
    assert result["sources"]["scene"] == "product:mug-1:description" and result["sources"]["past_campaigns"] == []
    # the copy from the listing; no past campaign carried a CTA
    assert result["copy_suggestions"] == {"headline": "A stoneware mug for slow mornings", "cta": infer.DEFAULT_CTA}
    assert result["sources"]["cta"] == "default" and result["sources"]["headline"] == "product:mug-1:description"
    # the rest of the pipeline reads it as any brief: the decomposer gets the parts back
    parts = rules_decompose(result["brief"])
    assert parts["products"] == ["sage green Ceramic mug"] and parts["backgrounds"] == ["walnut desk"]


def test_a_listing_without_a_place_gets_the_studio_backdrop() -> None:
    result = infer.infer_brief([BARE], [], RULES)
    assert result["brief"] == f"the brass Desk lamp on a {infer.STUDIO_SCENE}"
    assert result["sources"]["scene"] == "default" and result["copy_suggestions"]["headline"] == "Brass Desk lamp"


def test_an_approved_past_campaigns_scene_is_preferred_over_a_rejected_ones() -> None:
    rejected = past("c-rejected", "sandy beach", approved=0, rejected=3, theme="noon")
    approved = past(
        "c-approved",
        "brick wall",
        approved=2,
        rejected=0,
        brief="the lamp against a brick wall at sunset, calm mood",
        theme="sunset",
        mood="calm",
        copy={"headline": "Licht", "cta": "Jetzt kaufen"},
    )
    undecided = past("c-undecided", "oak shelf", approved=0, rejected=0)
    result = infer.infer_brief([MUG], [rejected, undecided, approved], RULES)  # newest first: the rejected one
    assert result["scene"] == "brick wall" and result["theme"] == "sunset" and result["mood"] == "calm"
    # the past brief's own prepositions, and a brief the decomposer splits back into the same parts
    assert result["brief"] == "the sage green Ceramic mug against a brick wall at sunset, calm mood"
    parts = rules_decompose(result["brief"])
    assert (parts["backgrounds"], parts["themes"], parts["mood"]) == (["brick wall"], ["sunset"], "calm")
    ranked = [(p["campaign_id"], p["score"]) for p in result["sources"]["past_campaigns"]]
    assert ranked == [("c-approved", 0.75), ("c-undecided", 0.5), ("c-rejected", 0.2)]
    assert result["sources"]["ranking"] == "approval_rate" and result["sources"]["scene"] == "past_campaign:c-approved"
    assert (
        result["copy_suggestions"]["cta"] == "Jetzt kaufen" and result["sources"]["cta"] == "past_campaign:c-approved"
    )


def test_ranking_takes_any_scorer_and_breaks_ties_by_decisions() -> None:
    one, many = past("one", "stone", approved=1, rejected=1), past("many", "sand", approved=3, rejected=3)
    assert [c.campaign_id for c, _ in infer.best_past([one, many])] == ["many", "one"]  # both 0.5: more decided
    kpi = {"one": 0.9, "many": 0.1}  # a KPI feed plugs in as another scorer

    def by_kpi(c: infer.PastCampaign) -> float:
        return kpi[c.campaign_id]

    assert [c.campaign_id for c, _ in infer.best_past([many, one], by_kpi)] == ["one", "many"]
    assert infer.best_past([past("no-scene", "", 5, 0)]) == []  # nothing to take from it


# ----------------------------------------------------------------------------- model answers


def test_model_answers_are_checked_field_by_field() -> None:
    grounds = "Ceramic mug. Looks great on a walnut desk ; brick wall , sunset"
    good = {"scene": "on a walnut desk", "theme": "sunset", "headline": "Your morning mug", "cta": "Shop now"}
    assert infer.field_errors(good, "ceramic mug", grounds) == {}
    bad = {"scene": "the moon", "theme": "no rain", "headline": "Generate an image of a mug", "cta": "Buy it " * 3}
    errors = infer.field_errors(bad, "ceramic mug", grounds)
    assert set(errors) == {"scene", "theme", "headline", "cta"}
    assert "not in the listing" in errors["scene"] and "negated" in errors["theme"]
    assert "names the product" in infer.field_errors({**good, "scene": "ceramic mug"}, "ceramic mug", grounds)["scene"]
    assert "repeats the scene" in infer.field_errors({**good, "theme": "walnut desk"}, "ceramic mug", grounds)["theme"]


def hosted(fake: FakeOpenAI) -> Settings:
    return Settings(llm_backend="openai", openai_base_url=fake.base_url, openai_api_key="sk-test", llm_max_attempts=1)


def answer(payload: dict[str, Any]) -> Reply:
    return Reply(body=chat_completion(json.dumps(payload)))


def test_a_hosted_answer_is_used_repaired_once_then_replaced_by_the_rules(server: FakeOpenAI) -> None:
    approved = past("c-approved", "brick wall", approved=2, rejected=0, theme="sunset")
    good = {"scene": "brick wall", "theme": "sunset", "headline": "Sage green mornings", "cta": "Shop the mug"}
    server.script(answer(good))
    result = infer.infer_brief([MUG], [approved], hosted(server))
    assert result["backend"] == "openai" and result["prompt_version"] == "infer_brief.v1"
    assert result["brief"] == "the sage green Ceramic mug on a brick wall at sunset"
    assert (
        result["sources"]["scene"] == "past_campaign:c-approved" and result["copy_suggestions"]["cta"] == "Shop the mug"
    )
    user = server.requests[0].body["messages"][-1]["content"]
    assert "walnut desk" in user and '"brick wall, sunset"' in user  # the listing and the past scenes were asked
    server.requests.clear()
    server.script(answer({**good, "scene": "lunar surface"}), answer(good))
    repaired = infer.infer_brief([MUG], [approved], hosted(server))
    assert repaired["scene"] == "brick wall" and [c["attempt"] for c in repaired["calls"]] == ["first", "repair"]
    assert "lunar surface" in server.requests[1].body["messages"][-1]["content"]  # the error was in the re-ask
    server.script(answer({**good, "scene": "lunar surface"}))
    fallen = infer.infer_brief([MUG], [approved], hosted(server))
    assert fallen["backend"] == "rules" and "output invalid twice" in str(fallen["fallback_reason"])
    assert fallen["scene"] == "brick wall" and len(fallen["calls"]) == 2  # the rules composer, the calls kept
    server.script(answer({**good, "theme": "laundry room", "headline": "Brick wall"}))  # the scene, not the product
    patched = infer.infer_brief([MUG], [approved], hosted(server))
    assert patched["backend"] == "openai" and patched["scene"] == "brick wall" and patched["theme"] is None
    assert patched["copy_suggestions"]["headline"] == "A stoneware mug for slow mornings"  # the listing's
    assert patched["sources"]["headline"] == "product:mug-1:description" and patched["sources"]["theme"] is None
    assert "partly invalid" in str(patched["fallback_reason"]) and "does not name the product" in str(
        patched["fallback_reason"]
    )


def test_a_missing_local_model_falls_back_to_the_rules_and_says_so(tmp_path: Any) -> None:
    settings = Settings(llm_backend="local", llm_gguf_path=tmp_path / "absent.gguf")
    result = infer.infer_brief([BARE], [], settings)
    assert result["backend"] == "rules" and "local LLM unavailable" in str(result["fallback_reason"])
    assert result["brief"] == f"the brass Desk lamp on a {infer.STUDIO_SCENE}"


# ----------------------------------------------------------------------------- the stage, on Postgres


def asset(campaign: Campaign, **listing: Any) -> str:
    row = Asset(
        tenant_id=campaign.tenant_id,
        brand_id=campaign.brand_id,
        kind="product",
        sha256=uuid.uuid4().hex * 2,
        content_type="image/png",
        width=64,
        height=64,
        byte_size=1,
        storage_key="k",
        thumb_key="k",
        **listing,
    )
    with session_scope() as session:
        session.add(row)
        session.flush()
        return str(row.id)


def finished(campaign: Campaign, scene: str, decisions: list[ResultDecision | None], brand: bool = True) -> str:
    """A finished campaign (of the same brand, or of another tenant's) with results decided as given."""
    cid = str(uuid.uuid4()) if brand else make_campaign()
    parts = {"brief": f"the lamp on {scene}", "products": ["lamp"], "backgrounds": [scene], "themes": []}
    with session_scope() as session:
        row = session.get(Campaign, uuid.UUID(cid)) if not brand else None
        if row is None:
            row = Campaign(id=uuid.UUID(cid), tenant_id=campaign.tenant_id, brand_id=campaign.brand_id, brief="x")
            session.add(row)
        row.status, row.state, row.sizes = CampaignStatus.COMPLETED, {"decompose": parts}, []
        session.flush()
        for rank, decision in enumerate(decisions, 1):
            cand = Candidate(tenant_id=row.tenant_id, campaign_id=row.id, layout_key=f"k{rank}")
            session.add(cand)
            session.flush()
            session.add(
                Result(tenant_id=row.tenant_id, campaign_id=row.id, candidate_id=cand.id, rank=rank, decision=decision)
            )
    return cid


def brief_less(**listing: Any) -> Campaign:
    cid = make_campaign()
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(cid))
        campaign.brief, campaign.state = "", {briefs.STATE_KEY: {"status": "pending"}}
        session.flush()
        session.expunge(campaign)
    campaign.product_asset_ids = [asset(campaign, **listing)]
    with session_scope() as session:
        session.merge(campaign)
    return campaign


def test_the_stage_infers_from_the_brands_best_campaign_and_publishes_it_as_the_brief(fresh_db: str) -> None:
    campaign = brief_less(title="Desk lamp", attributes={"colour": "black"}, tags=["lamp"])
    A, R = ResultDecision.APPROVED, ResultDecision.REJECTED
    liked = finished(campaign, "brick wall", [A, A, None])
    disliked = finished(campaign, "sandy beach", [R, R, A])
    other_tenant = finished(campaign, "secret garden", [A, A, A, A], brand=False)
    ctx = StageContext(campaign, "decompose", 0, 0, RULES)
    summary = decompose.run(ctx)
    shown = ctx.state_patch[briefs.STATE_KEY]
    assert shown["status"] == "inferred" and shown["brief"] == "the black Desk lamp on a brick wall"
    assert shown["sources"]["scene"] == f"past_campaign:{liked}"
    ranked = [p["campaign_id"] for p in shown["sources"]["past_campaigns"]]
    assert ranked == [liked, disliked] and other_tenant not in ranked  # tenant- and brand-scoped
    assert shown["sources"]["past_campaigns"][0] | {"score": 0} == {
        "campaign_id": liked,
        "score": 0,
        "approved": 2,
        "rejected": 0,
        "results": 3,
        "scene": "brick wall",
        "theme": None,
    }
    assert shown["copy_suggestions"] == {"headline": "Black Desk lamp", "cta": "Shop now", "shown_only": False}
    published = ctx.state_patch["decompose"]
    assert published["brief_source"] == "inferred" and published["brief"] == shown["brief"]
    assert published["products"] == shown["products"] == ["black Desk lamp"]
    assert published["backgrounds"] == ["brick wall"] and summary["brief"] == "inferred"
    assert briefs.creative_copy(campaign) is None  # nothing stored yet: the patch is merged at finish
    campaign.state = {**campaign.state, **ctx.state_patch}
    assert briefs.creative_copy(campaign) == {"headline": "Black Desk lamp", "cta": "Shop now", "legal": None}
    campaign.copy = {"headline": "Own", "cta": "Buy"}
    assert briefs.creative_copy(campaign) == {"headline": "Own", "cta": "Buy"}  # suggestions never replace copy


def test_suggestions_are_only_shown_when_the_campaign_has_copy(fresh_db: str) -> None:
    campaign = brief_less(title="Desk lamp")
    campaign.copy = {"headline": "Mehr Licht", "cta": "Jetzt kaufen"}
    ctx = StageContext(campaign, "decompose", 0, 0, RULES)
    decompose.run(ctx)
    assert ctx.state_patch[briefs.STATE_KEY]["copy_suggestions"]["shown_only"] is True


# ----------------------------------------------------------------------------- the brief change


@pytest.fixture
def sent(fresh_db: str, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []
    monkeypatch.setattr(runner, "send", lambda *args: calls.append(args))
    return calls


def test_a_reviewers_brief_starts_the_next_round_at_decompose_and_replaces_the_inferred_one(
    sent: list[tuple[Any, ...]],
) -> None:
    campaign = brief_less(title="Desk lamp")
    with session_scope() as session:
        row = session.get(Campaign, campaign.id)
        row.status, row.round, row.completed_at = CampaignStatus.COMPLETED, 2, now()
        row.review_state = ReviewState.CHANGES_REQUESTED
        feedback = Feedback(
            tenant_id=row.tenant_id,
            campaign_id=row.id,
            review_round=1,
            text="",
            reasons=[],
            reviewer="key:onb_test",
            change={"brief": "the desk lamp on an oak sideboard at dusk"},  # as the gateway stores it
        )
        session.add(feedback)
        session.flush()
        fid = str(feedback.id)
    assert feedback_job.route(fid) == "applied"
    assert sent == [("onbrand.decompose", str(campaign.id), 3, 0)]
    with session_scope() as session:
        stored = session.get(Feedback, uuid.UUID(fid))
        assert stored.status == FeedbackStatus.APPLIED and stored.entry_stage == "decompose"
        assert stored.change["brief"] == "the desk lamp on an oak sideboard at dusk"
        row = session.get(Campaign, campaign.id)
        session.expunge(row)
    ctx = StageContext(row, "decompose", 3, 0, RULES)
    decompose.run(ctx)
    published = ctx.state_patch["decompose"]
    assert published["brief_source"] == "review" and published["backgrounds"] == ["oak sideboard"]
    assert published["themes"] == ["dusk"] and briefs.STATE_KEY not in ctx.state_patch  # nothing inferred again


def test_free_text_never_changes_the_brief() -> None:
    routed = Routed(
        change=Change(brief="a brief read into text", scale_steps=1), not_understood=[], router="x", notes=[]
    )
    kept = feedback_job.with_brief(routed, None)
    assert kept.change.brief is None and kept.change.scale_steps == 1 and kept.notes == []
    replaced = feedback_job.with_brief(routed, "the lamp on a desk")
    assert replaced.change.brief == "the lamp on a desk" and replaced.change.entry_stage() == "decompose"
    assert Change(brief="a").merged(Change(scale_steps=1)).brief == "a"  # a later round keeps the brief


def test_past_campaigns_read_a_reviewers_background_as_their_scene(fresh_db: str) -> None:
    campaign = brief_less(title="Desk lamp")
    cid = finished(campaign, "urban street", [ResultDecision.APPROVED])
    with session_scope() as session:
        row = session.get(Campaign, uuid.UUID(cid))
        row.state = {**row.state, "review": {"change": {"background_query": "sandy beach"}}}
    ctx = StageContext(campaign, "decompose", 0, 0, RULES)
    found = briefs.past_campaigns(ctx)
    assert [(p.campaign_id, p.scene, p.approved) for p in found] == [(cid, "sandy beach", 1)]
