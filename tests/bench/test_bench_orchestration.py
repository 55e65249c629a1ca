"""What orchestration costs per candidate next to the models, on the embedded defaults with warm workers.

A real system (gateway, a cpu and a gpu worker, each its own process, as `make demo` runs them) runs the demo
campaign (brand, logo, painted library, brief and copy, a webhook endpoint) at two ad sizes, 1:1 and 4:5: 27
layouts per canvas, 54 candidates. The workers warm up first (stage modules and models loaded in each pool
process at start: workers.warmup); that time is reported, not counted in the campaign's.

Figures come from the workers' own instrumentation (their /metrics, diffed around each campaign) and from the
stage runs and records in Postgres, not from subtraction:
- stage function time per stage (onbrand_stage_duration_seconds) against the wall time of its runs (claim to
  finish, stage_runs) and the model time its records name (generation seconds, LLM call latency);
- engine time outside stage functions (onbrand_stage_engine_seconds: claim and finish transactions with their
  outbox rows and next runs, sends and the GPU dispatcher after commit), with the worker's CPU in it;
- the rest of each task (Celery's pre/post-run, tracing, heartbeat thread): task time (onbrand_task_duration_seconds)
  less stage function and engine;
- Celery hops: send to start in a pool process (onbrand_task_queue_wait_seconds, from a header the sender stamps);
- object storage calls (onbrand_storage_seconds), made from inside the stage functions: reads on the stage's thread,
  most writes (generate's candidates and layers, qc's creatives) on the stage's background writer, overlapping it;
  counted in full all the same.

Also printed: the CPU of the servers around the pool processes during the campaign (Postgres, Redis, Celery's main
processes: all their work, psutil), the work off the stage path (webhook deliveries, sweeps) and the cost model
(shared.costs, as the campaign report shows it). Three campaigns run one after the other on the warm workers; the
warm-up has done what a pool process's first campaign would otherwise do for the first time (workers.warmup), so
the first is measured like the others.

Targets (issue 22): orchestration CPU (the stage tasks' threads outside their stage functions: onbrand_task_cpu_seconds
less onbrand_stage_cpu_seconds) <= 5 ms per candidate, asserted on the median of the three campaigns (each is
printed): one campaign's figure moves by +-20 % from run to run on these shared cores, as every CPU time here does;
the first warm campaign, created to completed, <= 60 s on 2 cores.
"""

from __future__ import annotations

import contextlib
import statistics
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, literal, select
from sqlalchemy.orm import Session

from shared.cli import stack
from shared.cli.demo.library import build_library
from shared.cli.demo.run import (
    BRAND,
    BRIEF,
    COPY,
    TERMINAL_EVENTS,
    WebhookReceiver,
    add_logo,
    create_brand,
    register_webhook,
    upload_library,
)
from shared.config import Settings
from shared.costs import CampaignCost, campaign_cost
from shared.db.session import sqlalchemy_url
from shared.stages import PIPELINE
from tests.system import System, running_system

SIZES = [{"aspect": "1:1"}, {"aspect": "4:5"}]
CANDIDATES = 54  # 27 layouts (3x3 grid x 3 rotations) per canvas
TARGET_MS_PER_CANDIDATE = 5.0
TARGET_CAMPAIGN_S = 60.0
STAGE_TASKS = {f"onbrand.{name}" for name in PIPELINE}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# ---------------------------------------------------------------- the workers' metrics


def scrape(system: System) -> Samples:
    """Every sample of every worker's /metrics, summed over the workers."""
    total: Samples = defaultdict(float)
    for port in system.procs.metrics_ports.values():
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                total[(s.name, tuple(sorted(s.labels.items())))] += s.value
    return dict(total)


def delta(after: Samples, before: Samples) -> Samples:
    return {key: value - before.get(key, 0.0) for key, value in after.items() if value - before.get(key, 0.0)}


def total(samples: Samples, name: str, **labels: str) -> float:
    return sum(
        v for (n, ls), v in samples.items() if n == name and all(dict(ls).get(k) == w for k, w in labels.items())
    )


def by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = defaultdict(float)
    for (n, ls), v in samples.items():
        if n == name:
            out[dict(ls).get(label, "")] += v
    return dict(out)


# ---------------------------------------------------------------- what Postgres recorded


@dataclass
class Recorded:
    wall_s: float  # created_at to completed_at
    status: str
    candidates: int
    results: int
    runs: dict[str, list[float]] = field(default_factory=dict)  # stage -> each run's claim-to-finish seconds
    model_s: dict[str, float] = field(default_factory=dict)  # stage -> model time its records name


def recorded(url: str, campaign_id: str) -> Recorded:
    with psycopg.connect(url) as conn:
        status, wall = conn.execute(
            "SELECT status, extract(epoch FROM completed_at - created_at) FROM campaigns WHERE id = %s", (campaign_id,)
        ).fetchone() or ("missing", None)
        runs: dict[str, list[float]] = defaultdict(list)
        for stage, seconds in conn.execute(
            "SELECT stage, extract(epoch FROM finished_at - started_at) FROM stage_runs WHERE campaign_id = %s "
            "AND finished_at IS NOT NULL AND started_at IS NOT NULL ORDER BY queued_at",
            (campaign_id,),
        ):
            runs[stage].append(float(seconds))
        candidates, generation = conn.execute(
            "SELECT count(*), coalesce(sum(coalesce((generation->>'gpu_seconds')::float, "
            "(generation->>'cpu_seconds')::float, 0)), 0) FROM candidates WHERE campaign_id = %s",
            (campaign_id,),
        ).fetchone() or (0, 0.0)
        model = {"generate": float(generation)}
        for stage, ms in conn.execute(
            "SELECT stage, sum(latency_ms) FROM llm_calls WHERE campaign_id = %s GROUP BY stage", (campaign_id,)
        ):
            model[stage] = float(ms) / 1000
        (results,) = conn.execute("SELECT count(*) FROM results WHERE campaign_id = %s", (campaign_id,)).fetchone() or (
            0,
        )
    return Recorded(float(wall or 0.0), str(status), int(candidates), int(results), dict(runs), model)


def cost(url: str, campaign_id: str) -> CampaignCost:
    """shared.costs over the campaign, as the campaign report shows it."""
    with psycopg.connect(url) as conn:
        (tenant_id,) = conn.execute("SELECT tenant_id FROM campaigns WHERE id = %s", (campaign_id,)).fetchone() or (
            None,
        )
    engine = create_engine(sqlalchemy_url(url))
    try:
        with Session(engine) as session:
            return campaign_cost(session, tenant_id, uuid.UUID(campaign_id), Settings())
    finally:
        engine.dispose()


# ---------------------------------------------------------------- one campaign


@dataclass
class Measured:
    label: str
    campaign_id: str
    record: Recorded
    metrics: Samples
    processes: dict[str, float] = field(default_factory=dict)  # CPU seconds of the servers during the campaign

    def stage_fn(self) -> dict[str, float]:
        return by_label(self.metrics, "onbrand_stage_duration_seconds_sum", "stage")

    def engine(self, phase: str | None = None) -> float:
        labels = {"phase": phase} if phase else {}
        return total(self.metrics, "onbrand_stage_engine_seconds_sum", **labels)

    def engine_cpu(self) -> float:
        return total(self.metrics, "onbrand_stage_engine_cpu_seconds_total")

    def task_time(self, tasks: set[str]) -> float:
        per_task = by_label(self.metrics, "onbrand_task_duration_seconds_sum", "task")
        return sum(v for task, v in per_task.items() if task in tasks)

    def hops(self) -> tuple[float, int]:
        waits = by_label(self.metrics, "onbrand_task_queue_wait_seconds_sum", "task")
        counts = by_label(self.metrics, "onbrand_task_queue_wait_seconds_count", "task")
        return (
            sum(v for t, v in waits.items() if t in STAGE_TASKS),
            int(sum(v for t, v in counts.items() if t in STAGE_TASKS)),
        )

    def storage(self) -> tuple[float, int]:
        return total(self.metrics, "onbrand_storage_seconds_sum"), int(
            total(self.metrics, "onbrand_storage_seconds_count")
        )

    def storage_op(self, op: str) -> float:
        return total(self.metrics, "onbrand_storage_seconds_sum", op=op)

    def orchestration(self) -> dict[str, float]:
        """Wall seconds, summed over the campaign's stage tasks."""
        fn = sum(self.stage_fn().values())
        engine = self.engine()
        wrapper = self.task_time(STAGE_TASKS) - fn - engine
        return {"engine": engine, "task wrapper": wrapper, "celery hops": self.hops()[0], "storage": self.storage()[0]}

    def orchestration_cpu(self) -> float:
        """CPU seconds of the stage tasks' threads outside the stage functions: the engine's phases, Celery's
        pre/post-run, tracing, logs, the heartbeat's start and stop."""
        per_task = by_label(self.metrics, "onbrand_task_cpu_seconds_total", "task")
        task_cpu = sum(v for task, v in per_task.items() if task in STAGE_TASKS)
        return task_cpu - total(self.metrics, "onbrand_stage_cpu_seconds_total")


def run_campaign(
    system: System, servers: Servers, api: httpx.Client, brand_id: str, receiver: WebhookReceiver, label: str
) -> Measured:
    before, cpu_before = scrape(system), servers.cpu()
    body = {"brand_id": brand_id, "brief": BRIEF, "sizes": SIZES, "top_k": 3, "copy": COPY}
    campaign = api.post("/v1/campaigns", json=body, headers={"Idempotency-Key": str(uuid.uuid4())})
    assert campaign.status_code == 202, campaign.text
    campaign_id = campaign.json()["id"]
    deadline = time.monotonic() + 600
    while api.get(f"/v1/campaigns/{campaign_id}").json()["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, "campaign still running after 600 s"
        time.sleep(0.5)
    # its terminal webhook delivered: the outbox work the campaign caused is done too
    deadline = time.monotonic() + 30
    while not _terminal_event(receiver, campaign_id) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # the last metric writes of the pool processes
    url = system.env["ONBRAND_DATABASE_URL"]
    cpu = {name: seconds - cpu_before.get(name, 0.0) for name, seconds in servers.cpu().items()}
    return Measured(label, campaign_id, recorded(url, campaign_id), delta(scrape(system), before), cpu)


@dataclass
class Servers:
    """CPU time of the processes around the workers' pool processes: Postgres (the postmaster, its backends and
    those already gone), Redis and each Celery worker's main process (consumer, beat)."""

    postgres: int
    redis: int
    workers: dict[str, int]

    @classmethod
    def of(cls, stack_home: str, system: System) -> Servers:
        info = stack.status(Settings(home=Path(stack_home), database_url=None, redis_url=None))
        postmaster = int((Path(info["postgres"]["data_dir"]) / "postmaster.pid").read_text().split()[0])
        workers = {name: proc.pid for name, proc in system.procs.procs.items() if name.startswith("worker-")}
        return cls(postmaster, int(info["redis"]["pid"]), workers)

    def cpu(self) -> dict[str, float]:
        pg = psutil.Process(self.postgres)
        own = pg.cpu_times()
        seconds = own.user + own.system + own.children_user + own.children_system
        for child in pg.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                times = child.cpu_times()
                seconds += times.user + times.system
        found = {"postgres": seconds, "redis": sum(psutil.Process(self.redis).cpu_times()[:2])}
        for name, pid in self.workers.items():
            found[f"celery main ({name.removeprefix('worker-')})"] = sum(psutil.Process(pid).cpu_times()[:2])
        return found


def _terminal_event(receiver: WebhookReceiver, campaign_id: str) -> bool:
    events = [e for e in receiver.events() if isinstance(e, dict)]
    return any(e.get("type") in TERMINAL_EVENTS and (e.get("data") or {}).get("id") == campaign_id for e in events)


def host_reference(url: str, blocks: int = 5, per_block: int = 300) -> float:
    """Thread CPU (µs) of one reference transaction, median of `blocks`: an ORM session's BEGIN, one SELECT and
    COMMIT through SQLAlchemy and psycopg, the kind of work the engine's claims and finishes are made of. Printed
    beside the orchestration figure: this host's speed moves every CPU time here (the same code measured 5.3 and
    3.1 ms per candidate on two days), and this says which kind of day a run had."""
    engine = create_engine(sqlalchemy_url(url), pool_size=1)
    try:
        each = []
        for _ in range(blocks):
            started = time.thread_time()
            for _ in range(per_block):
                with Session(engine) as session, session.begin():
                    session.execute(select(literal(1))).all()
            each.append((time.thread_time() - started) * 1e6 / per_block)
        return statistics.median(each)
    finally:
        engine.dispose()


# ---------------------------------------------------------------- the report


def report(m: Measured, url: str) -> None:
    r, fn = m.record, m.stage_fn()
    print(
        f"\nBENCH orchestration · {m.label}: campaign {r.wall_s:.1f} s (created → completed), status {r.status}, "
        f"{r.candidates} candidates, {r.results} results"
    )
    print(
        "BENCH   stage       runs  run wall Σ  stage fn Σ  model Σ (records)  "
        "engine wall Σ (claim/finish/send)  engine CPU Σ (claim/finish/send)"
    )
    for stage in PIPELINE:
        runs = r.runs.get(stage, [])
        if not runs:
            continue
        phases = ("claim", "finish", "send")
        wall = [total(m.metrics, "onbrand_stage_engine_seconds_sum", stage=stage, phase=p) * 1000 for p in phases]
        cpu = [total(m.metrics, "onbrand_stage_engine_cpu_seconds_total", stage=stage, phase=p) * 1000 for p in phases]
        model = r.model_s.get(stage)
        print(
            f"BENCH   {stage:<10} {len(runs):>5}  {sum(runs):8.2f} s  {fn.get(stage, 0.0):8.2f} s  "
            f"{'-' if model is None else f'{model:8.2f} s':>17}  "
            f"{sum(wall):6.0f} ms ({'/'.join(f'{v:.0f}' for v in wall)})  "
            f"{sum(cpu):6.0f} ms ({'/'.join(f'{v:.0f}' for v in cpu)})"
        )
    parts = m.orchestration()
    hops, n_hops = m.hops()
    storage, n_storage = m.storage()
    per = {k: v * 1000 / max(1, r.candidates) for k, v in parts.items()}
    n = max(1, r.candidates)
    fan_out = {"generate", "qc"}
    engine_cpu = by_label(m.metrics, "onbrand_stage_engine_cpu_seconds_total", "stage")
    fixed = sum(v for stage, v in engine_cpu.items() if stage not in fan_out) * 1000
    batches = sum(len(r.runs.get(stage, [])) for stage in fan_out)
    print(
        f"BENCH   orchestration CPU per candidate (stage tasks' threads outside stage functions): "
        f"{m.orchestration_cpu() * 1000 / n:.2f} ms (engine phases {m.engine_cpu() * 1000 / n:.2f}: single-item "
        f"stages {fixed:.0f} ms per campaign, fan-out tasks {(m.engine_cpu() * 1000 - fixed) / max(1, batches):.1f} ms "
        f"each, {batches} of them)"
    )
    print(
        f"BENCH   orchestration wall per candidate: {sum(per.values()):.2f} ms = engine {per['engine']:.2f} "
        f"+ task wrapper {per['task wrapper']:.2f} + Celery hops {per['celery hops']:.2f} "
        f"({n_hops} hops, mean {hops * 1000 / max(1, n_hops):.1f} ms) + storage calls {per['storage']:.2f} "
        f"({n_storage} calls: get {m.storage_op('get') * 1000 / n:.2f}, put {m.storage_op('put') * 1000 / n:.2f}, "
        "most puts on the background writer)"
    )
    servers = ", ".join(f"{name} {seconds * 1000 / n:.2f}" for name, seconds in m.processes.items())
    print(f"BENCH   CPU of the servers during the campaign, per candidate (ms; all their work): {servers}")
    others = by_label(m.metrics, "onbrand_task_duration_seconds_count", "task")
    outbox = {t: n for t, n in others.items() if t not in STAGE_TASKS}
    names = ", ".join(f"{task.removeprefix('onbrand.')} x{n:.0f}" for task, n in sorted(outbox.items()))
    print(f"BENCH   off the stage path: {names} = {m.task_time(set(outbox)) * 1000:.0f} ms of worker time")
    c = cost(url, m.campaign_id)
    per_image = "-" if c.gpu_seconds_per_image is None else f"{c.gpu_seconds_per_image:.2f}"
    usd = "-" if c.usd_per_image is None else f"{c.usd_per_image:.5f}"
    stages = ", ".join(f"{k} {v:.1f}" for k, v in c.gpu_seconds_by_stage.items())
    print(
        f"BENCH   cost: {c.gpu_seconds:.1f} GPU-queue seconds ({stages})"
        f" / {c.delivered} delivered = {per_image} s per image = ${usd} at ${c.gpu_price_usd_per_hour}/h "
        f"(devices {', '.join(c.devices)}; generator's own time {c.generation_seconds:.2f} s)"
    )


# ---------------------------------------------------------------- the benchmark


@contextmanager
def warm_system(stack_urls: dict[str, str], home: Path) -> Iterator[tuple[System, dict[str, float], float]]:
    started = time.perf_counter()
    with running_system(stack_urls, home, f"bench_orch_{uuid.uuid4().hex[:8]}", ONBRAND_WARM_MODELS="true") as system:
        warm = system.procs.wait_warm(timeout=300.0)
        assert len(warm) == len(system.procs.metrics_ports), f"workers not warm after 300 s: {sorted(warm)}"
        yield system, warm, time.perf_counter() - started


@pytest.mark.bench
def test_orchestration_cost_per_candidate(stack_urls: dict[str, str], tmp_path: Path) -> None:
    with warm_system(stack_urls, tmp_path / "system") as (system, warm, ready_s):
        print(
            f"\nBENCH workers warm {ready_s:.1f} s after start (gateway, workers and warm-up); the pool processes' "
            f"warm-up: {', '.join(f'{node} {s:.1f} s' for node, s in sorted(warm.items()))}"
        )
        url = system.env["ONBRAND_DATABASE_URL"]
        reference = [host_reference(url)]
        servers = Servers.of(stack_urls["home"], system)
        tenant = system.tenant("bench")
        api = httpx.Client(base_url=system.url, headers={"Authorization": f"Bearer {tenant['api_key']}"}, timeout=60)
        with WebhookReceiver(tmp_path / "webhooks.jsonl") as receiver:
            register_webhook(api, receiver.url)
            brand_id = create_brand(api, BRAND)
            add_logo(api, brand_id)
            upload_library(api, brand_id, build_library(tmp_path / "library"))
            time.sleep(5)  # the library's embedding tasks are done before the campaign starts
            labels = ("first warm campaign", "second", "third")
            runs = [run_campaign(system, servers, api, brand_id, receiver, label) for label in labels]
        reference.append(host_reference(url))
        for measured in runs:
            report(measured, url)
    for measured in runs:
        assert measured.record.status == "completed"
        assert measured.record.runs.get("generate") and measured.record.candidates >= CANDIDATES
    per_candidate = [m.orchestration_cpu() * 1000 / m.record.candidates for m in runs]
    median = statistics.median(per_candidate)
    each = ", ".join(f"{v:.2f}" for v in per_candidate)
    print(f"BENCH orchestration CPU per candidate, median of {len(runs)} campaigns: {median:.2f} ms ({each})")
    unit = statistics.mean(reference)
    print(
        f"BENCH host reference: {reference[0]:.0f} µs of CPU per SQLAlchemy transaction (BEGIN, SELECT, COMMIT) "
        f"before the campaigns, {reference[1]:.0f} after; the median above is {median * 1000 / unit:.1f} of them"
    )
    assert median <= TARGET_MS_PER_CANDIDATE, f"orchestration CPU {median:.2f} ms per candidate ({each})"
    first = runs[0]
    assert first.record.wall_s <= TARGET_CAMPAIGN_S, f"warm campaign {first.record.wall_s:.1f} s"
