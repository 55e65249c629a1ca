"""deliver (scoring queue): the campaign ends completed (top_k results) or partial (fewer, and why)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import qc as qc_report
from shared import webhooks
from shared.db.models import Campaign, CampaignStatus, Candidate, CandidateStatus, Result
from shared.storage import get_storage
from workers.engine.context import StageContext, Task, now
from workers.engine.flow import LoopState
from workers.engine.records import campaign_finished, webhook_tasks


def run(ctx: StageContext) -> dict[str, Any]:
    ctx.finalize = complete  # the terminal change and its event happen in the finish transaction
    return {"delivered": True}


def complete(session: Session, campaign: Campaign) -> list[Task]:
    from workers.jobs import push  # the DAM pushes are written in this same transaction

    results = _results(session, campaign)
    enough = len(results) >= campaign.top_k
    campaign.status = CampaignStatus.COMPLETED if enough else CampaignStatus.PARTIAL
    campaign.completed_at, campaign.current_stage = now(), None
    campaign_finished(campaign)
    data: dict[str, Any] = {"status": campaign.status, "results": results}
    if not enough:
        campaign.error = _partial_error(session, campaign, len(results))
        data["error"] = campaign.error
    tasks = webhook_tasks(webhooks.emit(session, campaign, f"campaign.{campaign.status}", data))
    return tasks + push.queue_pushes(session, campaign)  # none without results


def _results(session: Session, campaign: Campaign) -> list[dict[str, Any]]:
    storage = get_storage()
    rows = session.execute(
        select(Result.rank, Candidate)
        .join(Candidate, Candidate.id == Result.candidate_id)
        .where(Result.tenant_id == campaign.tenant_id, Result.campaign_id == campaign.id)
        .order_by(Result.rank)
    ).all()
    return [
        {
            "rank": r,
            "candidate_id": str(c.id),
            "image_url": storage.url(_stored(c.image_key)),
            "layer_url": storage.url(_stored(c.layer_key)),
            "placement": c.placement,
            "aesthetic": c.aesthetic,
        }
        for r, c in rows
    ]


def _stored(key: str | None) -> str:
    if key is None:  # generate stores both images before it writes the candidate row
        raise RuntimeError("a ranked candidate has no stored image")
    return key


def _partial_error(session: Session, campaign: Campaign, found: int) -> dict[str, Any]:
    """Too few results once the loop's bounds ran out: say how far it got and which checks kept the rest out."""
    rows = qc_report.candidate_rows(session, campaign.tenant_id, campaign.id)
    summary = qc_report.report(rows, campaign.qc_policy, campaign.top_k)
    blocking, duplicates = summary["blocking"], summary["outcomes"].get(CandidateStatus.DUPLICATE, 0)
    kept_out = ", ".join(f"{b['check']} ({b['failed']})" for b in blocking[:6]) or "no check failed"
    return {
        "code": "too_few_passed",
        "blocking": blocking,
        "duplicates": duplicates,
        "message": f"{found} of {campaign.top_k} results passed QC after {campaign.round + 1} round(s) "
        f"({LoopState.of(campaign).revision} caption revision(s)); failed checks: {kept_out}; "
        f"{duplicates} passing candidate(s) were near-duplicates of better ones",
    }
