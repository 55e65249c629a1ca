"""Campaign progress: 1.0 once a campaign ends, and over the stages it can still run while it runs.

The loop's revise stage runs only when rank asks for it: a campaign that delivers without a revision
must still reach 1.0, and neither the campaign resource nor the stage webhooks may divide by it.
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func

from services.gateway.campaigns.schemas import StageRead, StageStatus
from services.gateway.campaigns.views import progress
from shared import stages
from shared.db import session as db_session
from shared.db.models import Campaign, CampaignStatus, StageRun
from tests.factories import Tenant, post_campaign
from workers.engine import flow


def _stages(statuses: dict[str, StageStatus]) -> list[StageRead]:
    """The campaign resource's stage list: every pipeline stage, pending unless named."""
    return [
        StageRead(stage=name, status=statuses.get(name, "pending"), done=0, total=0, started_at=None, finished_at=None)
        for name in stages.PIPELINE
    ]


def test_main_path_is_every_stage_but_the_loops_revise() -> None:
    assert stages.MAIN_PATH[0] == stages.FIRST.name and stages.MAIN_PATH[-1] == "deliver"
    assert set(stages.PIPELINE) - set(stages.MAIN_PATH) == {"revise"}


def test_running_campaign_counts_only_the_stages_it_runs() -> None:
    every_main_stage: dict[str, StageStatus] = {name: "succeeded" for name in stages.MAIN_PATH}
    # All of the main path done while the row is still running (revise never ran): the whole way, not 10/11.
    assert progress(_stages(every_main_stage), terminal=False) == 1.0
    assert progress(_stages({"decompose": "succeeded"}), terminal=False) == round(1 / len(stages.MAIN_PATH), 4)
    assert progress(_stages({}), terminal=False) == 0.0


def test_terminal_campaign_is_complete_whatever_never_ran() -> None:
    failed_early = _stages({"decompose": "succeeded", "retrieve": "failed"})
    assert progress(failed_early, terminal=True) == 1.0
    assert progress(_stages({}), terminal=True) == 1.0  # cancelled before anything ran
    assert progress(failed_early, terminal=False) == round(2 / len(stages.MAIN_PATH), 4)


def test_a_revision_never_moves_progress_back() -> None:
    """The order a campaign with one revision finishes its stages in: progress only grows."""
    order = [*stages.MAIN_PATH[:-1], "revise", "deliver"]
    seen = [stages.progress(order[: n + 1], terminal=False) for n in range(len(order))]
    assert seen == sorted(seen) and len(set(seen)) == len(seen)
    assert seen[-1] == 1.0 and seen[-2] == round(10 / 11, 4)  # revise counts once it ran: 10 of 11
    assert stages.progress(["no-such-stage"], terminal=False) == 0.0


def _succeed(session: Any, campaign: Campaign, names: tuple[str, ...]) -> None:
    now = func.now()
    for name in names:
        session.add(
            StageRun(
                tenant_id=campaign.tenant_id,
                campaign_id=campaign.id,
                stage=name,
                status="succeeded",
                started_at=now,
                finished_at=now,
            )
        )


def test_resource_and_webhook_progress_reach_one(client: TestClient, acme: Tenant) -> None:
    """The campaign resource and the stage events' progress (workers.engine.flow) agree on the same runs."""
    cid = uuid.UUID(post_campaign(client, acme)["id"])
    with db_session.session_scope() as session:
        campaign = session.get(Campaign, cid)
        assert campaign is not None
        campaign.status = CampaignStatus.RUNNING
        _succeed(session, campaign, stages.MAIN_PATH[:-1])  # deliver still to run
        session.flush()
        assert flow.progress(session, campaign) == round(9 / 10, 4)
    assert client.get(f"/v1/campaigns/{cid}", headers=acme.auth).json()["progress"] == round(9 / 10, 4)
    with db_session.session_scope() as session:
        campaign = session.get(Campaign, cid)
        assert campaign is not None
        _succeed(session, campaign, ("deliver",))
        session.flush()
        assert flow.progress(session, campaign) == 1.0  # still `running`: deliver's own stage event
        campaign.status = CampaignStatus.COMPLETED
    view = client.get(f"/v1/campaigns/{cid}", headers=acme.auth).json()
    assert view["progress"] == 1.0 and {s["status"] for s in view["stages"] if s["stage"] == "revise"} == {"skipped"}


def test_a_review_round_reads_from_where_its_change_entered(client: TestClient, acme: Tenant) -> None:
    """Feedback restarted the campaign at plan in round 3: the resource's progress and stage list count that
    round's runs plus the stages before plan (done earlier), as the stage webhooks do, not round 0's 1.0."""
    cid = uuid.UUID(post_campaign(client, acme)["id"])
    with db_session.session_scope() as session:
        campaign = session.get(Campaign, cid)
        assert campaign is not None
        _succeed(session, campaign, stages.MAIN_PATH)  # review round 0, delivered
        session.add(StageRun(tenant_id=campaign.tenant_id, campaign_id=cid, stage="plan", round=3, status="pending"))
        campaign.status, campaign.review_round = CampaignStatus.RUNNING, 1
        campaign.state = {"review": {"entry_stage": "plan", "first_round": 3}}
        session.flush()
        upstream = stages.MAIN_PATH.index("plan")
        assert flow.progress(session, campaign) == round(upstream / len(stages.MAIN_PATH), 4)
    view = client.get(f"/v1/campaigns/{cid}", headers=acme.auth).json()
    assert view["progress"] == round(upstream / len(stages.MAIN_PATH), 4)
    status = {s["stage"]: s["status"] for s in view["stages"]}
    assert status["scale"] == "succeeded" and status["plan"] == "pending" and status["generate"] == "pending"
    assert status["deliver"] == "pending"  # round 0's deliver is not this review round's
