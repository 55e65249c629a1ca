"""The engine's hot-path statements compiled before a pool process takes its first task (workers.warmup).

SQLAlchemy compiles a statement the first time a process executes it and caches the result per engine: a new pool
process paid that in the claims and finishes of the first campaign it worked on (in-process, 11 of the 21
statements a campaign's engine compiled are these). Here each is executed once with parameters that match no row,
in a transaction that is rolled back: nothing is read or written, the compiled forms stay cached.

The statements that write rows of a campaign (a fan-out's runs, a missing run, a stage's upserts) are refused by the
foreign keys without one: they run against a throwaway tenant, brand and campaign inserted in the same transaction,
which the rollback removes with them. Nothing of it is committed, so no deferred trigger runs (the live-campaign
count runs at COMMIT) and no other transaction ever sees those rows.

The scoring queue's finishes (rank's results and its loop decision, deliver's completion: `finishes`) run their stage's
own code the same way, on a throwaway campaign ranked, completed and rolled back; the tasks they return are not sent.
"""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session, undefer
from sqlalchemy.orm.attributes import set_committed_value

from shared import webhooks
from shared.db.models import Brand, Campaign, CampaignStatus, Candidate, LlmCall, ReviewState, Tenant
from shared.db.session import new_session
from workers.engine import dispatch, records


def statements() -> None:
    """Execute the claim's, the finish's, the stage events' and the dispatcher's statements once each, then a
    campaign's row writes on a throwaway campaign; both transactions rolled back."""
    session = new_session()
    try:
        dispatch.warm_up(session)
        records.warm_up(session)
        webhooks.warm_up(session)
        session.rollback()  # the dispatcher's lock released before the writes below
        _campaign_writes(session, _throwaway_campaign(session))
    finally:
        session.rollback()
        session.close()


def finishes() -> None:
    """The finishes whose stage hands the engine a finalize (workers.pipeline.rank, deliver: the scoring queue), run
    on a throwaway campaign with a passing candidate pair, in a transaction rolled back. In a pool process's first
    campaign they compiled 9 statements of their own (rank's results and candidate counts, its loop decision,
    deliver's results, the quota's settlement, the DAM push's policy and targets)."""
    from workers.pipeline import deliver, rank  # the scoring queue's stage modules: loaded by then (workers.warmup)

    session = new_session()
    try:
        campaign = _throwaway_campaign(session, top_k=1)  # its two results are enough: rank decides to deliver
        chosen = [_ranked(campaign, i) for i in range(2)]
        session.add_all(chosen)
        records.create_runs(session, campaign, "rank", 0, [0])
        records.succeeded(session, campaign, "rank", 0, 0, {})
        rank.write_results(session, campaign, chosen, "rank")
        records.write_campaign(session, campaign)
        campaign = records.lock_campaign(session, campaign.id) or campaign  # deliver's finish locks it again
        # As deliver's claim left it (the completion's UPDATE writes what changes: status, stage, end), and with no
        # campaign duration observed (records.campaign_finished skips a campaign without a creation time)
        set_committed_value(campaign, "status", CampaignStatus.RUNNING)
        set_committed_value(campaign, "current_stage", "deliver")
        set_committed_value(campaign, "created_at", None)
        deliver.complete(session, campaign)
        records.write_campaign(session, campaign)
    finally:
        session.rollback()
        session.close()


def _ranked(campaign: Campaign, i: int) -> Candidate:
    """A stored candidate that passed QC: what rank writes results for and deliver reads back."""
    row = _candidate(campaign, 0, i)
    row.image_key, row.layer_key, row.passed, row.rank = f"warm-up/{i}.png", f"warm-up/{i}.layers.png", True, i + 1
    row.qc = {"policy": {"fully_checked": True, "needs_review": False, "fallback": False, "review": []}}
    return row


def _throwaway_campaign(session: Session, top_k: int = 3) -> Campaign:
    """A tenant, brand and campaign that only this (rolled back) transaction sees."""
    tenant = Tenant(name="warm-up")
    session.add(tenant)
    session.flush()
    brand = Brand(tenant_id=tenant.id, name="warm-up")
    session.add(brand)
    session.flush()
    campaign = Campaign(tenant_id=tenant.id, brand_id=brand.id, brief="warm-up", top_k=top_k)
    session.add(campaign)
    session.flush()
    return campaign


def _campaign_writes(session: Session, campaign: Campaign) -> None:
    """The row writes of a campaign's first tasks, with the keys and row counts the engine and the stages use (a
    compiled form is cached per set of keys, and per single row or many)."""
    # A fan-out's runs, one INSERT: of one item (decompose's, segment's) or several
    records.create_runs(session, campaign, "retrieve", 0, [0])
    records.create_runs(session, campaign, "generate", 0, [0, 1])
    records.claim_run(session, campaign, None, ("decompose", 0, 0), "warm-up")  # a run claimed before it existed
    for n in (1, 2):  # a language stage's call log (workers.pipeline.common.llm_call_rows), generate's candidates
        records.store_rows(session, [_llm_call(campaign, i) for i in range(n)])
        records.store_rows(session, [_candidate(campaign, n, i) for i in range(n)])
    _candidate_updates(session, campaign)
    _campaign_flushes(session, campaign)


def _llm_call(campaign: Campaign, i: int) -> LlmCall:
    # The attributes workers.pipeline.common._llm_call_row sets: the upsert's columns
    return LlmCall(
        id=uuid.uuid4(),
        tenant_id=campaign.tenant_id,
        campaign_id=campaign.id,
        stage="decompose",
        round=0,
        backend="local",
        model="warm-up",
        prompt_version=None,
        attempt="first",
        latency_ms=0.0,
        tokens_in=0,
        tokens_out=0,
        cost_usd=None,
    )


def _candidate(campaign: Campaign, n: int, i: int) -> Candidate:
    # The attributes workers.pipeline.generate._candidate_row sets: the upsert's columns
    return Candidate(
        id=uuid.uuid4(),
        tenant_id=campaign.tenant_id,
        campaign_id=campaign.id,
        round=0,
        batch=i,
        layout_key=f"warm-up-{n}-{i}",
        placement={},
        generator="warm-up",
        generation={},
        integrity={},
        image_key=None,
        layer_key=None,
    )


def _candidate_updates(session: Session, campaign: Campaign) -> None:
    """qc's and rank's UPDATEs of the candidates they read (store_rows: the JSON columns and those assigned), for a
    batch of several: qc reads a generate batch (embedding deferred) and sets its verdict and embedding; rank reads
    the pool with embeddings and sets verdicts, scores, ranks and exclusions."""
    query = select(Candidate).where(Candidate.campaign_id == campaign.id, Candidate.layout_key.like("warm-up-2-%"))
    checked = _detached(session, list(session.scalars(query)))
    for cand in checked:
        cand.qc, cand.passed, cand.embedding = {}, True, None
    records.store_rows(session, list(checked))
    ranked = _detached(session, list(session.scalars(query.options(undefer(Candidate.embedding)))))
    for cand in ranked:
        cand.qc, cand.passed, cand.aesthetic, cand.rank, cand.excluded_reason = {}, True, None, 1, None
    records.store_rows(session, list(ranked))


def _detached(session: Session, rows: list[Candidate]) -> list[Candidate]:
    # The stages read in a session of their own and hand the rows over detached
    for row in rows:
        session.expunge(row)
    return rows


def _campaign_flushes(session: Session, campaign: Campaign) -> None:
    """A fan-out's last finish reading the campaign's state after its lean lock (a query of the deferred column), and
    the ORM's UPDATEs of a campaign (one per set of changed columns) that the finishes flush: the loop's bookkeeping
    (generate's last item), an event's sequence with it, alone, and with the review state (rank's, deliver's)."""
    session.expunge(campaign)
    campaign = records.lock_campaign_lean(session, campaign.id) or campaign
    _ = campaign.state  # read: the deferred column's query
    campaign.loop = {"warm-up": True}
    session.flush()
    campaign.event_sequence, campaign.loop = 1, {"warm-up": False}
    session.flush()
    campaign.event_sequence = 2
    session.flush()
    campaign.event_sequence, campaign.review_state = 3, ReviewState.PENDING
    session.flush()
