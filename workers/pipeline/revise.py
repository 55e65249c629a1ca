"""revise (llm queue): a new caption that addresses why the last round's candidates failed QC."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from shared.db.models import Candidate
from shared.db.session import session_scope
from workers.checks import policy
from workers.engine.context import StageContext
from workers.pipeline.common import campaign_brand, llm_call_rows, llm_failures
from workers.pipeline.outputs import CaptionOutput, PlanOutput, Revision

RETRY_STEP = 0.85  # each extra attempt with the same caption places the product this much smaller (or larger)
MAX_RETRY_SHARE = 0.9  # the scale stage's ceiling: a product never spans more of the canvas than this
TOO_LARGE = ("product_in_frame", "safe_zones_clear")  # failures a smaller product fixes (with product_area over)


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


def retry_share(ctx: StageContext, base: float, attempt: int) -> float:
    """The product's share for this round's plan: the scale stage's share on a caption's first attempt; on a
    retry the last plan's share, grown when the last round's candidates failed for a product too small
    (product_area under its floor) more often than for one too large, else shrunk as before. Shrinking a
    product that failed for being too small only made every later round fail the same way."""
    if attempt == 0:
        return base
    previous = ctx.output(PlanOutput).scale_share
    small, large = size_failures(_qc_records(ctx, ctx.round - 1))
    factor = 1 / RETRY_STEP if small > large else RETRY_STEP
    return round(min(MAX_RETRY_SHARE, previous * factor), 4)


def size_failures(qc_records: list[dict[str, Any]]) -> tuple[int, int]:
    """(too small, too large): a round's failed size verdicts, by which way the product should change."""
    small = large = 0
    for record in qc_records:
        for verdict in (record or {}).get("verdicts") or []:
            if verdict.get("status") != "fail":
                continue
            if verdict["check"] == "product_area":
                under = verdict.get("value") is not None and verdict["value"] < verdict["threshold"][0]
                small, large = small + under, large + (not under)
            elif verdict["check"] in TOO_LARGE:
                large += 1
    return small, large
