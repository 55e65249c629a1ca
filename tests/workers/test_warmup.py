"""workers.warmup: what a pool process loads at start, per queue, so that no campaign task pays a first load."""

from __future__ import annotations

import logging
import uuid

import pytest
from sqlalchemy import func, select

from shared import metrics
from shared.config import Settings
from shared.db.models import (
    Brand,
    Campaign,
    CampaignStatus,
    Candidate,
    DamPush,
    LlmCall,
    Result,
    StageRun,
    Tenant,
    WebhookDelivery,
)
from shared.db.session import get_engine, session_scope
from shared.stages import STAGES
from tests.factories import make_campaign
from tests.sql_events import compiled_statements
from workers import warmup
from workers.engine import records, warm

CPU = {"llm", "retrieval", "scoring", "webhooks"}
GPU = {"segment", "generate", "qc"}


def names(queues: set[str], **settings: object) -> list[str]:
    return [step.name for step in warmup.steps(queues, Settings(**settings))]  # type: ignore[arg-type]


def test_every_stage_of_the_workers_queues_is_imported() -> None:
    for queues in (CPU, GPU):
        expected = {f"{s.name} stage module" for s in STAGES if s.queue in queues}
        assert expected and expected <= set(names(queues))
    assert "qc stage module" not in names(CPU) and "decompose stage module" not in names(GPU)


def test_the_llm_queue_loads_the_local_llm_decompose_uses() -> None:
    assert "local LLM" in names(CPU, llm_backend="local")
    assert "local LLM" in names(CPU, llm_backend="rules", llm_stage_backends={"decompose": "local"})
    # scale and the guideline check fall back to classical code with a text-only model: no LLM for them
    assert "local LLM" not in names(CPU, llm_backend="rules", llm_stage_backends={"scale": "local"})
    assert "local LLM" not in names(GPU, llm_backend="local")


def test_ocr_torch_and_pixel_models_where_their_stages_run() -> None:
    gpu, cpu = names(GPU), names(CPU)
    assert {"OCR reader", "MS-SSIM (torch)", "segment model (matting)", "generate model (compositor)"} <= set(gpu)
    assert {"OCR reader", "text embedder", "rank model (classical)"} <= set(cpu)  # deliver reads creatives back
    assert "MS-SSIM (torch)" not in cpu and "text embedder" not in gpu
    assert names(GPU)[0] == names(CPU)[0] == "database connection"
    assert "GPU pool read" in names(GPU) and "GPU pool read" in cpu  # any finish may run the dispatcher
    assert "rank and deliver finishes" in cpu and "rank and deliver finishes" not in gpu
    assert "prompt tokenizer" in names(CPU, generator="sd-inpaint") and "prompt tokenizer" not in cpu


def test_a_failing_step_is_reported_and_the_rest_still_run() -> None:
    ran: list[str] = []

    def broken() -> None:
        raise OSError("weights missing")

    done = warmup.run(
        [warmup.Step("broken", broken), warmup.Step("fine", lambda: ran.append("fine"))],
    )
    assert [(d.name, d.ok) for d in done] == [("broken", False), ("fine", True)]
    assert ran == ["fine"] and all(d.seconds >= 0 for d in done)


def _first_writes(cid: str) -> None:
    """What a campaign's first tasks write outside the claim and finish statements: a fan-out, a run claimed
    before it existed, a language stage's call log, generate's candidates."""
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(cid))
        assert campaign is not None
        records.create_runs(session, campaign, "qc", 0, [0, 1, 2])
        records.create_runs(session, campaign, "retrieve", 0, [0])
        records.claim_run(session, campaign, None, ("caption", 0, 0), "test")
        records.store_rows(session, [warm._llm_call(campaign, 0)])
        records.store_rows(session, [warm._candidate(campaign, 2, i) for i in range(2)])
    with session_scope() as session:  # qc's batch, read in a session of its own (workers.pipeline.qc._batch)
        checked = list(session.scalars(select(Candidate).where(Candidate.campaign_id == uuid.UUID(cid))))
    for cand in checked:  # what qc assigns (workers.pipeline.qc.check_one, run)
        cand.qc, cand.passed, cand.embedding = {"policy": {"passed": True}}, True, None
    with session_scope() as session:
        records.store_rows(session, list(checked))
    with session_scope() as session:  # generate's last finish: the state read after a lean lock, the loop flushed
        campaign = records.lock_campaign_lean(session, uuid.UUID(cid))
        assert campaign is not None and campaign.state == {}
        campaign.loop = {"generate": True}
    with session_scope() as session:  # rank's finish: its event and the loop's bookkeeping, flushed by the ORM
        campaign = session.get(Campaign, uuid.UUID(cid))
        assert campaign is not None
        campaign.event_sequence, campaign.loop = campaign.event_sequence + 1, {"rank": True}


def test_the_warm_up_compiles_a_campaigns_first_row_writes_and_leaves_no_row(
    fresh_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    cid = make_campaign()
    tables = (Tenant, Brand, Campaign, StageRun, Candidate, LlmCall, WebhookDelivery, Result, DamPush)

    def counts() -> dict[str, int]:
        with session_scope() as session:
            return {t.__tablename__: session.scalar(select(func.count()).select_from(t)) or 0 for t in tables}

    before = counts()
    cache = get_engine()._compiled_cache
    assert cache is not None
    cache.clear()  # as in a new pool process: nothing compiled
    with caplog.at_level(logging.INFO):
        warm.statements()
        warm.finishes()
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert counts() == before  # the throwaway tenants, brands, campaigns and their rows: rolled back
    with compiled_statements() as compiled:
        _first_writes(cid)
    written = {"INSERT INTO STAGE_RUNS", "INSERT INTO LLM_CALLS", "INSERT INTO CANDIDATES", "UPDATE CANDIDATES SET"}
    written |= {"UPDATE CAMPAIGNS SET", "SELECT CAMPAIGNS.STATE FROM"}
    assert not written & set(compiled), compiled
    with session_scope() as session:  # and they did write: the statements the warm-up compiled are the real ones
        assert session.scalar(select(func.count()).select_from(StageRun)) == 5
        assert session.scalar(select(Campaign.loop).where(Campaign.id == uuid.UUID(cid))) == {"rank": True}
        assert session.scalar(select(func.count()).select_from(Candidate).where(Candidate.passed.is_(True))) == 2
    _passing(cid)
    with compiled_statements() as compiled:
        _scoring_finishes(cid)
    assert not compiled, compiled  # rank's results, counts and decision, deliver's completion: compiled by finishes()
    with session_scope() as session:  # and they did write
        assert session.scalar(select(func.count()).select_from(Result)) == 2
        assert session.scalar(select(Campaign.status).where(Campaign.id == uuid.UUID(cid))) == CampaignStatus.COMPLETED


def _passing(cid: str) -> None:
    """The campaign's candidates stored and passed, one result enough, deliver claimed (as workers.engine.warm.finishes
    has them)."""
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(cid))
        assert campaign is not None
        campaign.top_k, campaign.status, campaign.current_stage = 1, CampaignStatus.RUNNING, "deliver"  # its claim's
        for i, cand in enumerate(session.scalars(select(Candidate).where(Candidate.campaign_id == campaign.id))):
            cand.image_key, cand.layer_key, cand.rank = f"c/{i}.png", f"c/{i}.layers.png", i + 1
            cand.qc = {"policy": {"fully_checked": True, "needs_review": False, "fallback": False, "review": []}}


def _scoring_finishes(cid: str) -> None:
    """rank's finish (its run succeeded, its finalize: results, events, the loop's decision), then deliver's (the
    completion), each as workers.engine.runner._finished runs them."""
    from workers.pipeline import deliver, rank

    with session_scope() as session:
        campaign = records.lock_campaign(session, uuid.UUID(cid))
        assert campaign is not None
        records.create_runs(session, campaign, "rank", 0, [0])
        records.succeeded(session, campaign, "rank", 0, 0, {})
        chosen = list(session.scalars(select(Candidate).where(Candidate.campaign_id == campaign.id)))
        assert rank.write_results(session, campaign, chosen, "rank") == [("onbrand.deliver", cid, 0, 0)]
        records.write_campaign(session, campaign)
    with session_scope() as session:
        campaign = records.lock_campaign(session, uuid.UUID(cid))
        assert campaign is not None
        deliver.complete(session, campaign)
        records.write_campaign(session, campaign)


def test_the_warm_up_creates_the_metric_series_of_its_queues_tasks() -> None:
    series = [(metrics.ENGINE_CPU, ("rank", "finish")), (metrics.TASK_QUEUE_WAIT, ("onbrand.deliver",))]
    series += [(metrics.GPU_DISPATCH_WAIT, ("qc",)), (metrics.TASK_DURATION, ("onbrand.rank", "success"))]
    for metric, labels in [*series, (metrics.ENGINE_CPU, ("qc", "finish"))]:
        if labels in metric._metrics:
            metric.remove(*labels)
    steps = {step.name: step for step in warmup.steps(CPU, Settings())}
    steps["metric series"].run()
    assert all(labels in metric._metrics for metric, labels in series)
    assert ("qc", "finish") not in metrics.ENGINE_CPU._metrics  # the gpu worker's stage: not the cpu worker's
