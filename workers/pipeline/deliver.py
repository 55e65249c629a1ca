"""deliver (scoring queue): the campaign ends completed (top_k results that passed QC) or partial (fewer,
and why). Fallback results (failed only advisory or flexible checks, ranked because too few passed) are
delivered flagged, and the campaign says so; zero results name the hard checks that kept every candidate
out, with examples. Every result says whether it was fully checked or needs review."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import presets, webhooks
from shared import qc as qc_report
from shared.db.models import Campaign, CampaignStatus, Candidate, CandidateStatus, Result, ReviewState
from workers.engine.context import StageContext, Task, now
from workers.engine.flow import LoopState
from workers.engine.records import campaign_finished, webhook_tasks
from workers.pipeline import credentials, overlay


def run(ctx: StageContext) -> dict[str, Any]:
    ctx.finalize = complete  # the terminal change and its event happen in the finish transaction
    creatives = overlay.verify_results(ctx)  # OCR read-back of each result's creative, before it is signed
    return {"delivered": True, "creatives": creatives, "credentials": credentials.sign_results(ctx)}  # C2PA


def complete(session: Session, campaign: Campaign) -> list[Task]:
    from workers.jobs import push  # the DAM pushes are written in this same transaction

    results = _results(session, campaign)
    passed = sum(not r["review"]["fallback"] for r in results)
    per_product = _passed_per_product(campaign, results)
    per_size = _passed_per_size(campaign, results, list(per_product))
    failed_products = list(((campaign.state or {}).get("segment") or {}).get("failed_products") or [])
    # top_k of every product in every size (a campaign stored without sizes has its one default canvas)
    each_enough = all(n >= campaign.top_k for n in (per_size if campaign.sizes else per_product).values())
    enough = each_enough and not failed_products
    campaign.status = CampaignStatus.COMPLETED if enough else CampaignStatus.PARTIAL
    campaign.completed_at, campaign.current_stage = now(), None
    campaign_finished(session, campaign)
    checked = qc_report.review_summary(
        [
            {"fully_checked": r["fully_checked"], "needs_review": r["needs_review"], "review": r["review"]}
            for r in results
        ]
    )
    data: dict[str, Any] = {"status": campaign.status, "results": results, "checked": checked}
    if len(per_product) > 1 or failed_products:
        data["products"] = per_product
    if len(campaign.sizes or []) > 1:
        data["sizes"] = [{"product_asset_id": p, "size": s, "passed": n} for (p, s), n in per_size.items()]
    if not enough:
        wanted = campaign.top_k * max(1, len(per_size if campaign.sizes else per_product))  # top_k per deliverable
        error = {} if each_enough else _partial_error(session, campaign, passed, len(results), wanted)
        if not each_enough and len(campaign.sizes or []) > 1:  # which sizes fell short, each needs top_k
            error = _with_short_sizes(error, per_size, campaign.top_k)
        if failed_products:  # a product that could not be segmented lost only its own scenes: say which, and why
            error = _with_failed_products(error, failed_products)
        campaign.error = data["error"] = error
    tasks = webhook_tasks(webhooks.emit(session, campaign, f"campaign.{campaign.status}", data))
    if results:  # a person decides now: the review page and the API show them (services/gateway/reviews)
        campaign.review_state = ReviewState.PENDING
        requested = {"review_round": campaign.review_round, "results": len(results), "checked": checked}
        tasks += webhook_tasks(webhooks.emit(session, campaign, "campaign.review.requested", requested))
    return tasks + push.queue_on_completion(session, campaign)  # none without results, or before approval


def _results(session: Session, campaign: Campaign) -> list[dict[str, Any]]:
    """The results as the completion event carries them: ids and records, no storage URL. A presigned URL would
    expire before a late retry or a replay delivered it; receivers fetch the images through the API
    (`links.results`: GET /v1/campaigns/{id}/results signs fresh URLs on every read)."""
    rows = session.execute(
        select(Result, Candidate)
        .join(Candidate, Candidate.id == Result.candidate_id)
        .where(Result.of_current_round(campaign))
        .order_by(Result.rank)
    ).all()
    sizes = [presets.result_size(campaign.sizes or [], c.placement) for _, c in rows]
    groups = [
        ((c.placement or {}).get("product_asset_id"), (size or {}).get("label"))
        for (_, c), size in zip(rows, sizes, strict=True)
    ]
    return [
        {
            "rank": r.rank,
            "size": size,
            "size_rank": size_rank,
            "result_id": str(r.id),
            "review_round": r.review_round,
            "candidate_id": str(c.id),
            "product_asset_id": (c.placement or {}).get("product_asset_id"),
            "placement": c.placement,
            "aesthetic": c.aesthetic,
            "fully_checked": r.fully_checked,
            "needs_review": r.needs_review,
            "review": {
                "fallback": bool((r.review or {}).get("fallback")),
                "reasons": (r.review or {}).get("reasons", []),
            },
            # with campaign copy: the creative version's layout and OCR verdict (its image through the API)
            **({"creative": overlay.summary(c.qc["creative"])} if (c.qc or {}).get("creative") else {}),
        }
        for (r, c), size, size_rank in zip(rows, sizes, presets.size_ranks(groups), strict=True)
        if _stored(c)
    ]


def _passed_per_product(campaign: Campaign, results: list[dict[str, Any]]) -> dict[str, int]:
    """Passing (not fallback) results per segmented product, zero for one that got none."""
    segment = (campaign.state or {}).get("segment") or {}
    named = [p["product_asset_id"] for p in segment.get("products") or []] or [segment.get("product_asset_id")]
    counts = {str(p): 0 for p in named if p}
    for r in results:
        product = str(r["product_asset_id"] or next(iter(counts), ""))
        counts[product] = counts.get(product, 0) + (not r["review"]["fallback"])
    return counts


def _passed_per_size(
    campaign: Campaign, results: list[dict[str, Any]], products: list[str]
) -> dict[tuple[str, str], int]:
    """Passing results per (segmented product, requested size), zero for a size that got none."""
    labels = [presets.size_label(int(s["width"]), int(s["height"])) for s in campaign.sizes or []]
    counts = {(p, label): 0 for p in products or [""] for label in labels}
    for r in results:  # with no product named by segment (one product), every result is that product's
        product = str(r["product_asset_id"] or products[0]) if products else ""
        key = (product, (r["size"] or {}).get("label", ""))
        counts[key] = counts.get(key, 0) + (not r["review"]["fallback"])
    return counts


def _with_short_sizes(error: dict[str, Any], per_size: dict[tuple[str, str], int], top_k: int) -> dict[str, Any]:
    short = [(p, size, n) for (p, size), n in per_size.items() if n < top_k]
    named = ", ".join(f"{size}: {n} of {top_k}" for _, size, n in short)
    return {
        **error,
        "short_sizes": [{"product_asset_id": p or None, "size": size, "passed": n} for p, size, n in short],
        "message": f"each size needs {top_k} result(s), short in {named}; {error['message']}",
    }


def _with_failed_products(error: dict[str, Any], failed: list[dict[str, Any]]) -> dict[str, Any]:
    """The error of a campaign some of whose products could not be segmented (the others' shortfall, if any,
    follows in the message)."""
    lost = "; ".join(f"product {f['product_asset_id']}: {f['reason']}" for f in failed)
    message = f"{len(failed)} product(s) got no scenes, they could not be segmented ({lost})"
    if error:
        return {**error, "failed_products": failed, "message": f"{message}; {error['message']}"}
    return {"code": "products_failed", "failed_products": failed, "message": message}


def _stored(candidate: Candidate) -> bool:
    if candidate.image_key is None or candidate.layer_key is None:  # generate stores both before the row
        raise RuntimeError("a ranked candidate has no stored image")
    return True


def _partial_error(session: Session, campaign: Campaign, passed: int, delivered: int, wanted: int) -> dict[str, Any]:
    """Too few passed once the loop's bounds ran out: how far it got, which checks kept the rest out, how many
    fallbacks stand in; with no result at all, the hard checks that failed every candidate, with examples."""
    rows = qc_report.candidate_rows(session, campaign.tenant_id, campaign.id)
    summary = qc_report.report(rows, campaign.qc_policy, campaign.top_k)
    blocking, duplicates = summary["blocking"], summary["outcomes"].get(CandidateStatus.DUPLICATE, 0)
    kept_out = ", ".join(f"{b['check']} ({b['failed']})" for b in blocking[:6]) or "no check failed"
    loop = f"after {campaign.round + 1} round(s) ({LoopState.of(campaign).revision} caption revision(s))"
    if delivered == 0 and rows:
        gating = qc_report.gating_failures(rows)
        named = "; ".join(
            f"{g['check']} failed {g['failed']} (e.g. "
            + ", ".join(f"{e['layout_key']}: {e['reason']}" for e in g["examples"][:2])
            + ")"
            for g in gating[:4]
        )
        return {
            "code": "every_candidate_failed_a_gating_check",
            "gating": gating,
            "blocking": blocking,
            "message": f"0 of {wanted} results: every one of {len(rows)} candidate(s) failed a hard "
            f"(measured, gating) check {loop}: {named}",
        }
    fallback = delivered - passed
    stand_in = (
        f"; {fallback} more delivered flagged needs_review: they failed only advisory or flexible checks"
        if fallback
        else ""
    )
    return {
        "code": "too_few_passed",
        "blocking": blocking,
        "duplicates": duplicates,
        "passed": passed,
        "fallback": fallback,
        "message": f"{passed} of {wanted} results passed QC {loop}{stand_in}; failed checks: {kept_out}; "
        f"{duplicates} passing candidate(s) were near-duplicates of better ones",
    }
