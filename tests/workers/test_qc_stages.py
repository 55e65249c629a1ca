"""The QC, rank and revise loop on a real database and object store, driven in-process.

Tasks the runner sends go to a local queue that this test drains with the real stage functions
(`stage_function`, from the stage table): the same claim → compute → finish path the Celery workers take, minus the
broker. The campaign starts at plan, with a product cut-out and a caption already in its state.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from shared.db.models import Brand, Campaign, Candidate, Result, StageRun, Tenant, WebhookDelivery
from shared.db.session import session_scope
from shared.storage import campaign_key
from tests import stage_outputs as outputs
from workers.checks import rates
from workers.engine import runner
from workers.engine.runner import execute, stage_function
from workers.pipeline.common import save_png

PALETTE = ["#1F6FEB", "#F2CC60"]


@pytest.fixture
def world(fresh_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    from shared.config import get_settings
    from shared.storage import get_storage

    monkeypatch.setenv("ONBRAND_HOME", str(tmp_path))
    monkeypatch.setenv("ONBRAND_LLM_BACKEND", "rules")  # the revise stage's rule clauses: fast, deterministic
    monkeypatch.setenv("ONBRAND_ROTATIONS", "[0]")
    get_settings.cache_clear()
    get_storage.cache_clear()
    queue: list[tuple[Any, ...]] = []
    monkeypatch.setattr(runner, "send", lambda *args: queue.append(args))
    tenant = Tenant(id=uuid.uuid4(), name="acme")
    with session_scope() as session:
        session.add(tenant)
    yield {"tenant_id": tenant.id, "queue": queue}
    get_settings.cache_clear()
    get_storage.cache_clear()


def bottle(w: int = 90, h: int = 200) -> Image.Image:
    """A product with texture and a label, so edges and colours mean something."""
    rng = np.random.default_rng(3)
    arr = np.zeros((h, w, 4), np.uint8)
    arr[:, :, :3] = (40, 120, 70)
    arr[60:120, 10:-10, :3] = (230, 220, 200)
    arr[70:110, 20:-20, :3] = rng.integers(0, 90, (40, w - 40, 3), dtype=np.uint8)
    arr[:, :, 3] = 255
    return Image.fromarray(arr, "RGBA")


SQUARE, WIDE = {"width": 512, "height": 512}, {"width": 640, "height": 360}


def make_campaign(
    world: dict[str, Any],
    thresholds: dict[str, float],
    policy: str = "strict",
    attempts: int = 0,
    revisions: int = 0,
    top_k: int = 3,
    unchecked: str = "review",
    sizes: list[dict[str, int]] | None = None,
) -> uuid.UUID:
    tenant_id = world["tenant_id"]
    brand = Brand(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        name="Stride",
        palette=PALETTE,
        qc_thresholds=thresholds,
        unchecked=unchecked,
        guidelines=[{"text": "the mood feels joyful and warm", "flexible": False, "weight": 1.0}],
    )
    campaign_id = uuid.uuid4()
    cutout = save_png(campaign_key(tenant_id, campaign_id, "segment/cutout.png"), bottle())
    state = {
        "segment": outputs.segment(cutout),
        "scale": outputs.scale(0.45),
        "retrieve": outputs.retrieve(),
        "decompose": outputs.decompose(["bottle"], ["studio"]),
        "caption": outputs.caption("a green bottle in a bright studio", "blurry", subject="a green bottle"),
    }
    with session_scope() as session:
        session.add(brand)
        session.flush()
        session.add(
            Campaign(
                id=campaign_id,
                tenant_id=tenant_id,
                brand_id=brand.id,
                brief="a bottle in a studio",
                sizes=sizes or [SQUARE, WIDE],
                safe_zones=[],
                state=state,
                top_k=top_k,
                qc_policy=policy,
                max_retry_attempts=attempts,
                max_prompt_revisions=revisions,
            )
        )
    return campaign_id


def drive(world: dict[str, Any], campaign_id: uuid.UUID, limit: int = 60) -> Campaign:
    """Run plan and everything it leads to, as the workers would, until the queue is empty."""
    queue = world["queue"]
    queue.append(("onbrand.plan", str(campaign_id), 0, 0))
    for _ in range(limit):
        if not queue:
            break
        name, ident, *rest = queue.pop(0)
        if name != "onbrand.send_webhook":
            stage = name.removeprefix("onbrand.")
            execute(stage, ident, *rest, stage_function(stage))
    assert not queue, "the campaign did not settle"
    with session_scope() as session:
        campaign = session.get(Campaign, campaign_id)
        session.expunge(campaign)
    return campaign


def candidates(campaign_id: uuid.UUID) -> list[Candidate]:
    with session_scope() as session:
        return list(
            session.scalars(
                select(Candidate)
                .where(Candidate.campaign_id == campaign_id)
                .order_by(Candidate.round, Candidate.layout_key)
            )
        )


def stage_runs(campaign_id: uuid.UUID, stage: str) -> list[StageRun]:
    with session_scope() as session:
        return list(
            session.scalars(select(StageRun).where(StageRun.campaign_id == campaign_id, StageRun.stage == stage))
        )


def verdict(cand: Candidate, check: str) -> dict[str, Any]:
    return next(v for v in cand.qc["verdicts"] if v["check"] == check)


def test_every_candidate_carries_its_metrics_verdicts_cluster_and_rank_or_reason(world: dict[str, Any]) -> None:
    campaign = drive(world, make_campaign(world, {}))
    assert campaign.status == "completed", campaign.error
    found = candidates(campaign.id)
    assert len(found) == 18  # 9 cells x 2 canvases, one rotation
    for cand in found:
        metrics = cand.qc["metrics"]
        assert metrics["exact_fraction"] == 1.0 and metrics["delta_e"] == 0.0 and len(metrics["phash"]) == 16
        assert {v["check"] for v in cand.qc["verdicts"]} >= {
            "product_exact",
            "product_edges_msssim",
            "product_colour_delta_e",
            "product_dino",
            "product_in_frame",
            "palette_adherence",
            "product_area",
            "safe_zones_clear",
            "exposure",
            "contrast",
        }
        assert all(v["reason"] for v in cand.qc["verdicts"])
        assert cand.qc["policy"]["name"] == "strict" and cand.qc["cluster"]["id"]
        assert (cand.rank is not None) != bool(cand.excluded_reason)  # a rank, or the reason it has none
    ranked = sorted((c for c in found if c.rank), key=lambda c: c.rank)
    assert [c.rank for c in ranked] == [1, 2, 3, 4, 5, 6]  # top_k in each size: the square's, then the wide's
    for size, chosen in (("512x512", ranked[:3]), ("640x360", ranked[3:])):
        rankable = [
            c
            for c in found
            if c.layout_key.startswith(size) and c.passed and not (c.excluded_reason or "").startswith("near-duplicate")
        ]
        best = sorted(rankable, key=lambda c: -c.aesthetic)
        # exactly the size's top-K of passing, non-duplicate candidates (the diversity rule cannot bite: one rotation)
        assert [c.id for c in chosen] == [c.id for c in best[:3]]
    with session_scope() as session:
        results = session.scalars(
            select(Result.candidate_id).where(Result.campaign_id == campaign.id).order_by(Result.rank)
        ).all()
    assert list(results) == [c.id for c in ranked]


def test_retry_with_a_smaller_product_succeeds_when_the_first_round_is_too_big(world: dict[str, Any]) -> None:
    # Round 0 places the product at 5.1 % of the wide canvas; the retry shrinks it by 0.85 a side, to 3.7 %.
    # (On the square canvas it would go from 9.1 % to 6.6 %, still failing: that size would end partial, as
    # every size is its own deliverable.)
    campaign = drive(world, make_campaign(world, {"area_max": 0.05}, attempts=1, sizes=[WIDE]))
    assert campaign.status == "completed", campaign.error
    found = candidates(campaign.id)
    first = [c for c in found if c.round == 0]
    assert first and not any(c.passed for c in first)
    assert all(verdict(c, "product_area")["status"] == "fail" for c in first)
    assert all(c.excluded_reason and "product_area" in c.excluded_reason for c in first)
    assert {c.round for c in found if c.rank} == {1}
    assert campaign.loop["decided"] == {"0": "attempt", "1": "deliver"}


def test_retry_with_a_larger_product_when_the_first_round_is_too_small(world: dict[str, Any]) -> None:
    # The mirror of the test above: round 0's product is under the floor, so the retry grows it (1/0.85 a side)
    # instead of shrinking it further; the plan's share says so.
    campaign = drive(world, make_campaign(world, {"area_min": 0.1}, attempts=1))
    found = candidates(campaign.id)
    first, second = ([c for c in found if c.round == r] for r in (0, 1))
    assert first and not any(c.passed for c in first) and second
    assert all("convex hull" in verdict(c, "product_area")["reason"] for c in first)
    areas = [max(verdict(c, "product_area")["value"] for c in cands) for cands in (first, second)]
    assert areas[1] > areas[0] * 1.3, areas  # the hull grew by about (1/0.85)^2 = 1.38
    assert campaign.state["plan"]["scale_share"] == round(campaign.state["scale"]["share"] / 0.85, 4)
    assert campaign.loop["decided"]["0"] == "attempt"


def test_bounds_run_out_partial_says_which_checks_kept_candidates_out(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Nothing can pass: every candidate covers more than 1 % of the canvas, and product_area is measured gating.
    monkeypatch.setattr(rates, "MEASURED", {"product_area": rates.CheckRate("product_area", 1.0, 0.0, 40, 100)})
    campaign = drive(world, make_campaign(world, {"area_max": 0.01, "area_min": 0.001}, attempts=1, revisions=1))
    assert campaign.status == "partial"
    assert campaign.error["code"] == "every_candidate_failed_a_gating_check"
    assert campaign.error["blocking"][0]["check"] == "product_area"
    gating = campaign.error["gating"]
    assert [g["check"] for g in gating] == ["product_area"] and gating[0]["failed"] == 72
    example = gating[0]["examples"][0]
    assert example["layout_key"] in campaign.error["message"] and "of the canvas" in example["reason"]
    assert "product_area" in campaign.error["message"] and "4 round(s)" in campaign.error["message"]
    # a smaller retry, a revised caption, a smaller retry of that, then the bounds are spent
    assert campaign.loop["decided"] == {"0": "attempt", "1": "revision", "2": "attempt", "3": "deliver"}
    revise = stage_runs(campaign.id, "revise")
    assert [r.status for r in revise] == ["succeeded"] and revise[0].round == 2
    revision = campaign.state["revisions"][0]
    assert revision["round"] == 2 and revision["previous_caption"] == "a green bottle in a bright studio"
    failures = campaign.state["caption"]["failures"]
    assert failures[0]["guideline"] == "product_area" and failures[0]["count"] == 18
    assert not any(c.passed for c in candidates(campaign.id))
    from services.gateway.campaigns import service  # the report endpoint's service, on the same rows

    with session_scope() as session:
        report = service.report(session, campaign.tenant_id, campaign.id)
    assert report["status"] == "partial" and report["candidates"] == 72 and report["outcomes"] == {"failed": 72}
    assert report["checks"]["product_area"] == {"pass": 0, "fail": 72, "unchecked": 0, "pass_rate": 0.0}
    assert report["blocking"] == campaign.error["blocking"] and report["revisions"][0]["round"] == 2


def test_near_duplicates_are_clustered_and_only_the_best_of_each_is_ranked(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hash distance of 64 links every pair, but the product stands in 9 different cells of each canvas:
    # placement keeps them apart, so the campaign still gets 3 distinct results.
    apart = drive(world, make_campaign(world, {"dup_max_hamming": 64}))
    assert apart.status == "completed" and apart.state["qc"]["duplicates"] == 0
    # With placement ignored (no overlap is too small), the hash makes every candidate of a canvas one
    # cluster: two canvases, two results.
    from workers.checks import duplicates

    monkeypatch.setattr(duplicates, "MIN_BOX_IOU", 0.0)
    campaign = drive(world, make_campaign(world, {"dup_max_hamming": 64}))
    assert campaign.status == "partial"  # 2 distinct results for top_k 3
    found = candidates(campaign.id)
    ranked = [c for c in found if c.rank]
    assert len(ranked) == 2 and {c.placement["canvas"]["width"] for c in ranked} == {512, 640}
    for best in ranked:
        mates = [c for c in found if c.qc["cluster"]["id"] == best.qc["cluster"]["id"] and c is not best]
        assert len(mates) == 8 and best.qc["cluster"]["best"] == best.layout_key
        assert all(m.excluded_reason.startswith(f"near-duplicate of {best.layout_key}") for m in mates)
        assert all(m.aesthetic <= best.aesthetic for m in mates)
    assert campaign.state["qc"]["clusters"] == 2 and campaign.state["qc"]["duplicates"] == 16


def test_weighted_policy_lets_a_light_brand_rule_fail(world: dict[str, Any]) -> None:
    # The palette rule fails everywhere (an impossible share); alone it is 1 of 7+ weighed checks.
    thresholds = {"min_palette_share": 1.0, "palette_radius": 0.01}
    strict = drive(world, make_campaign(world, thresholds, policy="strict"))
    weighted = drive(world, make_campaign(world, thresholds, policy="weighted"))
    assert strict.status == "partial" and weighted.status == "completed"
    for cand in candidates(weighted.id):
        assert verdict(cand, "palette_adherence")["status"] == "fail"
        assert cand.qc["policy"]["weighted_share"] >= 0.75 or not cand.passed


def results_of(campaign_id: uuid.UUID) -> list[Result]:
    with session_scope() as session:
        query = select(Result).where(Result.campaign_id == campaign_id).order_by(Result.rank)
        return list(session.scalars(query))


def payloads(campaign_id: uuid.UUID, event_type: str) -> list[dict[str, Any]]:
    with session_scope() as session:
        query = select(WebhookDelivery.payload).where(
            WebhookDelivery.campaign_id == campaign_id, WebhookDelivery.event_type == event_type
        )
        return list(session.scalars(query))


def with_webhook(campaign_id: uuid.UUID) -> uuid.UUID:
    with session_scope() as session:
        session.get(Campaign, campaign_id).webhook_url = "https://example.com/hooks/onbrand"
    return campaign_id


def test_when_too_few_pass_the_best_advisory_failures_stand_in_flagged(
    world: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # product_area fails everywhere but is not measured (advisory): the loop's one round ends with no passing
    # candidate, so the best three of each size that failed only advisory checks are delivered, flagged, and the
    # campaign says so.
    monkeypatch.setattr(rates, "MEASURED", {})
    campaign = drive(world, with_webhook(make_campaign(world, {"area_max": 0.01, "area_min": 0.001})))
    assert campaign.status == "partial" and campaign.error["code"] == "too_few_passed"
    assert (campaign.error["passed"], campaign.error["fallback"]) == (0, 6)
    assert "6 more delivered flagged needs_review" in campaign.error["message"]
    assert "short in 512x512: 0 of 3, 640x360: 0 of 3" in campaign.error["message"]
    assert "0 of 6 results passed QC" in campaign.error["message"]  # top_k (3) in each of the two sizes
    results = results_of(campaign.id)
    assert len(results) == 6 and all(r.needs_review and not r.fully_checked for r in results)
    for result in results:
        assert result.review["fallback"]
        kinds = {(r["check"], r["kind"]) for r in result.review["reasons"]}
        assert ("product_area", "advisory") in kinds and ("brand_1", "unchecked") in kinds
    found = candidates(campaign.id)
    ranked = [c for c in found if c.rank]
    assert {c.id for c in ranked} == {r.candidate_id for r in results}
    assert all(not c.passed and c.qc["policy"]["fallback"] and c.excluded_reason is None for c in ranked)
    assert len({c.qc["cluster"]["id"] for c in ranked}) == 6  # one per near-duplicate cluster
    rest = [c for c in found if not c.rank]
    assert all("advisory only" in c.excluded_reason for c in rest)
    assert campaign.state["qc"]["fallback"] == 6 and campaign.state["qc"]["needs_review"] == 6
    (event,) = payloads(campaign.id, "campaign.partial")
    assert event["checked"]["fallback"] == 6 and event["checked"]["fully_checked"] == 0
    assert [(r["size"]["label"], r["size_rank"]) for r in event["results"]] == [
        (size, n) for size in ("512x512", "640x360") for n in (1, 2, 3)
    ]
    assert all(r["needs_review"] and r["review"]["fallback"] for r in event["results"])
    assert "advisory: product_area" in event["checked"]["reasons"]


def test_the_brand_says_what_unchecked_means(world: dict[str, Any]) -> None:
    # On the rules backend extra_objects and the brand's written guideline cannot be judged: "unchecked".
    review = drive(world, with_webhook(make_campaign(world, {})))
    assert review.status == "completed"
    results = results_of(review.id)
    assert len(results) == 6 and all(  # top_k in each of the two sizes
        r.needs_review and not r.fully_checked and not r.review["fallback"] for r in results
    )
    for result in results:
        unchecked = {r["check"] for r in result.review["reasons"] if r["kind"] == "unchecked"}
        assert {"extra_objects", "brand_1"} <= unchecked
    (ready,) = payloads(review.id, "campaign.candidates.ready")
    assert ready["fully_checked"] == 0 and ready["needs_review"] == ready["passed"] > 0
    (done,) = payloads(review.id, "campaign.completed")
    assert done["checked"]["needs_review"] == 6 and done["checked"]["fully_checked"] == 0
    assert "0 of 6 result(s) fully checked" in done["checked"]["message"]

    opted = drive(world, make_campaign(world, {}, unchecked="pass"))  # explicit opt-in: unflagged, not "checked"
    assert opted.status == "completed"
    assert all(not r.needs_review and not r.fully_checked for r in results_of(opted.id))

    failing = drive(world, make_campaign(world, {}, unchecked="fail"))  # unchecked counts as a (hard) failure
    assert failing.status == "partial" and results_of(failing.id) == []
    assert failing.error["code"] == "every_candidate_failed_a_gating_check"
    named = {g["check"] for g in failing.error["gating"]}
    assert {"extra_objects (unchecked, counted as failed)", "brand_1 (unchecked, counted as failed)"} <= named
    assert all("unchecked, which this brand counts as failed" in c.excluded_reason for c in candidates(failing.id))
