"""The review API: approve / reject results, the decision history, the campaign's review state and events,
feedback (202, routed after commit), review links (create, list, revoke), Idempotency-Key on every write,
and the brand's on-approval DAM push.

Fixtures `client`, `acme`, `globex`, `sent` are in tests/conftest.py. A delivered campaign is built as
deliver leaves it: status completed, review_state pending, results of review round 0.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, select

from services.gateway.reviews import idempotency, service
from shared.db import session as db_session
from shared.db.models import (
    Campaign,
    CampaignStatus,
    Candidate,
    DamPush,
    DeliveryTarget,
    Feedback,
    FeedbackStatus,
    Result,
    ResultDecision,
    ReviewLink,
    ReviewState,
    WebhookDelivery,
)
from shared.review import Reason
from tests.factories import SentTasks, Tenant, assert_problem, post_campaign

RECEIVER = "https://hooks.example.com/onbrand"


def _delivered(client: TestClient, tenant: Tenant, results: int = 3, **overrides: Any) -> tuple[str, list[str]]:
    """A campaign created through the API, then completed with `results` results as deliver writes them."""
    cid = uuid.UUID(post_campaign(client, tenant, **overrides)["id"])
    ids: list[str] = []
    with db_session.session_scope() as session:
        campaign = session.get(Campaign, cid)
        campaign.status, campaign.completed_at = CampaignStatus.COMPLETED, datetime.now(UTC)
        campaign.review_state = ReviewState.PENDING
        for rank in range(1, results + 1):
            cand = Candidate(id=uuid.uuid4(), tenant_id=tenant.id, campaign_id=cid, layout_key=f"c{rank}", rank=rank)
            session.add(cand)
            session.flush()
            result = Result(id=uuid.uuid4(), tenant_id=tenant.id, campaign_id=cid, candidate_id=cand.id, rank=rank)
            session.add(result)
            ids.append(str(result.id))
    return str(cid), ids


def _events(cid: str) -> list[tuple[str, dict[str, Any]]]:
    with db_session.session_scope() as session:
        rows = session.scalars(
            select(WebhookDelivery)
            .where(WebhookDelivery.campaign_id == uuid.UUID(cid))
            .order_by(WebhookDelivery.created_at, WebhookDelivery.next_attempt_at)
        )
        return [(r.event_type, r.payload) for r in rows]


def _review(client: TestClient, tenant: Tenant, cid: str) -> str | None:
    with db_session.session_scope() as session:
        state = session.get(Campaign, uuid.UUID(cid)).review_state
    return None if state is None else str(state)


def _decide(client: TestClient, tenant: Tenant, cid: str, rid: str, verb: str, **body: Any) -> Any:
    return client.post(f"/v1/campaigns/{cid}/results/{rid}/{verb}", json=body, headers=tenant.auth)


def test_decisions_settle_the_review_and_keep_their_history(
    client: TestClient, acme: Tenant, globex: Tenant, sent: SentTasks
) -> None:
    cid, (r1, r2, r3) = _delivered(client, acme, webhook_url=RECEIVER)
    prefix = acme.key[:12]
    approved = _decide(client, acme, cid, r1, "approve", reviewer="Ann", comment=" lovely ")
    assert approved.status_code == 200, approved.text
    body = approved.json()
    assert body["decision"] == "approved" and body["rank"] == 1 and body["comment"] == "lovely"
    assert body["reviewer"] == f"key:{prefix} (Ann)" and body["review_state"] == "pending"
    assert sent.named("onbrand.learn_ranking")[-1] == (uuid.UUID(_brand_of(client, acme, cid)),)

    assert_problem(_decide(client, acme, cid, r2, "reject"), 422, "reasons_required")
    assert_problem(_decide(client, acme, cid, r2, "reject", reasons=["blurry"]), 422, "validation_error")
    assert _decide(client, acme, cid, r2, "reject", reasons=["background", "scale"]).status_code == 200
    last = _decide(client, acme, cid, r3, "reject", comment="the shadow floats")
    assert last.json()["review_state"] == "approved" and _review(client, acme, cid) == "approved"

    # Re-deciding: the latest wins, the history keeps both; all rejected now, so the review is rejected.
    assert _decide(client, acme, cid, r1, "reject", reasons=["product"]).json()["review_state"] == "rejected"
    again = _decide(client, acme, cid, r1, "approve")
    assert again.json()["review_state"] == "approved"

    types = [t for t, _ in _events(cid) if t.startswith(("result.", "campaign.approved"))]
    assert types == [
        "result.approved",
        "result.rejected",
        "result.rejected",
        "campaign.approved",
        "result.rejected",
        "result.approved",  # approved again in the same review round: no second campaign.approved
    ]
    payloads = dict(_events(cid)[::-1])
    assert payloads["campaign.approved"]["approved"] == [r1] and payloads["campaign.approved"]["review_round"] == 0
    rejected = [p for t, p in _events(cid) if t == "result.rejected"][0]
    assert rejected["result_id"] == r2 and rejected["reasons"] == ["background", "scale"] and rejected["rank"] == 2

    history = client.get(f"/v1/campaigns/{cid}/decisions?limit=4", headers=acme.auth).json()
    assert [(d["result_id"], d["decision"]) for d in history["items"]] == [
        (r1, "approved"),
        (r1, "rejected"),
        (r3, "rejected"),
        (r2, "rejected"),
    ]
    rest = client.get(f"/v1/campaigns/{cid}/decisions?cursor={history['next_cursor']}", headers=acme.auth).json()
    assert [(d["result_id"], d["decision"]) for d in rest["items"]] == [(r1, "approved")] and not rest["next_cursor"]

    view = client.get(f"/v1/campaigns/{cid}", headers=acme.auth).json()
    assert view["review_state"] == "approved" and view["review_round"] == 0
    by_rank = {r["rank"]: r for r in view["results"]}
    assert by_rank[1]["id"] == r1 and by_rank[1]["decision"] == "approved" and by_rank[1]["decided_by"]
    assert by_rank[2]["decision"] == "rejected" and by_rank[1]["review_round"] == 0
    assert view["review_rounds"] == [{"review_round": 0, "feedback": None, "results": 3, "approved": 1, "rejected": 2}]

    # Another tenant sees nothing; a result of another campaign is not this campaign's.
    assert_problem(_decide(client, globex, cid, r1, "approve"), 404, "not_found")
    assert_problem(client.get(f"/v1/campaigns/{cid}/decisions", headers=globex.auth), 404, "not_found")
    other, (o1, *_) = _delivered(client, acme, results=1)
    assert_problem(_decide(client, acme, cid, o1, "approve"), 404, "not_found")


def _brand_of(client: TestClient, tenant: Tenant, cid: str) -> str:
    brand_id: str = client.get(f"/v1/campaigns/{cid}", headers=tenant.auth).json()["brand_id"]
    return brand_id


def test_a_campaign_not_waiting_for_review_refuses_decisions_and_feedback(client: TestClient, acme: Tenant) -> None:
    running = post_campaign(client, acme)["id"]
    assert_problem(
        client.post(f"/v1/campaigns/{running}/feedback", json={"text": "larger"}, headers=acme.auth),
        409,
        "review_not_open",
    )
    cid, (r1, *_) = _delivered(client, acme)
    with db_session.session_scope() as session:  # a result of the previous review round
        campaign = session.get(Campaign, uuid.UUID(cid))
        campaign.review_round = 1
    assert_problem(_decide(client, acme, cid, r1, "approve"), 409, "review_not_open")


def test_feedback_asks_for_a_new_review_round_routed_after_commit(
    client: TestClient, acme: Tenant, globex: Tenant, sent: SentTasks
) -> None:
    cid, _ = _delivered(client, acme, webhook_url=RECEIVER)
    url = f"/v1/campaigns/{cid}/feedback"
    assert_problem(client.post(url, json={"text": "  "}, headers=acme.auth), 422, "feedback_empty")
    assert_problem(client.post(url, json={"text": "x" * 2001}, headers=acme.auth), 422, "validation_error")
    assert_problem(client.post(url, json={"text": "bigger"}, headers=globex.auth), 404, "not_found")
    created = client.post(url, json={"text": "Make the bottle bigger", "reasons": ["scale"]}, headers=acme.auth)
    assert created.status_code == 202, created.text
    feedback = created.json()
    assert feedback["status"] == "routing" and feedback["review_round"] == 1 and feedback["reasons"] == ["scale"]
    assert created.headers["Location"] == feedback["links"]["self"]
    assert sent.named("onbrand.route_feedback") == [(uuid.UUID(feedback["id"]),)]  # committed before the send
    assert _review(client, acme, cid) == "changes_requested"
    event = [p for t, p in _events(cid) if t == "campaign.changes_requested"]
    assert len(event) == 1 and event[0]["feedback_id"] == feedback["id"] and event[0]["text"] == feedback["text"]

    assert_problem(client.post(url, json={"text": "smaller"}, headers=acme.auth), 409, "feedback_exists")
    r1 = client.get(f"/v1/campaigns/{cid}", headers=acme.auth).json()["results"][0]["id"]
    assert_problem(_decide(client, acme, cid, r1, "approve"), 409, "review_not_open")  # a new round is coming
    assert client.get(feedback["links"]["self"].removeprefix("http://testserver"), headers=acme.auth).json() == feedback
    listed = client.get(url, headers=acme.auth).json()["items"]
    assert [f["id"] for f in listed] == [feedback["id"]]
    view = client.get(f"/v1/campaigns/{cid}", headers=acme.auth).json()
    assert view["review_rounds"][1]["feedback"]["id"] == feedback["id"]

    # The router could not use it (state back to pending): the reviewer may say it again.
    with db_session.session_scope() as session:
        row = session.get(Feedback, uuid.UUID(feedback["id"]))
        row.status, row.not_understood = FeedbackStatus.NOT_UNDERSTOOD, ["make it pop"]
        session.get(Campaign, uuid.UUID(cid)).review_state = ReviewState.PENDING
    retried = client.post(url, json={"text": "Place it on the left"}, headers=acme.auth)
    assert retried.status_code == 202 and retried.json()["id"] == feedback["id"]
    assert retried.json()["status"] == "routing" and retried.json()["not_understood"] == []


def test_idempotency_key_replays_the_first_write(client: TestClient, acme: Tenant, sent: SentTasks) -> None:
    cid, (r1, r2, _) = _delivered(client, acme)
    key = {**acme.auth, "Idempotency-Key": f"approve-{uuid.uuid4()}"}
    first = client.post(f"/v1/campaigns/{cid}/results/{r1}/approve", json={"comment": "ok"}, headers=key)
    again = client.post(f"/v1/campaigns/{cid}/results/{r1}/approve", json={"comment": "ok"}, headers=key)
    assert first.status_code == again.status_code == 200
    assert again.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert again.json()["id"] == first.json()["id"]
    assert len(client.get(f"/v1/campaigns/{cid}/decisions", headers=acme.auth).json()["items"]) == 1
    assert len(sent.named("onbrand.learn_ranking")) == 1  # the replay wrote and sent nothing
    other_body = client.post(f"/v1/campaigns/{cid}/results/{r1}/approve", json={"comment": "no"}, headers=key)
    assert_problem(other_body, 422, "idempotency_key_reused")
    other_path = client.post(f"/v1/campaigns/{cid}/results/{r2}/approve", json={"comment": "ok"}, headers=key)
    assert_problem(other_path, 422, "idempotency_key_reused")

    fkey = {**acme.auth, "Idempotency-Key": f"feedback-{uuid.uuid4()}"}
    f1 = client.post(f"/v1/campaigns/{cid}/feedback", json={"reasons": ["lighting"]}, headers=fkey)
    f2 = client.post(f"/v1/campaigns/{cid}/feedback", json={"reasons": ["lighting"]}, headers=fkey)
    assert f1.status_code == f2.status_code == 202 and f1.json() == f2.json()
    assert f2.headers["Idempotent-Replayed"] == "true" and len(sent.named("onbrand.route_feedback")) == 1

    # A failed write stores no key: the same key works once the request can succeed.
    lkey = {**acme.auth, "Idempotency-Key": f"link-{uuid.uuid4()}"}
    bad = client.post(f"/v1/campaigns/{uuid.uuid4()}/review-links", json={"reviewer": "Bo"}, headers=lkey)
    assert_problem(bad, 404, "not_found")
    l1 = client.post(f"/v1/campaigns/{cid}/review-links", json={"reviewer": "Bo"}, headers=lkey)
    l2 = client.post(f"/v1/campaigns/{cid}/review-links", json={"reviewer": "Bo"}, headers=lkey)
    assert l1.status_code == l2.status_code == 201 and l1.json()["token"] == l2.json()["token"]


def test_review_links_are_created_listed_and_revoked(client: TestClient, acme: Tenant, globex: Tenant) -> None:
    cid, _ = _delivered(client, acme)
    url = f"/v1/campaigns/{cid}/review-links"
    for bad in ({"reviewer": ""}, {"reviewer": "a", "expires_in_hours": 0}, {"reviewer": "a", "expires_in_hours": 721}):
        assert_problem(client.post(url, json=bad, headers=acme.auth), 422, "validation_error")
    assert_problem(client.post(url, json={"reviewer": "Eve"}, headers=globex.auth), 404, "not_found")
    created = client.post(url, json={"reviewer": " Dana ", "expires_in_hours": 2}, headers=acme.auth)
    assert created.status_code == 201, created.text
    link = created.json()
    assert link["reviewer"] == "Dana" and link["status"] == "active"
    assert link["url"] == f"http://testserver/review/{link['token']}"
    hours = (datetime.fromisoformat(link["expires_at"]) - datetime.fromisoformat(link["created_at"])).total_seconds()
    assert 2 * 3600 - 5 < hours <= 2 * 3600 + 5
    listed = client.get(url, headers=acme.auth).json()["items"]
    assert [item["id"] for item in listed] == [link["id"]] and "token" not in listed[0] and "url" not in listed[0]

    revoke = f"{url}/{link['id']}/revoke"
    assert_problem(client.post(revoke, headers=globex.auth), 404, "not_found")
    revoked = client.post(revoke, headers=acme.auth)
    assert revoked.status_code == 200 and revoked.json()["status"] == "revoked"
    first_revoked_at = revoked.json()["revoked_at"]
    assert client.post(revoke, headers=acme.auth).json()["revoked_at"] == first_revoked_at  # again: unchanged
    with db_session.session_scope() as session:
        assert session.get(ReviewLink, uuid.UUID(link["id"])).revoked_at is not None
    assert_problem(client.post(f"{url}/{uuid.uuid4()}/revoke", headers=acme.auth), 404, "not_found")


def test_on_approval_brands_push_approved_results_once_approved(
    client: TestClient, acme: Tenant, sent: SentTasks
) -> None:
    brand = client.post("/v1/brands", json={"name": "Careful", "dam_push": "on_approval"}, headers=acme.auth)
    assert brand.status_code == 201 and brand.json()["dam_push"] == "on_approval"
    assert_problem(
        client.post("/v1/brands", json={"name": "x", "dam_push": "never"}, headers=acme.auth), 422, "validation_error"
    )
    brand_id = brand.json()["id"]
    cid, (r1, r2) = _delivered(client, acme, results=2, brand_id=brand_id)
    with db_session.session_scope() as session:
        target = DeliveryTarget(
            tenant_id=acme.id, brand_id=uuid.UUID(brand_id), kind="s3", name="dam", config={"bucket": "b"}
        )
        session.add(target)
    _decide(client, acme, cid, r1, "reject", reasons=["lighting"])
    assert sent.named("onbrand.push_results") == []  # not every result decided yet
    _decide(client, acme, cid, r2, "approve")
    pushes = sent.named("onbrand.push_results")
    assert len(pushes) == 1
    with db_session.session_scope() as session:
        rows = list(session.scalars(select(DamPush).where(DamPush.campaign_id == uuid.UUID(cid))))
        assert [(r.id, r.kind) for r in rows] == [(pushes[0][0], "s3")]
    _decide(client, acme, cid, r1, "approve")  # still approved: pushed once per review round
    assert len(sent.named("onbrand.push_results")) == 1
    patched = client.patch(f"/v1/brands/{brand_id}", json={"dam_push": "on_completion"}, headers=acme.auth)
    assert patched.status_code == 200 and patched.json()["dam_push"] == "on_completion"


def test_the_campaign_page_costs_the_same_queries_for_one_or_many_reviewed_campaigns(
    client: TestClient, acme: Tenant
) -> None:
    for _ in range(3):
        cid, (r1, *_) = _delivered(client, acme, results=2)
        _decide(client, acme, cid, r1, "approve")
        client.post(f"/v1/campaigns/{cid}/feedback", json={"reasons": ["scale"]}, headers=acme.auth)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engine = db_session.get_engine()
    event.listen(engine, "before_cursor_execute", count)
    try:
        sizes = []
        for limit in (1, 3):
            statements.clear()
            page = client.get(f"/v1/campaigns?status=completed&limit={limit}", headers=acme.auth).json()["items"]
            assert len(page) == limit and all(c["review_rounds"] for c in page)
            sizes.append(len(statements))
    finally:
        event.remove(engine, "before_cursor_execute", count)
    assert sizes[0] == sizes[1]


def test_a_decision_reads_what_a_concurrent_one_committed_after_its_request_loaded_the_campaign(
    client: TestClient, acme: Tenant
) -> None:
    """The review page loads the campaign (resolving its link) before deciding: the locked re-read must
    see a decision committed in between, or the review state and event sequence would be stale."""
    cid, (r1, r2) = _delivered(client, acme, results=2, webhook_url=RECEIVER)
    campaign_id = uuid.UUID(cid)
    with db_session.session_scope() as page:
        loaded = page.get(Campaign, campaign_id)
        assert loaded.review_state == ReviewState.PENDING
        with db_session.session_scope() as other:  # another reviewer's request commits first
            service.decide(other, acme.id, campaign_id, uuid.UUID(r1), ResultDecision.APPROVED, [], "", "key:x")
        service.decide(page, acme.id, campaign_id, uuid.UUID(r2), ResultDecision.REJECTED, [Reason.SCALE], "", "y")
        assert loaded.review_state == ReviewState.APPROVED
    events = sorted((p["sequence"], t) for t, p in _events(cid))
    assert [t for _, t in events][-3:] == ["result.approved", "result.rejected", "campaign.approved"]
    assert len({s for s, _ in events}) == len(events)  # every event its own sequence number


def test_a_key_claimed_by_a_concurrent_request_replays_its_write(
    client: TestClient, acme: Tenant, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race the savepoint insert covers: the key was not there when looked up, but a concurrent request
    committed it before our insert; we replay its decision and write nothing."""
    cid, (r1, *_) = _delivered(client, acme, results=2)
    headers = {**acme.auth, "Idempotency-Key": f"race-{uuid.uuid4()}"}
    first = client.post(f"/v1/campaigns/{cid}/results/{r1}/approve", json={}, headers=headers)
    looked_up, calls = idempotency.earlier, []

    def lost_race(*args: Any) -> Any:  # the first look-up ran before the other request committed
        calls.append(args)
        return None if len(calls) == 1 else looked_up(*args)

    monkeypatch.setattr(idempotency, "earlier", lost_race)
    raced = client.post(f"/v1/campaigns/{cid}/results/{r1}/approve", json={}, headers=headers)
    assert raced.status_code == 200 and raced.headers["Idempotent-Replayed"] == "true"
    assert raced.json()["id"] == first.json()["id"]
    assert len(calls) == 2  # missed, then found after the insert failed
    assert len(client.get(f"/v1/campaigns/{cid}/decisions", headers=acme.auth).json()["items"]) == 1
