"""rank (scoring queue, the whole campaign so far): thousands of candidates down to the few a brand sees.

Near-duplicates clustered, the flexible policy's relaxation when too few distinct candidates pass,
aesthetic scores of the passing ones, the best of each cluster, the diversity rule, and the top-K of
every (product, size) as results: each requested size is its own deliverable. Every candidate ends with
its rank or the reason it was left out.

Order: fully checked first, then the aesthetic score; once the brand's reviewers have decided enough
(workers.ranking.learn.MIN_PAIRS preference pairs), the brand's learned utility instead
(workers.ranking.pairwise, the aesthetic score as its prior). Each scored candidate then carries
qc["ranking"] = {utility, version}, and the campaign's QcSummary.ranker records which weights ranked it.

In the loop's last round (no retry or revision left), when fewer than top_k distinct candidates passed,
the best candidates that failed only advisory or flexible checks stand in (policy.as_fallback): ranked
after every passing one, flagged needs_review with the reasons. No silent empty campaign: zero results
only when every candidate failed a hard (measured, gating) check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.orm import Session, undefer

from shared.db.models import BrandRanker, Campaign, Candidate, Result
from shared.db.session import session_scope
from shared.model_specs import aesthetic_spec
from shared.qc import DEFAULT_UNCHECKED, QcThresholds, thresholds
from workers.checks import policy
from workers.engine import flow
from workers.engine.context import StageContext, Task
from workers.engine.flow import Decision, LoopState
from workers.models.roles import Scorer
from workers.pipeline.common import campaign_brand, canvases, load_image, model_call
from workers.pipeline.outputs import QcSummary, SegmentOutput
from workers.pipeline.qc import product_id
from workers.ranking import learn, pairwise
from workers.ranking.features import features


def run(ctx: StageContext) -> dict[str, Any]:
    candidates = _pool(ctx)  # every round so far: a retry adds to the pool, never replaces it
    brand = campaign_brand(ctx)
    limits = thresholds(ctx.settings, brand.qc_thresholds)
    clusters = cluster_pool(candidates, limits)
    top_k = ctx.campaign.top_k
    relaxed = apply_policy(candidates, clusters, ctx.campaign.qc_policy, top_k, limits, brand.unchecked)
    ranking = brand_ranking(ctx)
    _score(ctx, candidates, lambda c: bool(c.passed))
    rate(candidates, ranking)
    chosen: list[Candidate] = []
    for group in by_deliverable(ctx, candidates):  # top_k per product and size: each is its own deliverable
        chosen += _choose_product(ctx, group, clusters, top_k, ranking)
    for position, cand in enumerate(chosen, start=1):
        cand.rank = position
    ctx.rows.extend(candidates)
    ctx.publish(_summary(ctx, candidates, clusters, relaxed, chosen, ranking))
    ctx.finalize = lambda session, campaign: write_results(session, campaign, chosen, ctx.stage)
    return {
        "candidates": len(candidates),
        "passed": sum(bool(c.passed) for c in candidates),
        "ranked": len(chosen),
        "fallback": sum(c.qc["policy"]["fallback"] for c in chosen),
        "clusters": len({c.id for c in clusters.values()}),
        "relaxed": [r["id"] for r in relaxed],
    }


def _choose_product(
    ctx: StageContext,
    candidates: list[Candidate],
    clusters: dict[str, Any],
    top_k: int,
    ranking: learn.Ranking | None,
) -> list[Candidate]:
    """One product's top_k in one size; in the last round, stand-ins for what is missing (see the module
    docstring)."""
    chosen = choose(best_of_clusters(candidates, clusters), top_k)
    if len(chosen) < top_k and last_round(ctx.campaign, ctx.round):
        taken = {clusters[str(c.id)].id for c in chosen}  # scores only where a stand-in may come from
        eligible = [c for c in candidates if c.qc["policy"]["eligible"] and clusters[str(c.id)].id not in taken]
        _score(ctx, eligible, lambda c: True)
        rate(eligible, ranking)
        chosen += fallback(eligible, clusters, top_k - len(chosen))
    return chosen


def by_product(ctx: StageContext, candidates: list[Candidate]) -> list[list[Candidate]]:
    """The pool per product, in the campaign's product order (a candidate naming no product: the first)."""
    segment = (ctx.campaign.state or {}).get("segment")
    order = [c.product_asset_id for c in SegmentOutput.model_validate(segment).cuts()] if segment else []
    groups: dict[str, list[Candidate]] = {}
    for cand in candidates:
        groups.setdefault(product_id(cand) or (order[0] if order else ""), []).append(cand)
    ranked = sorted(groups, key=lambda p: order.index(p) if p in order else len(order))
    return [groups[p] for p in ranked]


def by_deliverable(ctx: StageContext, candidates: list[Candidate]) -> list[list[Candidate]]:
    """The pool per (product, size): products in the campaign's order, each product's sizes in the request's."""
    order = canvases(ctx)
    groups: list[list[Candidate]] = []
    for product in by_product(ctx, candidates):
        sizes: dict[tuple[int, int], list[Candidate]] = {}
        for cand in product:
            sizes.setdefault(canvas_of(cand), []).append(cand)
        ranked = sorted(sizes, key=lambda c: order.index(c) if c in order else len(order))
        groups += [sizes[c] for c in ranked]
    return groups


def canvas_of(cand: Candidate) -> tuple[int, int]:
    canvas = cand.placement["canvas"]
    return int(canvas["width"]), int(canvas["height"])


def _pool(ctx: StageContext) -> list[Candidate]:
    """The candidates of the current review round (from LoopState.pool_from_round on)."""
    first = LoopState.of(ctx.campaign).pool_from_round
    with session_scope() as session:
        query = (
            select(Candidate)
            .options(undefer(Candidate.embedding))
            .where(
                Candidate.tenant_id == ctx.tenant_id,
                Candidate.campaign_id == ctx.campaign.id,
                Candidate.round >= first,
            )
        )
        return list(session.scalars(query.order_by(Candidate.round, Candidate.layout_key)).all())


def _group(cand: Candidate) -> str:
    canvas = cand.placement["canvas"]
    # another ad size, or another product, is another deliverable, not a duplicate
    return f"{canvas['width']}x{canvas['height']}:{product_id(cand) or ''}"


def cluster_pool(candidates: list[Candidate], limits: QcThresholds) -> dict[str, Any]:
    """candidate id -> its near-duplicate cluster (perceptual hash, and DINOv2 embeddings when stored)."""
    import numpy as np

    from workers.checks import duplicates

    items = [
        duplicates.Item(
            str(c.id),
            _group(c),
            c.qc["metrics"]["phash"],
            None if c.embedding is None else np.asarray(c.embedding, dtype=np.float32),
            c.placement,  # a product placed elsewhere is never a near-duplicate, whatever the background's hash
        )
        for c in candidates
    ]
    return duplicates.cluster(items, limits.dup_max_hamming, limits.dup_min_cosine)


def apply_policy(
    candidates: list[Candidate],
    clusters: dict[str, Any],
    name: str,
    top_k: int,
    limits: QcThresholds,
    unchecked: str = DEFAULT_UNCHECKED,
) -> list[dict[str, Any]]:
    """Each candidate's final verdict under the campaign's policy and the brand's unchecked policy; the
    flexible rules relaxed, if any."""
    pool = [policy.checks(c.qc) for c in candidates]
    if name == "flexible":
        deliverables = {_deliverable(c) for c in candidates}

        def enough(flags: list[bool]) -> bool:  # top_k distinct passing candidates of every product and size
            distinct: dict[tuple[str | None, tuple[int, int]], set[str]] = {d: set() for d in deliverables}
            for cand, ok in zip(candidates, flags, strict=True):
                if ok:
                    distinct[_deliverable(cand)].add(clusters[str(cand.id)].id)
            return all(len(found) >= top_k for found in distinct.values())

        decisions, relaxed = policy.relax(pool, enough, limits.weighted_threshold, unchecked)
    else:
        threshold = limits.weighted_threshold
        decisions, relaxed = [policy.decide(found, name, threshold, (), unchecked) for found in pool], []
    for cand, decision in zip(candidates, decisions, strict=True):
        cand.qc = {**cand.qc, "policy": {**decision, "relaxed_for_campaign": [r["id"] for r in relaxed]}}
        cand.passed = decision["passed"]
        cand.rank, cand.excluded_reason = None, None if decision["passed"] else failure_reason(decision)
    return relaxed


def _deliverable(cand: Candidate) -> tuple[str | None, tuple[int, int]]:
    return product_id(cand), canvas_of(cand)


def failure_reason(decision: dict[str, Any]) -> str:
    failed = ", ".join(decision["failed"]) or "none"
    if decision["name"] == "weighted":
        text = (
            f"failed QC (weighted policy): {decision['weighted_share']:.0%} of the checked weight passed, "
            f"{decision['threshold']:.0%} needed, or a product check failed; failed: {failed}"
        )
    else:
        text = f"failed QC ({decision['name']} policy): {failed}"
    if decision.get("unchecked_failed"):
        text += f"; unchecked, which this brand counts as failed: {', '.join(decision['unchecked_failed'])}"
    if decision.get("hard_failed"):
        return f"{text} (gating: {', '.join(decision['hard_failed'])})"
    return f"{text} (advisory only: may stand in if too few pass)" if decision.get("eligible") else text


def last_round(campaign: Campaign, rnd: int) -> bool:
    """Will the loop deliver after this round whatever rank finds? (No retry nor revision left.)
    A round already decided keeps its decision, so a redelivered rank sees what the first one saw."""
    loop = LoopState.of(campaign)
    decided = loop.decided.get(str(rnd))
    if decided is not None:
        return decided is Decision.DELIVER
    return loop.attempt >= campaign.max_retry_attempts and loop.revision >= campaign.max_prompt_revisions


def fallback(eligible: list[Candidate], clusters: dict[str, Any], missing: int) -> list[Candidate]:
    """The best eligible candidates (fewest failed checks, then _order), one per near-duplicate cluster
    (the caller left out the clusters already ranked), flagged as fallbacks with every reason."""
    taken: set[str] = set()
    pool = sorted(eligible, key=lambda c: (len(c.qc["policy"]["advisory_failed"]), *_order(c)))
    picked: list[Candidate] = []
    for cand in pool:
        cluster = clusters[str(cand.id)].id
        if len(picked) == missing:
            break
        if cluster in taken:
            continue
        taken.add(cluster)
        cand.qc = {**cand.qc, "policy": policy.as_fallback(policy.checks(cand.qc), cand.qc["policy"])}
        cand.excluded_reason = None
        picked.append(cand)
    return picked


def _score(ctx: StageContext, candidates: list[Candidate], wanted: Callable[[Candidate], bool]) -> None:
    """Aesthetic scores of the wanted candidates (the others get none); a score from an earlier rank with the
    same scorer is kept."""
    from workers.models import registry

    spec = aesthetic_spec(ctx.settings)
    scorer: Scorer | None = None
    for cand in candidates:
        if not wanted(cand):
            cand.aesthetic = None
            continue
        if cand.aesthetic is not None and (cand.qc.get("aesthetic") or {}).get("method") == spec.adapter:
            continue
        scorer = scorer or model_call(spec, lambda: registry.scorer(spec))
        scored = scorer.score(load_image(cand.image_key).convert("RGB"), load_image(cand.layer_key).convert("RGBA"))
        scored = {"method": spec.adapter, **scored}
        cand.aesthetic, cand.qc = scored["score"], {**cand.qc, "aesthetic": scored}


def brand_ranking(ctx: StageContext) -> learn.Ranking | None:
    """The brand's learned ranker, when its reviewers have decided enough (else None: aesthetic order)."""
    with session_scope() as session:
        row = session.get(BrandRanker, ctx.campaign.brand_id)
        if row is None or row.tenant_id != ctx.tenant_id:
            return None
        return learn.usable(row)


def rate(candidates: list[Candidate], ranking: learn.Ranking | None) -> None:
    """Each scored candidate's learned utility (qc["ranking"]); without a ranker none, so _order falls back to
    the aesthetic score. A utility from an earlier rank is replaced: the brand may have refitted since."""
    for cand in candidates:
        qc = {k: v for k, v in cand.qc.items() if k != "ranking"}
        if ranking is not None and cand.aesthetic is not None:
            value = pairwise.utility(ranking.weights, features(cand))
            qc["ranking"] = {"utility": round(value, 6), "version": ranking.version}
        cand.qc = qc


def best_of_clusters(candidates: list[Candidate], clusters: dict[str, Any]) -> list[Candidate]:
    """The passing candidates that may be ranked: the best (by aesthetic) of each near-duplicate cluster."""
    by_id = {str(c.id): c for c in candidates}
    best: dict[str, Candidate] = {}
    for cand in sorted((c for c in candidates if c.passed), key=_order):
        best.setdefault(clusters[str(cand.id)].id, cand)
    for cand in candidates:
        found = clusters[str(cand.id)]
        top = best.get(found.id)
        cand.qc = {**cand.qc, "cluster": _cluster_record(found, by_id, top)}
        if cand.passed and top is not cand and top is not None:
            cand.excluded_reason = (
                f"near-duplicate of {top.layout_key} (cluster {found.id}, "
                f"{_link(found, cand, top)}): only the best of a cluster can be ranked"
            )
    return list(best.values())


def _order(cand: Candidate) -> tuple[bool, bool, float, str]:
    """Fully checked first (a result nobody needs to look at again), then by the brand's learned utility
    when rate() set one, else by aesthetic score; unscored last."""
    learned = (cand.qc.get("ranking") or {}).get("utility")
    value = float(learned) if learned is not None else (cand.aesthetic or 0.0)
    return not cand.qc["policy"].get("fully_checked", False), cand.aesthetic is None, -value, cand.layout_key


def _cluster_record(found: Any, by_id: dict[str, Candidate], top: Candidate | None) -> dict[str, Any]:
    return {
        "id": found.id,
        "size": len(found.members),
        "members": sorted(by_id[m].layout_key for m in found.members),
        "best": top.layout_key if top is not None else None,
        "links": [{"a": by_id[a].layout_key, "b": by_id[b].layout_key, "how": how} for a, b, how in found.links],
    }


def _link(found: Any, cand: Candidate, top: Candidate) -> str:
    """How the two were found alike: the direct link when there is one, else 'linked through the cluster'."""
    ids = {str(cand.id), str(top.id)}
    direct = [how for a, b, how in found.links if {a, b} == ids]
    return direct[0] if direct else "linked through other members of the cluster"


def _cell(cand: Candidate) -> tuple[int, int, int, int]:
    canvas = cand.placement["canvas"]
    return canvas["width"], canvas["height"], cand.placement["row"], cand.placement["col"]


def choose(candidates: list[Candidate], top_k: int) -> list[Candidate]:
    """Best first (see _order); a second result from the same layout cell (canvas, row, column: the same
    placement at another rotation or seed) only if there aren't enough distinct ones."""
    ordered = sorted((c for c in candidates if c.passed), key=_order)
    first: list[Candidate] = []
    repeats: list[Candidate] = []
    for cand in ordered:
        (repeats if any(_cell(cand) == _cell(f) for f in first) else first).append(cand)
    chosen = (first + repeats)[:top_k]
    for cand in ordered:
        if cand not in chosen:
            cand.excluded_reason = (
                "diversity: a better candidate already uses this layout cell"
                if cand in repeats
                else f"passed QC, ranked below the top {top_k} by {_by(cand)}"
            )
    return chosen


def _by(cand: Candidate) -> str:
    found = cand.qc.get("ranking")
    return f"the brand's learned ranking (version {found['version']})" if found else "aesthetic score"


def _summary(
    ctx: StageContext,
    candidates: list[Candidate],
    clusters: dict[str, Any],
    relaxed: list[dict[str, Any]],
    chosen: list[Candidate],
    ranking: learn.Ranking | None = None,
) -> QcSummary:
    """What the campaign resource shows of QC: the policy, what it relaxed, and the counts."""
    sizes = [len(c.members) for c in {c.id: c for c in clusters.values()}.values()]
    return QcSummary(
        policy=ctx.campaign.qc_policy,
        relaxed=relaxed,
        candidates=len(candidates),
        passed=sum(bool(c.passed) for c in candidates),
        clusters=len(sizes),
        duplicates=sum(s - 1 for s in sizes),
        ranked=len(chosen),
        fully_checked=sum(bool(c.qc["policy"]["fully_checked"]) for c in chosen),
        needs_review=sum(bool(c.qc["policy"]["needs_review"]) for c in chosen),
        fallback=sum(bool(c.qc["policy"]["fallback"]) for c in chosen),
        aesthetic=aesthetic_spec(ctx.settings).adapter,
        dinov2=ctx.settings.dinov2_model or None,
        ranker=None if ranking is None else ranking.record(),
    )


def write_results(session: Session, campaign: Campaign, chosen: list[Candidate], stage: str) -> list[Task]:
    """The review round's results are this rank's top-K (in the finish transaction), then what comes next.
    Earlier review rounds keep theirs: reviewers decided on them."""
    session.execute(delete(Result).where(Result.of_current_round(campaign)))
    for position, cand in enumerate(chosen, start=1):
        decision = cand.qc["policy"]
        session.add(
            Result(
                tenant_id=campaign.tenant_id,
                campaign_id=campaign.id,
                candidate_id=cand.id,
                review_round=campaign.review_round,
                rank=position,
                fully_checked=bool(decision["fully_checked"]),
                needs_review=bool(decision["needs_review"]),
                review={"fallback": bool(decision["fallback"]), "reasons": decision["review"]},
            )
        )
    session.flush()
    return flow.advance(session, campaign, stage, campaign.round)
