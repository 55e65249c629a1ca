"""Named ad sizes (presets): listed with their safe zones, accepted as a campaign size, resolved to their
pixel size and stored by name; an unknown name is a 422 with its own stable code; results are grouped by
size in the campaign resource and on the review page (in process: TestClient, real Postgres)."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime

from fastapi.testclient import TestClient

from shared.db import session as db_session
from shared.db.models import Campaign, CampaignStatus, Candidate, Result, ReviewState
from shared.presets import PRESETS
from tests.factories import Tenant, assert_problem, make_brand, post_campaign


def test_presets_are_listed_with_sizes_and_safe_zones(client: TestClient, acme: Tenant) -> None:
    response = client.get("/v1/presets", headers=acme.auth)
    assert response.status_code == 200, response.text
    listed = {p["name"]: p for p in response.json()["items"]}
    assert set(listed) == set(PRESETS)
    assert {"meta-feed", "meta-feed-portrait", "story", "reels", "link", "iab-300x250", "iab-728x90"} <= set(listed)
    story = listed["story"]
    assert (story["width"], story["height"]) == (1080, 1920)
    zones = {z["label"]: z for z in story["safe_zones"]}
    # the platform's header (top ~14 %) and reply bar (bottom ~20 %), as canvas fractions
    assert (zones["platform-header"]["y"], zones["platform-header"]["height"]) == (0.0, 0.14)
    assert zones["platform-footer"]["y"] + zones["platform-footer"]["height"] == 1.0
    assert zones["platform-footer"]["height"] == 0.2
    banner = listed["iab-320x50"]
    [badge] = banner["safe_zones"]  # the AdChoices corner: 77x15 px top right
    assert badge["x"] + badge["width"] == 1.0
    assert (round(badge["width"] * 320), round(badge["height"] * 50)) == (77, 15)
    assert listed["link"]["width"] / listed["link"]["height"] > 1.9


def test_presets_need_a_key(client: TestClient) -> None:
    assert_problem(client.get("/v1/presets"), 401, "unauthorized")


def test_a_preset_size_is_resolved_and_stored_by_name(client: TestClient, acme: Tenant) -> None:
    sizes = [{"preset": "iab-728x90"}, {"preset": "story"}, {"preset": "reels"}, {"aspect": "1:1"}]
    created = post_campaign(client, acme, sizes=sizes)
    # IAB sizes are below the 256 px an explicit size needs; reels is story's canvas again, so it counts once
    assert created["request"]["sizes"] == [
        {"preset": "iab-728x90", "width": 728, "height": 90},
        {"preset": "story", "width": 1080, "height": 1920},
        {"aspect": "1:1", "width": 1080, "height": 1080},
    ]
    again = client.get(f"/v1/campaigns/{created['id']}", headers=acme.auth).json()
    assert again["request"]["sizes"] == created["request"]["sizes"]
    groups = again["results_by_size"]  # every requested size is a deliverable, listed before it has results
    assert [(g["size"]["label"], g["delivered"], g["top_k"]) for g in groups] == [
        ("728x90", 0, 3),
        ("1080x1920", 0, 3),
        ("1080x1080", 0, 3),
    ]
    assert groups[1]["size"]["preset"] == "story" and groups[2]["size"]["aspect"] == "1:1"


def test_an_unknown_preset_is_a_422_with_its_own_code(client: TestClient, acme: Tenant) -> None:
    body = {"brand_id": make_brand(client, acme), "brief": "a mug", "sizes": [{"preset": "billboard-96-sheet"}]}
    problem = assert_problem(client.post("/v1/campaigns", json=body, headers=acme.auth), 422, "unknown_preset")
    [error] = problem["errors"]
    assert error["loc"] == ["body", "sizes", 0, "preset"] and error["type"] == "unknown_preset"
    assert "billboard" not in problem["detail"] + error["msg"]  # the input is not echoed


def test_a_preset_with_another_size_is_refused(client: TestClient, acme: Tenant) -> None:
    brand = make_brand(client, acme)
    for size in ({"preset": "story", "width": 1080, "height": 1080}, {"preset": "story", "aspect": "9:16"}):
        body = {"brand_id": brand, "brief": "a mug", "sizes": [size]}
        problem = assert_problem(client.post("/v1/campaigns", json=body, headers=acme.auth), 422, "validation_error")
        assert "give the preset alone" in problem["errors"][0]["msg"]
    # a wrong name next to another invalid field is an ordinary validation error (both are named)
    body = {"brand_id": brand, "brief": "a mug", "sizes": [{"preset": "nope"}], "top_k": 0}
    problem = assert_problem(client.post("/v1/campaigns", json=body, headers=acme.auth), 422, "validation_error")
    assert {e["type"] for e in problem["errors"]} == {"unknown_preset", "greater_than_equal"}


def test_the_openapi_schema_lists_the_preset_names(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    preset = schemas["Size"]["properties"]["preset"]
    names = next(s["enum"] for s in preset["anyOf"] if s.get("type") == "string")
    assert names == list(PRESETS)
    assert schemas["Size"]["additionalProperties"] is False


def _deliver(tenant: Tenant, campaign_id: str, canvases: list[tuple[int, int]]) -> list[str]:
    """Results of a finished campaign, ranked as rank writes them (per size, in the request's size order)."""
    ids = []
    with db_session.session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(campaign_id))
        assert campaign is not None
        campaign.status, campaign.completed_at = CampaignStatus.COMPLETED, datetime.now(UTC)
        campaign.review_state = ReviewState.PENDING
        for rank, (w, h) in enumerate(canvases, start=1):
            placement = {"x": 0, "y": 0, "row": 1, "col": rank, "canvas": {"width": w, "height": h}}
            cand = Candidate(
                id=uuid.uuid4(),
                tenant_id=tenant.id,
                campaign_id=campaign.id,
                layout_key=f"{w}x{h}-r1c{rank}",
                rank=rank,
                placement=placement,
                qc={"verdicts": [], "policy": {"name": "strict", "passed": True}},
                passed=True,
            )
            session.add(cand)
            session.flush()
            result = Result(
                id=uuid.uuid4(), tenant_id=tenant.id, campaign_id=campaign.id, candidate_id=cand.id, rank=rank
            )
            session.add(result)
            ids.append(str(result.id))
    return ids


def test_results_are_grouped_by_size_in_the_resource_and_on_the_review_page(client: TestClient, acme: Tenant) -> None:
    created = post_campaign(client, acme, sizes=[{"preset": "story"}, {"aspect": "1:1"}], top_k=2)
    ids = _deliver(acme, created["id"], [(1080, 1920), (1080, 1920), (1080, 1080), (1080, 1080)])
    campaign = client.get(f"/v1/campaigns/{created['id']}", headers=acme.auth).json()
    sizes = [
        (r["size"]["label"], r["size"].get("preset") or r["size"].get("aspect"), r["size_rank"])
        for r in campaign["results"]
    ]
    assert sizes == [
        ("1080x1920", "story", 1),
        ("1080x1920", "story", 2),
        ("1080x1080", "1:1", 1),
        ("1080x1080", "1:1", 2),
    ]
    groups = [(g["size"]["label"], g["delivered"], g["result_ids"]) for g in campaign["results_by_size"]]
    assert groups == [("1080x1920", 2, ids[:2]), ("1080x1080", 2, ids[2:])]

    link = client.post(f"/v1/campaigns/{created['id']}/review-links", json={"reviewer": "Ann"}, headers=acme.auth)
    assert link.status_code == 201, link.text
    html = client.get(f"/review/{link.json()['token']}").text
    headings = re.findall(r'<h3 class="size-group" data-size="([^"]+)">', html)
    assert headings == ["1080×1920 · story", "1080×1080 · 1:1"]
    story, square = html.split('class="size-group"')[1:]
    assert all(f"results/{i}/decision" in story for i in ids[:2]) and not any(i in story for i in ids[2:])
    assert all(f"results/{i}/decision" in square for i in ids[2:])
