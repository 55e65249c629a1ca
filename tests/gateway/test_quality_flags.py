"""Unchecked is not passed, through the API: the brand's unchecked policy (create, read, update, 422 on a bad
value) and the campaign resource's fully-checked / needs-review counts and per-result flags.

Fixtures `client`, `acme`, `globex`, `env` are in tests/conftest.py.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.testclient import TestClient

from shared.db import session as db_session
from shared.db.models import Brand, Candidate, Result
from tests.factories import Tenant, assert_problem, post_campaign


def test_the_brand_chooses_what_unchecked_means(client: TestClient, acme: Tenant, globex: Tenant) -> None:
    default = client.post("/v1/brands", json={"name": "Default"}, headers=acme.auth)
    assert default.status_code == 201 and default.json()["unchecked"] == "review"
    strict = client.post("/v1/brands", json={"name": "Careful", "unchecked": "fail"}, headers=acme.auth).json()
    assert strict["unchecked"] == "fail"
    with db_session.session_scope() as session:
        assert session.get(Brand, uuid.UUID(strict["id"])).unchecked == "fail"  # stored, for QC and rank to read
    patched = client.patch(f"/v1/brands/{strict['id']}", json={"unchecked": "pass"}, headers=acme.auth)
    assert patched.status_code == 200 and patched.json()["unchecked"] == "pass"
    renamed = client.patch(f"/v1/brands/{strict['id']}", json={"name": "Renamed"}, headers=acme.auth)
    assert renamed.json()["unchecked"] == "pass"  # PATCH changes only what it names
    assert client.get(f"/v1/brands/{strict['id']}", headers=acme.auth).json()["unchecked"] == "pass"
    for bad in ("ignore", "", None, True):
        body = {"name": "b", "unchecked": bad}
        errors = assert_problem(client.post("/v1/brands", json=body, headers=acme.auth), 422, "validation_error")
        assert [e["loc"] for e in errors["errors"]] == [["body", "unchecked"]]
    refused = client.patch(f"/v1/brands/{strict['id']}", json={"unchecked": "maybe"}, headers=acme.auth)
    assert_problem(refused, 422, "validation_error")
    assert client.get(f"/v1/brands/{strict['id']}", headers=acme.auth).json()["unchecked"] == "pass"
    assert_problem(
        client.patch(f"/v1/brands/{strict['id']}", json={"unchecked": "fail"}, headers=globex.auth), 404, "not_found"
    )


def _reason(check: str, kind: str) -> dict[str, str]:
    return {"check": check, "kind": kind, "reason": f"{check} was {kind}"}


RESULTS: list[tuple[bool, bool, dict[str, Any]]] = [  # fully_checked, needs_review, review (as rank writes them)
    (True, False, {"fallback": False, "reasons": []}),
    (False, True, {"fallback": False, "reasons": [_reason("extra_objects", "unchecked")]}),
    (
        False,
        True,
        {
            "fallback": True,
            "reasons": [_reason("duplicated_product", "advisory"), _reason("extra_objects", "unchecked")],
        },
    ),
]


def test_the_campaign_says_how_many_results_were_fully_checked(client: TestClient, acme: Tenant) -> None:
    cid = uuid.UUID(post_campaign(client, acme)["id"])
    fresh = client.get(f"/v1/campaigns/{cid}", headers=acme.auth).json()
    assert fresh["checked"]["results"] == 0 and fresh["checked"]["fully_checked"] == 0
    with db_session.session_scope() as session:
        for rank, (full, review, record) in enumerate(RESULTS, start=1):
            cand = Candidate(id=uuid.uuid4(), tenant_id=acme.id, campaign_id=cid, layout_key=f"c{rank}", rank=rank)
            session.add(cand)
            session.flush()
            session.add(
                Result(
                    tenant_id=acme.id,
                    campaign_id=cid,
                    candidate_id=cand.id,
                    rank=rank,
                    fully_checked=full,
                    needs_review=review,
                    review=record,
                )
            )
    view = client.get(f"/v1/campaigns/{cid}", headers=acme.auth).json()
    assert [(r["fully_checked"], r["needs_review"], r["review"]["fallback"]) for r in view["results"]] == [
        (True, False, False),
        (False, True, False),
        (False, True, True),
    ]
    assert view["results"][2]["review"]["reasons"][0] == _reason("duplicated_product", "advisory")
    checked = view["checked"]
    assert (checked["results"], checked["fully_checked"], checked["needs_review"], checked["fallback"]) == (3, 1, 2, 1)
    assert checked["reasons"] == {"unchecked: extra_objects": 2, "advisory: duplicated_product": 1}
    assert checked["message"].startswith("1 of 3 result(s) fully checked")
    listed = client.get("/v1/campaigns", headers=acme.auth).json()["items"]
    assert next(c for c in listed if c["id"] == str(cid))["checked"] == checked  # the list shows the same counts
