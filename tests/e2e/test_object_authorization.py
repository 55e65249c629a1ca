"""Object-level authorization (BOLA / IDOR) over the running gateway: tenant B replays every route of the
gateway's own /openapi.json with tenant A's ids and gets 404 `not_found`, never 200, 403 or 5xx; B's lists
and searches never show A's objects; nothing B sent changed or removed anything of A's.

Tenant A owns one of everything: a brand with a delivery target, an asset, a campaign (cancelled at once: a
running one would hold the shared workers for a minute), a webhook endpoint with a delivery, a review link,
an API key, and a result with its decision and a feedback. The last three need a delivered campaign (about
a minute of GPU stages on 2 busy cores): they are written to A's campaign in the database instead (marked
delivered and waiting for review), as deliver and the review API would write them; B's campaign the same,
so B's own parent with A's child reaches the child's lookup.

New routes are covered as they appear: a path parameter not in OWNER, or a request body not in BODIES,
fails the test, so an operation cannot be added without saying which of A's objects it reaches.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from shared.db.models import (
    Campaign,
    CampaignStatus,
    Candidate,
    Feedback,
    Result,
    ResultDecision,
    ResultDecisionRecord,
    ReviewState,
)
from shared.db.session import sqlalchemy_url
from tests.factories import api_client, assert_problem
from tests.system import System

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

# Path parameter -> which of A's objects fills it.
OWNER = {
    "brand_id": "brand",
    "asset_id": "asset",
    "campaign_id": "campaign",
    "result_id": "result",
    "feedback_id": "feedback",
    "link_id": "review_link",
    "endpoint_id": "endpoint",
    "delivery_id": "delivery",
    "target_id": "target",
    "key_id": "key",
    "logo_id": "logo",
    "font_id": "font",
}
# Routes outside the API key: capability URLs whose signature is the authorization (a request without one
# is 403 whoever sends it). Any other route with a path parameter must answer B with 404.
SIGNED = {"/files/{key}"}
# A valid body for every operation on an object that takes one: an invalid body would be refused (422)
# before authorization is reached, and the test would prove nothing.
BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("PATCH", "/v1/brands/{brand_id}"): {"name": "Taken"},
    ("PATCH", "/v1/webhook-endpoints/{endpoint_id}"): {"description": "taken"},
    ("POST", "/v1/webhook-endpoints/{endpoint_id}/rotate-secret"): {},
    ("POST", "/v1/brands/{brand_id}/delivery-targets"): {
        "name": "taken",
        "bucket": "taken-bucket",
        "access_key_id": "AKIAIOSFODNN7EXAMPLE",
        "secret_access_key": "secret",
    },
    ("POST", "/v1/campaigns/{campaign_id}/results/{result_id}/approve"): {"comment": "taken"},
    ("POST", "/v1/campaigns/{campaign_id}/results/{result_id}/reject"): {"reasons": ["product"]},
    ("POST", "/v1/campaigns/{campaign_id}/feedback"): {"text": "make it bigger", "reasons": []},
    ("POST", "/v1/campaigns/{campaign_id}/review-links"): {"reviewer": "Mallory"},
    ("POST", "/v1/keys/{key_id}/rotate"): {},
    ("PATCH", "/v1/brands/{brand_id}/kit"): {"text_colors": ["#000000"]},
}
# The same for the multipart uploads: (files, form fields).
FONT = Path(__file__).resolve().parents[2] / "workers" / "creative" / "fonts" / "NotoSans-Regular.ttf"
UPLOADS: dict[tuple[str, str], Callable[[], tuple[dict[str, Any], dict[str, str]]]] = {
    ("POST", "/v1/brands/{brand_id}/kit/logos"): lambda: ({"file": ("logo.png", png(), "image/png")}, {}),
    ("POST", "/v1/brands/{brand_id}/kit/fonts"): lambda: ({"file": ("f.ttf", FONT.read_bytes())}, {"role": "body"}),
}
# Required query parameters of the lists and searches.
QUERY = {"q": "shoe"}
# Nested routes: which parameter is the parent whose id B may own while the child is A's.
PARENTS = ("brand_id", "campaign_id", "endpoint_id")


@dataclass
class Operation:
    method: str
    path: str
    params: list[str]  # path parameters, in order
    secured: bool
    query: list[str]  # required query parameters
    body: bool  # takes a JSON body
    multipart: bool  # takes a multipart/form-data body


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (30, 30, 200)).save(buffer, "PNG")
    return buffer.getvalue()


def operations(system: System) -> list[Operation]:
    schema = httpx.get(f"{system.url}/openapi.json", timeout=30).json()
    found = []
    for path, item in schema["paths"].items():
        for method, op in item.items():
            parameters = op.get("parameters", [])
            found.append(
                Operation(
                    method=method.upper(),
                    path=path,
                    params=[p["name"] for p in parameters if p["in"] == "path"],
                    secured=bool(op.get("security")),
                    query=[p["name"] for p in parameters if p["in"] == "query" and p.get("required")],
                    body="application/json" in op.get("requestBody", {}).get("content", {}),
                    multipart="multipart/form-data" in op.get("requestBody", {}).get("content", {}),
                )
            )
    return found


def created(response: httpx.Response) -> str:
    assert response.status_code in (200, 201, 202), response.text
    return str(response.json()["id"])


def own_everything(api: httpx.Client, name: str) -> dict[str, str]:
    """One of each API-made object for the tenant behind `api`: OWNER's object name -> id."""
    ids = {"brand": created(api.post("/v1/brands", json={"name": f"{name} brand", "palette": ["#112233"]}))}
    metadata = json.dumps({"kind": "product", "title": f"{name} shoe", "brand_id": ids["brand"]})
    upload = api.post("/v1/assets", files={"file": ("p.png", png(), "image/png")}, data={"metadata": metadata})
    ids["asset"] = created(upload)
    campaign = api.post("/v1/campaigns", json={"brand_id": ids["brand"], "brief": "a shoe", "top_k": 1})
    ids["campaign"] = created(campaign)
    cancelled = api.post(f"/v1/campaigns/{ids['campaign']}/cancel")
    assert cancelled.status_code in (200, 202, 409), cancelled.text  # 409: it already ended
    ids["endpoint"] = created(api.post("/v1/webhook-endpoints", json={"url": "http://127.0.0.1:9/hook"}))
    ids["delivery"] = created(api.post(f"/v1/webhook-endpoints/{ids['endpoint']}/test"))
    target = {**BODIES[("POST", "/v1/brands/{brand_id}/delivery-targets")], "name": f"{name} target"}
    ids["target"] = created(api.post(f"/v1/brands/{ids['brand']}/delivery-targets", json=target))
    link = api.post(f"/v1/campaigns/{ids['campaign']}/review-links", json={"reviewer": name})
    ids["review_link"] = created(link)
    ids["key"] = created(api.post("/v1/keys", json={"name": f"{name} ci", "scopes": ["read"]}))
    for kind in ("logo", "font"):
        files, data = UPLOADS[("POST", f"/v1/brands/{{brand_id}}/kit/{kind}s")]()
        ids[kind] = created(api.post(f"/v1/brands/{ids['brand']}/kit/{kind}s", files=files, data=data))
    return ids


def seed_review(system: System, tenant_id: str, campaign_id: str) -> dict[str, str]:
    """The campaign delivered and waiting for review, with a result (of a candidate), a decision on it and
    a feedback, as deliver and the review API write them: so a route that forgot the tenant would act
    (200), not stop at a cancelled campaign (409)."""
    engine = create_engine(sqlalchemy_url(system.env["ONBRAND_DATABASE_URL"]))
    tenant, campaign_id_ = uuid.UUID(tenant_id), uuid.UUID(campaign_id)
    try:
        with Session(engine) as session, session.begin():
            campaign = session.get_one(Campaign, campaign_id_)
            campaign.status, campaign.review_state = CampaignStatus.COMPLETED, ReviewState.PENDING
            candidate = Candidate(tenant_id=tenant, campaign_id=campaign.id, layout_key="1024x1024-r0c0-p15")
            session.add(candidate)
            session.flush()
            result = Result(tenant_id=tenant, campaign_id=campaign.id, candidate_id=candidate.id, rank=1)
            session.add(result)
            session.flush()
            record = ResultDecisionRecord(
                tenant_id=tenant, campaign_id=campaign.id, result_id=result.id, review_round=0, reviewer="seed"
            )
            record.decision = ResultDecision.APPROVED
            feedback = Feedback(tenant_id=tenant, campaign_id=campaign.id, review_round=1, text="x", reviewer="seed")
            session.add_all([record, feedback])
            session.flush()
            return {"result": str(result.id), "feedback": str(feedback.id)}
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def tenants(system: System) -> Iterator[tuple[httpx.Client, dict[str, str], httpx.Client, dict[str, str]]]:
    """(A's client, A's ids, B's client, B's ids)."""
    a, b = system.tenant("owner-a"), system.tenant("intruder-b")
    api_a, api_b = api_client(system, a["api_key"]), api_client(system, b["api_key"])
    ids_a = own_everything(api_a, "A")
    ids_a |= seed_review(system, a["tenant_id"], ids_a["campaign"])
    ids_b = own_everything(api_b, "B")
    ids_b |= seed_review(system, b["tenant_id"], ids_b["campaign"])  # B's parent reaches the child lookup
    yield api_a, ids_a, api_b, ids_b
    api_a.close()
    api_b.close()


def fill(op: Operation, ids: dict[str, str], mine: dict[str, str] | None = None) -> str:
    """The operation's URL with each path parameter A's object's id (or, for the parents in `mine`, B's)."""
    url = op.path
    for name in op.params:
        assert name in OWNER, f"{op.method} {op.path}: no object of A's for {{{name}}}: add it to OWNER"
        value = (mine or {}).get(name) or ids[OWNER[name]]
        url = url.replace(f"{{{name}}}", value)
    return url


def call(api: httpx.Client, op: Operation, url: str) -> httpx.Response:
    body = BODIES.get((op.method, op.path))
    assert body is not None or not op.body or op.method == "GET", f"{op.method} {op.path}: add a valid body to BODIES"
    upload = UPLOADS.get((op.method, op.path))
    assert upload is not None or not op.multipart, f"{op.method} {op.path}: add a valid upload to UPLOADS"
    files, data = upload() if upload else (None, None)
    # B behaves as a client should at the production rate limits (5 writes/s per key): it waits out a 429
    for _ in range(10):
        params = {q: QUERY[q] for q in op.query}
        response = api.request(op.method, url, params=params, json=body, files=files, data=data)
        if response.status_code != 429:
            return response
        time.sleep(float(response.headers["Retry-After"]))
    return response


def test_tenant_b_gets_404_for_every_route_with_an_id_of_tenant_a(
    system: System, tenants: tuple[httpx.Client, dict[str, str], httpx.Client, dict[str, str]]
) -> None:
    api_a, ids_a, api_b, ids_b = tenants
    started = time.monotonic()
    ops = operations(system)
    with_ids = [op for op in ops if op.params and op.path not in SIGNED]
    assert len(with_ids) >= 30, [op.path for op in ops]  # the document is the gateway's, not an empty one
    wrong = []
    for op in with_ids:
        # A's ids throughout; then, for nested routes, B's own parent with A's child (a child looked up by
        # its id alone, with only the parent checked, leaks there).
        variants = [fill(op, ids_a)]
        for parent in PARENTS:
            if parent in op.params and op.params[-1] != parent:
                variants.append(fill(op, ids_a, {parent: ids_b[OWNER[parent]]}))
        for url in variants:
            response = call(api_b, op, url)
            if response.status_code != 404 or response.json().get("code") != "not_found":
                wrong.append(f"{op.method} {url}: {response.status_code} {response.text[:200]}")
    assert not wrong, "\n".join(wrong)
    # B's calls changed nothing of A's: every object still there, the brand's name and the key unrevoked.
    for what, url in {
        "brand": f"/v1/brands/{ids_a['brand']}",
        "asset": f"/v1/assets/{ids_a['asset']}",
        "campaign": f"/v1/campaigns/{ids_a['campaign']}",
        "endpoint": f"/v1/webhook-endpoints/{ids_a['endpoint']}",
        "target": f"/v1/brands/{ids_a['brand']}/delivery-targets/{ids_a['target']}",
        "feedback": f"/v1/campaigns/{ids_a['campaign']}/feedback/{ids_a['feedback']}",
        "key": f"/v1/keys/{ids_a['key']}",
    }.items():
        response = api_a.get(url)
        assert response.status_code == 200, f"{what}: {response.status_code} {response.text}"
    assert api_a.get(f"/v1/brands/{ids_a['brand']}").json()["name"] == "A brand"
    assert api_a.get(f"/v1/keys/{ids_a['key']}").json().get("revoked_at") is None
    kit = api_a.get(f"/v1/brands/{ids_a['brand']}/kit").json()
    assert [x["id"] for x in kit["logos"] + kit["fonts"]] == [ids_a["logo"], ids_a["font"]]
    assert kit["text_colors"] == []
    links = api_a.get(f"/v1/campaigns/{ids_a['campaign']}/review-links").json()["items"]
    assert [link.get("revoked_at") for link in links] == [None]
    print(f"object authorization: {len(with_ids)} routes with ids, {time.monotonic() - started:.1f} s")


def test_signed_file_urls_refuse_any_key_without_a_signature(
    system: System, tenants: tuple[httpx.Client, dict[str, str], httpx.Client, dict[str, str]]
) -> None:
    api_a, ids_a, api_b, _ = tenants
    signed = [op for op in operations(system) if op.params and not op.secured]
    assert {op.path for op in signed} == SIGNED  # a new route outside the API key must be added here knowingly
    url = api_a.get(f"/v1/assets/{ids_a['asset']}").json()["url"]
    path = httpx.URL(url).path
    assert httpx.get(f"{system.url}{path}?{httpx.URL(url).query.decode()}", timeout=30).status_code == 200
    assert_problem(api_b.get(path), 403, "forbidden")  # A's object key, B's bearer key, no signature


def test_lists_and_searches_of_tenant_b_never_show_tenant_a(
    system: System, tenants: tuple[httpx.Client, dict[str, str], httpx.Client, dict[str, str]]
) -> None:
    _, ids_a, api_b, ids_b = tenants
    lists = [op for op in operations(system) if op.method == "GET" and op.secured and not op.params]
    assert {"/v1/brands", "/v1/assets", "/v1/campaigns", "/v1/webhook-endpoints", "/v1/keys"} <= {
        op.path for op in lists
    }
    seen = []
    for op in lists:
        response = call(api_b, op, op.path)
        assert response.status_code == 200, f"{op.path}: {response.status_code} {response.text}"
        seen.extend(f"{op.path}: {what}" for what, id_ in ids_a.items() if id_ in response.text)
    assert not seen, seen
    # and they are B's lists, not empty ones: B's own brand, campaign, endpoint and key are there
    assert ids_b["brand"] in api_b.get("/v1/brands").text
    assert ids_b["campaign"] in api_b.get("/v1/campaigns").text
    assert ids_b["endpoint"] in api_b.get("/v1/webhook-endpoints").text
    assert ids_b["key"] in api_b.get("/v1/keys").text
