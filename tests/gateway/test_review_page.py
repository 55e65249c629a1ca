"""The review page in process (TestClient): link errors as HTML pages with the right status, security
headers, the CSRF double-submit check and foreign Origins refused, and the forms without JavaScript
(POST + 303) writing through the review service with the link's reviewer. The browser flow over real
processes is tests/e2e/test_review_page.py.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from services.gateway import review_links
from shared.config import get_settings
from shared.db import session as db_session
from shared.db.models import (
    Campaign,
    CampaignStatus,
    Candidate,
    Feedback,
    FeedbackStatus,
    Result,
    ResultDecision,
    ReviewLink,
    ReviewState,
)
from tests.factories import SentTasks, Tenant, post_campaign

VERDICTS = [
    {"check": "exact_pixels", "status": "pass", "value": 1.0, "threshold": 0.999, "reason": "every pixel"},
    {"check": "product_area", "status": "fail", "value": 0.04, "threshold": 0.05, "reason": "too small"},
    {"check": "brand_palette", "status": "unchecked", "reason": "no palette"},
]


def _delivered(client: TestClient, tenant: Tenant) -> tuple[str, list[str]]:
    """A completed campaign with two results of review round 0 and one left-out candidate."""
    cid = uuid.UUID(post_campaign(client, tenant, brief="the mug on a <b>marble</b> table")["id"])
    ids: list[str] = []
    with db_session.session_scope() as session:
        campaign = session.get(Campaign, cid)
        assert campaign is not None
        campaign.status, campaign.completed_at = CampaignStatus.COMPLETED, datetime.now(UTC)
        campaign.review_state = ReviewState.PENDING
        for rank in (1, 2, None):
            qc = {"verdicts": VERDICTS, "policy": {"name": "strict", "passed": True, "weighted_share": 0.9}}
            cand = Candidate(
                id=uuid.uuid4(),
                tenant_id=tenant.id,
                campaign_id=cid,
                layout_key=f"512x512-r1c{rank or 3}",
                rank=rank,
                qc=qc,
                aesthetic=6.5,
                passed=rank is not None,
                excluded_reason=None if rank else "failed product_area (0.03 < 0.05)",
            )
            session.add(cand)
            session.flush()
            if rank is not None:
                result = Result(id=uuid.uuid4(), tenant_id=tenant.id, campaign_id=cid, candidate_id=cand.id, rank=rank)
                session.add(result)
                ids.append(str(result.id))
    return str(cid), ids


def _link(client: TestClient, tenant: Tenant, cid: str) -> dict[str, Any]:
    response = client.post(f"/v1/campaigns/{cid}/review-links", json={"reviewer": "Ann"}, headers=tenant.auth)
    assert response.status_code == 201, response.text
    return dict(response.json())


def _open(client: TestClient, token: str) -> str:
    """GET the page (which sets the CSRF cookie); the forms' CSRF token."""
    page = client.get(f"/review/{token}")
    assert page.status_code == 200, page.text
    found = re.search(r'name="csrf" value="([0-9a-f]{64})"', page.text)
    assert found, "the forms carry a CSRF token"
    return found.group(1)


def test_page_shows_results_with_security_headers(client: TestClient, acme: Tenant) -> None:
    cid, (r1, r2) = _delivered(client, acme)
    link = _link(client, acme, cid)
    page = client.get(f"/review/{link['token']}")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    html = page.text
    assert "the mug on a &lt;b&gt;marble&lt;/b&gt; table" in html and "<b>marble</b>" not in html  # escaped
    assert f"/review/{link['token']}/results/{r1}/decision" in html and f"results/{r2}/decision" in html
    assert "1 passed · 1 failed · 1 unchecked" in html  # each result's QC verdicts, counted
    assert "failed product_area (0.03 &lt; 0.05)" in html  # the left-out candidate, and why
    assert 'value="composition"' in html and "Composition / placement" in html  # reason chips
    nonce = re.search(r'<script nonce="([^"]+)">', html)
    assert nonce and f"'nonce-{nonce.group(1)}'" in page.headers["content-security-policy"]
    assert "<script src" not in html and "<link " not in html and "https://" not in html  # nothing third-party
    assert page.headers["x-frame-options"] == "DENY" and page.headers["referrer-policy"] == "no-referrer"
    assert page.headers["cache-control"] == "no-store"
    cookie = page.headers["set-cookie"]
    assert cookie.startswith("onbrand_csrf=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Path=/review/" in cookie


def test_forms_work_without_javascript(client: TestClient, acme: Tenant, sent: SentTasks) -> None:
    cid, (r1, r2) = _delivered(client, acme)
    link = _link(client, acme, cid)
    token = link["token"]
    csrf = _open(client, token)
    url = f"/review/{token}/results/{r1}/decision"
    approved = client.post(url, data={"csrf": csrf, "decision": "approved"}, follow_redirects=False)
    assert approved.status_code == 303 and approved.headers["location"] == f"/review/{token}#result-1"
    refused = client.post(
        f"/review/{token}/results/{r2}/decision", data={"csrf": csrf, "decision": "rejected"}, follow_redirects=False
    )
    assert refused.status_code == 422 and "Give a reason or a comment" in refused.text  # the service's words
    rejected = client.post(
        f"/review/{token}/results/{r2}/decision",
        data={"csrf": csrf, "decision": "rejected", "reasons": ["scale", "lighting"]},
        headers={"Accept": "application/json"},
    )
    assert rejected.status_code == 200, rejected.text
    assert rejected.json()["review_state"] == "approved" and rejected.json()["message"] == "Rejected result 2."
    with db_session.session_scope() as session:
        rows = {str(r.id): r for r in session.scalars(select(Result).where(Result.campaign_id == uuid.UUID(cid)))}
        assert rows[r1].decision == ResultDecision.APPROVED and rows[r2].decision == ResultDecision.REJECTED
        assert rows[r1].decided_by == f"link:{link['id']} (Ann)"
    history = client.get(f"/review/{token}").text  # the round's decisions, server-rendered
    assert "Decisions this round" in history and "Scale, Lighting / shadow" in history
    assert "by Ann (review link)" in history  # the link's reviewer, not its id
    sent_feedback = client.post(
        f"/review/{token}/feedback", data={"csrf": csrf, "text": "make the product bigger"}, follow_redirects=False
    )
    assert sent_feedback.status_code == 303 and sent_feedback.headers["location"].endswith("#feedback")
    with db_session.session_scope() as session:
        feedback = session.scalars(select(Feedback).where(Feedback.campaign_id == uuid.UUID(cid))).one()
        assert feedback.text == "make the product bigger" and feedback.review_round == 1
    assert sent.named("onbrand.route_feedback")[-1] == (feedback.id,)
    state = client.get(f"/review/{token}/state").json()
    assert state["review_state"] == "changes_requested" and state["feedback"]["status"] == "routing"


def test_writes_without_the_csrf_token_or_from_another_site_are_refused(client: TestClient, acme: Tenant) -> None:
    cid, (r1, _) = _delivered(client, acme)
    token = _link(client, acme, cid)["token"]
    csrf = _open(client, token)
    url = f"/review/{token}/results/{r1}/decision"
    missing = client.post(url, data={"decision": "approved"})
    assert missing.status_code == 403 and "security token is missing" in missing.text
    forged = client.post(url, data={"decision": "approved", "csrf": "0" * 64})
    assert forged.status_code == 403 and "does not match" in forged.text
    foreign = client.post(url, data={"decision": "approved", "csrf": csrf}, headers={"Origin": "https://evil.example"})
    assert foreign.status_code == 403 and "another site" in foreign.text
    client.cookies.clear()  # the token alone, without the cookie it was made for
    assert client.post(url, data={"decision": "approved", "csrf": csrf}).status_code == 403
    with db_session.session_scope() as session:
        assert session.get(Result, uuid.UUID(r1)).decision is None  # type: ignore[union-attr]


def test_bad_expired_and_revoked_links_get_clear_error_pages(client: TestClient, acme: Tenant) -> None:
    cid, _ = _delivered(client, acme)
    link = _link(client, acme, cid)
    token = link["token"]
    head, expires, signature = token.split(".")
    cases = {
        "garbage": ("not-a-token", 404, "not valid"),
        "forged": (f"{head}.{int(expires) + 3600}.{signature}", 404, "not valid"),  # a longer expiry, same signature
    }
    for name, (bad, status, words) in cases.items():
        page = client.get(f"/review/{bad}")
        assert page.status_code == status and words in page.text, name
        assert page.headers["content-type"].startswith("text/html") and "Traceback" not in page.text
    with db_session.session_scope() as session:  # the link's time is up: its (validly signed) token expired
        row = session.get(ReviewLink, uuid.UUID(link["id"]))
        assert row is not None
        row.expires_at = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
        session.flush()
        expired = review_links.token_for(row, get_settings())
    page = client.get(f"/review/{expired}")
    assert page.status_code == 410 and "has expired" in page.text and "new review link" in page.text
    live = _link(client, acme, cid)
    revoked = client.post(f"/v1/campaigns/{cid}/review-links/{live['id']}/revoke", headers=acme.auth)
    assert revoked.status_code == 200, revoked.text
    page = client.get(f"/review/{live['token']}")
    assert page.status_code == 410 and "was revoked" in page.text
    state = client.get(f"/review/{live['token']}/state", headers={"Accept": "application/json"})
    assert state.status_code == 410 and state.json()["code"] == "review_link_revoked"


def test_the_routed_change_and_what_the_router_did_not_understand_are_shown(client: TestClient, acme: Tenant) -> None:
    cid, _ = _delivered(client, acme)
    token = _link(client, acme, cid)["token"]
    with db_session.session_scope() as session:  # round 2 ran from an applied feedback; round 3's was not understood
        campaign = session.get(Campaign, uuid.UUID(cid))
        assert campaign is not None
        campaign.review_round = 1
        for n, status, change, missed in (
            (1, FeedbackStatus.APPLIED, {"scale_steps": -1, "rotation": False}, []),
            (2, FeedbackStatus.NOT_UNDERSTOOD, {}, ["it lacks pizzazz"]),
        ):
            session.add(
                Feedback(
                    id=uuid.uuid4(),
                    tenant_id=acme.id,
                    campaign_id=campaign.id,
                    review_round=n,
                    text=f"text {n}",
                    reviewer="link:x (Ann)",
                    status=status,
                    change=change,
                    not_understood=missed,
                    entry_stage="plan",
                )
            )
    html = client.get(f"/review/{token}").text
    assert "Round 2: what changed" in html and "product smaller: ×0.80 (-1 step)" in html
    assert "product upright only" in html and "Started again at plan" in html
    assert "could not be turned into a change" in html and "“it lacks pizzazz”" in html
    assert "This round has no results." in html  # round 2's results are not written in this fixture
