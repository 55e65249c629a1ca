"""revise (llm queue): a new caption that addresses why the last round's candidates failed QC."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from shared.db.models import Candidate
from shared.db.session import session_scope
from workers.checks import policy
from workers.engine.context import StageContext
from workers.pipeline.common import campaign_brand, llm_call_rows, llm_failures
from workers.pipeline.outputs import CaptionOutput, Revision


def run(ctx: StageContext) -> dict[str, Any]:
    from workers.language import revise as revising

    failures = revising.failure_summary(failed_checks(_qc_records(ctx, ctx.round - 1)))
    with llm_failures("revise"):
        result = revising.revise(
            ctx.output(CaptionOutput).model_dump(),
            failures,
            ctx.settings.for_stage("revise"),
            campaign_brand(ctx).forbidden_terms or [],
        )
    revised = CaptionOutput.model_validate(result)
    ctx.publish(revised)
    history = list((ctx.campaign.state or {}).get("revisions") or [])
    entry = Revision(
        round=ctx.round,
        previous_caption=revised.previous_caption,
        caption=revised.caption,
        change=revised.change,
        backend=revised.backend,
        fallback_reason=revised.fallback_reason,
    )
    ctx.state_patch["revisions"] = [*history, entry.model_dump(mode="json")]
    ctx.rows += llm_call_rows(ctx, result)
    return {"change": result["change"], "backend": result["backend"], "failures": len(failures)}


def _qc_records(ctx: StageContext, rnd: int) -> list[dict[str, Any]]:
    with session_scope() as session:
        query = select(Candidate.qc).where(
            Candidate.tenant_id == ctx.tenant_id, Candidate.campaign_id == ctx.campaign.id, Candidate.round == rnd
        )
        return list(session.scalars(query))


def failed_checks(qc_records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every failed check of a round's candidates (product, brand and guideline alike)."""
    return [
        {"guideline": c["id"], "reason": c["reason"]}
        for record in qc_records
        for c in policy.checks(record or {})
        if c["status"] == "fail"
    ]
