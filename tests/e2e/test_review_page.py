"""The review page in a real browser over real processes: Debian's headless chromium (driven by Playwright
through executable_path; no browser download) against the running system (gateway + workers).

One small campaign (top_k 2, 512 px). A reviewer opens the link made through the API, approves one result
with the keyboard, rejects the other with a reason chip, sends "make the product bigger" and sees the next
review round arrive. Expired and revoked links get their error pages, a POST without the CSRF token is
refused, and the page fits a phone. Screenshots at desktop (1280x900) and phone (390x844) widths go to
out/review/ (the README's are copies of a run's).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from playwright.sync_api import Browser, Page, expect, sync_playwright

from services.gateway import review_links
from shared.cli.demo.library import build_library
from shared.cli.demo.run import upload_library
from shared.config import Settings
from shared.db.models import ReviewLink
from tests.factories import BRIEF, api_client, wait_terminal
from tests.system import System

pytestmark = pytest.mark.slow

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
OUT = Path("out/review")
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: `make browser` installs it (apt-get install chromium)")
    with sync_playwright() as pw:
        launched = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def delivered(system: System, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A completed campaign of two results, and a review link for it made through the API."""
    api = api_client(system, system.tenant("review")["api_key"])
    brand = api.post("/v1/brands", json={"name": "Stride", "palette": ["#E4572E", "#17BEBB"]}).json()
    upload_library(api, brand["id"], build_library(tmp_path_factory.mktemp("library")))
    created = api.post(
        "/v1/campaigns",
        json={"brand_id": brand["id"], "brief": BRIEF, "sizes": [{"width": 512, "height": 512}], "top_k": 2},
    )
    assert created.status_code == 202, created.text
    campaign = wait_terminal(api, created.json()["id"], timeout=240)
    assert campaign["status"] == "completed" and len(campaign["results"]) == 2, campaign.get("error")
    return {"api": api, "campaign": campaign}


def _link(delivered: dict[str, Any], reviewer: str = "Ann") -> dict[str, Any]:
    cid = delivered["campaign"]["id"]
    response = delivered["api"].post(f"/v1/campaigns/{cid}/review-links", json={"reviewer": reviewer})
    assert response.status_code == 201, response.text
    return dict(response.json())


def _decision(card: Any) -> Any:
    return card.locator(".decision")


def _no_sideways_scroll(page: Page) -> None:
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")


def test_reviewer_decides_sends_feedback_and_sees_the_next_round(
    browser: Browser, delivered: dict[str, Any], system: System
) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    api, cid = delivered["api"], delivered["campaign"]["id"]
    link = _link(delivered)
    assert link["url"].startswith(system.url + "/review/")
    context = browser.new_context(viewport=DESKTOP)
    page = context.new_page()
    errors: list[str] = []  # script errors, CSP violations, and any failed load but the browser's favicon probe
    page.on(
        "console",
        lambda msg: errors.append(msg.text) if msg.type == "error" and "load resource" not in msg.text else None,
    )
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on(
        "response",
        lambda r: (
            errors.append(f"{r.status} {r.url}") if r.status >= 400 and not r.url.endswith("/favicon.ico") else None
        ),
    )
    response = page.goto(link["url"])
    assert response is not None and response.status == 200
    expect(page.locator("#brief")).to_have_text(BRIEF)
    cards = page.locator(".result")
    expect(cards).to_have_count(2)
    expect(page.locator("#help-line")).to_contain_text("approve")
    for i in range(2):  # every image really loads (signed /files URLs, allowed by the CSP)
        assert cards.nth(i).locator("img").evaluate("img => img.complete && img.naturalWidth === 512")

    page.keyboard.press("?")
    expect(page.locator("#help")).to_be_visible()
    page.keyboard.press("Escape")
    page.keyboard.press("j")  # result 1 selected
    page.keyboard.press("a")  # approved, through fetch, the card updates in place
    expect(_decision(cards.nth(0))).to_have_attribute("data-decision", "approved")
    page.keyboard.press("j")
    page.keyboard.press("r")  # the reject form opens on result 2
    cards.nth(1).locator("label.chip", has_text="Scale").click()
    cards.nth(1).get_by_role("button", name="Reject result 2").click()
    expect(_decision(cards.nth(1))).to_have_attribute("data-decision", "rejected")
    expect(page.locator("#review-state")).to_have_text("approved")  # one approved, every result decided
    body = api.get(f"/v1/campaigns/{cid}").json()
    assert body["review_state"] == "approved"
    assert [r["decision"] for r in body["results"]] == ["approved", "rejected"]
    assert {r["decided_by"] for r in body["results"]} == {f"link:{link['id']} (Ann)"}
    history = api.get(f"/v1/campaigns/{cid}/decisions").json()["items"]
    assert history[0]["reasons"] == ["scale"] and history[0]["decision"] == "rejected"

    page.reload()  # the same decisions, server-rendered
    expect(_decision(cards.nth(0))).to_have_attribute("data-decision", "approved")
    page.screenshot(path=str(OUT / "review-desktop.png"), full_page=True)
    phone = browser.new_context(viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2)
    small = phone.new_page()
    small.goto(link["url"])
    expect(small.locator(".result")).to_have_count(2)
    _no_sideways_scroll(small)
    small.screenshot(path=str(OUT / "review-phone.png"), full_page=False)
    phone.close()

    page.keyboard.press("f")
    page.keyboard.type("make the product bigger")
    page.get_by_role("button", name="Send feedback and start a new round").click()
    expect(page.locator("#flash")).to_contain_text("round 2 is being prepared")
    # The router makes it a scale change; the round regenerates from plan; the page polls and reloads.
    expect(page.locator("#ready")).to_contain_text("Round 2 ready", timeout=120_000)
    assert "ready=2" in page.url
    expect(page.locator("#current-change")).to_contain_text("product larger: ×1.25 (+1 step)")
    expect(page.locator("#current-change")).to_contain_text("make the product bigger")
    expect(page.locator("#round-1")).to_contain_text("#1 approved")  # round 1 and its decisions stay visible
    expect(page.locator("#round-1")).to_contain_text("rejected result 2 · Scale")
    expect(page.locator(".result")).to_have_count(2)
    page.screenshot(path=str(OUT / "review-round-2-desktop.png"), full_page=True)
    assert not errors, errors  # no CSP violation, no script error
    context.close()


def test_expired_and_revoked_links_get_error_pages(browser: Browser, delivered: dict[str, Any], system: System) -> None:
    cid = delivered["campaign"]["id"]
    page = browser.new_page(viewport=DESKTOP)
    revoked = _link(delivered, "Bob")
    assert delivered["api"].post(f"/v1/campaigns/{cid}/review-links/{revoked['id']}/revoke").status_code == 200
    response = page.goto(revoked["url"])
    assert response is not None and response.status == 410
    expect(page.locator("h1")).to_have_text("This review link was revoked")

    expired = _link(delivered, "Cy")  # its row's time set in the past, and a token signed for that time
    past = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    with psycopg.connect(system.env["ONBRAND_DATABASE_URL"]) as conn:
        conn.execute("UPDATE review_links SET expires_at = %s WHERE id = %s", (past, expired["id"]))
    row = ReviewLink(id=uuid.UUID(expired["id"]), expires_at=past)
    token = review_links.token_for(row, Settings(secret_key=system.env.get("ONBRAND_SECRET_KEY", "dev-only-change-me")))
    response = page.goto(f"{system.url}/review/{token}")
    assert response is not None and response.status == 410
    expect(page.locator("h1")).to_have_text("This review link has expired")
    expect(page.locator(".lead")).to_contain_text("Ask the person who sent it for a new review link")
    response = page.goto(expired["url"])  # the original token names another expiry: its signature path says invalid
    assert response is not None and response.status == 404
    expect(page.locator("h1")).to_have_text("This review link is not valid")
    page.close()


def test_a_post_without_the_csrf_token_is_refused(browser: Browser, delivered: dict[str, Any]) -> None:
    link = _link(delivered, "Dee")
    page = browser.new_page(viewport=DESKTOP)
    page.goto(link["url"])
    action = page.locator("form.approve").first.get_attribute("action")
    assert action and re.fullmatch(r"/review/[^/]+/results/[0-9a-f-]{36}/decision", action)
    # The browser holds the CSRF cookie; a form post without the token (what a foreign page could forge)
    status = page.evaluate(
        """async (url) => (await fetch(url, {method: "POST", body: new URLSearchParams({decision: "approved"}),
            headers: {Accept: "application/json"}})).status""",
        action,
    )
    assert status == 403
    page.close()
