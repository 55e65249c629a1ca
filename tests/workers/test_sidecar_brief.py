"""A DAM sidecar names the brief the scenes were made from: the request's, or the one inferred from the product
(the campaign's own brief is empty then), or a reviewer's replacement."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from shared.db.models import Campaign, Candidate, Result
from workers.jobs.push import sidecar_of


def sidecar(campaign: Campaign) -> dict[str, object]:
    cand = Candidate(id=uuid.uuid4(), placement={"canvas": {"width": 1024, "height": 1024}}, qc={}, integrity={})
    result = Result(rank=1, review={}, fully_checked=True, needs_review=False)
    return sidecar_of(campaign, result, cand, b"\x89PNG", datetime.now(UTC))


def test_the_sidecar_names_the_brief_the_scenes_were_made_from() -> None:
    asked = Campaign(id=uuid.uuid4(), brand_id=uuid.uuid4(), brief="a shoe on a beach", sizes=[], state={})
    assert (sidecar(asked)["brief"], sidecar(asked)["brief_source"]) == ("a shoe on a beach", "request")
    inferred_state = {"decompose": {"brief": "the trail shoe on a forest path", "brief_source": "inferred"}}
    inferred = Campaign(id=uuid.uuid4(), brand_id=uuid.uuid4(), brief="", sizes=[], state=inferred_state)
    assert (sidecar(inferred)["brief"], sidecar(inferred)["brief_source"]) == (
        "the trail shoe on a forest path",
        "inferred",
    )
