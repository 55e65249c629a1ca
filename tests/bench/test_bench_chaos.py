"""Chaos with production settings: several campaigns while, for a few minutes, something dies every few seconds.

Real processes on their own embedded Postgres and Redis (fixed ports for the whole run): a gateway, 2 CPU workers
(one with 2 pool processes), 2 GPU-queue workers and the beat, each its own OS process, with the broker's visibility
timeout at its production 3600 s (a message of a SIGKILLed worker comes back only after an hour: recovering sooner is
the stage-run leases' and the beat's sweep's job, not Redis's). Six small campaigns (512 px, top_k 2, one size;
the language stages on the rules backend, see cluster()), two before the faults and four while they go on
(see run_chaos), and seeded random faults: SIGKILL of a pool process (the parent forks another and rejects the
task back to the queue), SIGKILL of a whole worker's process group and a restart under the same node name (what
a lost node looks like), once SIGKILL of Redis and once of Postgres, each restarted on its port and data dir.

Asserted, after the faults stop: every campaign ends completed or partial; per round as many candidates as the
plan laid out (one per layout, no layout twice), at most top_k results per review round and no candidate among
them twice; each campaign's terminal webhook arrived (signed, one event id); during the Postgres outage the
gateway answered 503 + Retry-After, never another 5xx; the last campaign finished within TARGET_RECOVERY_SECONDS
of the last fault; campaigns were in flight at the Redis kill, the Postgres kill and the last fault. Everything
is printed first (the fault log, per-campaign figures), then what failed.

ONBRAND_CHAOS_SEED and ONBRAND_CHAOS_SECONDS change the run (defaults 20 and 150).
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest
from standardwebhooks import Webhook

from shared.cli import stack
from shared.cli.demo.library import build_library
from shared.cli.demo.run import WebhookReceiver, upload_library
from shared.cli.procs import Processes, base_env, free_port, run_cli
from shared.config import Settings
from tests.system import kill_postgres, kill_redis, restart_postgres, restart_redis

pytestmark = [pytest.mark.bench, pytest.mark.slow]

SEED = int(os.environ.get("ONBRAND_CHAOS_SEED", "20"))
CHAOS_SECONDS = float(os.environ.get("ONBRAND_CHAOS_SECONDS", "150"))
TARGET_RECOVERY_SECONDS = 120.0  # the target: last fault -> last campaign finished
SETTLE_SECONDS = 480.0  # how long after the last fault the test waits before calling a campaign lost
WEBHOOK_GRACE_SECONDS = 90.0
REDIS_DOWN_SECONDS = 4.0
POSTGRES_DOWN_SECONDS = 15.0
TOP_K = 2
CPU_WORKERS = {"cpu-1": 2, "cpu-2": 1}  # node -> pool processes
GPU_WORKERS = ("gpu-1", "gpu-2")  # one process each, as on a GPU node
BRIEFS = [
    "the running shoe on an urban street at sunset",
    "the running shoe on a beach at dawn",
    "the running shoe in a forest clearing",
    "the running shoe on a studio backdrop",
    "the running shoe on a city rooftop",
    "the running shoe in a gym",
]
UP_FRONT = 2  # campaigns submitted before the faults; the others during them, at these shares of the time:
LATER = (0.15, 0.35, 0.55)  # and the last one as the faults end, see final_fault
TERMINAL = ("completed", "partial", "failed", "cancelled")


@dataclass
class Cluster:
    stack_settings: Settings
    procs: Processes
    url: str
    database_url: str
    api: httpx.Client


@dataclass
class Fault:
    at: float  # seconds since the chaos started
    kind: str
    target: str
    detail: str = ""


@dataclass
class ChaosLog:
    started: float = field(default_factory=time.time)
    faults: list[Fault] = field(default_factory=list)
    last_fault_at: float = 0.0  # epoch seconds of the last kill
    outage: list[tuple[int, bool, str]] = field(default_factory=list)  # (status, Retry-After?, code) in the PG outage

    def record(self, kind: str, target: str, detail: str = "") -> None:
        self.last_fault_at = time.time()
        fault = Fault(round(self.last_fault_at - self.started, 1), kind, target, detail)
        self.faults.append(fault)
        print(f"CHAOS fault t=+{fault.at:6.1f}s {kind:<10} {target:<10} {detail}", flush=True)


# ---------------------------------------------------------------- the cluster


@contextmanager
def cluster(home: Path) -> Iterator[Cluster]:
    """Own embedded Postgres + Redis, gateway, workers and beat; every process stopped on the way out."""
    stack_settings = Settings(home=home / "stack", database_url=None, redis_url=None)
    try:
        record = stack.up(stack_settings)
    except BaseException:
        stack.down(stack_settings)
        raise
    port = free_port()
    env = base_env(
        home / "app",
        ONBRAND_DATABASE_URL=record["database_url"],
        ONBRAND_REDIS_URL=record["redis_url"],
        ONBRAND_PUBLIC_URL=f"http://127.0.0.1:{port}",
        ONBRAND_EGRESS_ALLOWLIST="127.0.0.0/8",  # the webhook receiver is on loopback
        ONBRAND_BROKER_VISIBILITY_TIMEOUT="3600",  # production: no help from Redis within the test
        ONBRAND_BROKER_RESTORE_THROTTLE="10",
        ONBRAND_SEARCH_EMBED_TIMEOUT_SECONDS="15",  # 2 shared cores: a query embedding can take seconds
        # The embedded SmolLM2 takes ~40 s a decompose on 2 shared cores: with a fault every few seconds hardly
        # a language task would finish, and the run would measure the LLM, not recovery. Rules answer at once.
        ONBRAND_LLM_BACKEND="rules",
    )
    procs = Processes(env=env, logs=home / "logs")
    api = httpx.Client(timeout=30)
    try:
        run_cli(env, "migrate")
        url = procs.gateway(port)
        for node, concurrency in CPU_WORKERS.items():
            procs.worker("cpu", name=node, concurrency=concurrency)
        for node in GPU_WORKERS:
            procs.worker("gpu", name=node)
        procs.start("beat", "beat")
        tenant = run_cli(env, "tenants", "create", "chaos")
        api = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {_key(tenant)}"}, timeout=30)
        yield Cluster(stack_settings, procs, url, record["database_url"], api)
    finally:
        api.close()
        procs.stop_all()
        print("CHAOS cleanup:", "; ".join(stack.down(stack_settings)), flush=True)


def _key(tenant_json: str) -> str:
    return str(json.loads(tenant_json)["api_key"])


def _restart_worker(procs: Processes, node: str) -> None:
    if node in CPU_WORKERS:
        procs.worker("cpu", name=node, concurrency=CPU_WORKERS[node])
    else:
        procs.worker("gpu", name=node)


# ---------------------------------------------------------------- faults


def kill_pool_child(c: Cluster, rng: random.Random, log: ChaosLog) -> None:
    node = rng.choice(sorted([*CPU_WORKERS, *GPU_WORKERS]))
    proc = c.procs.procs.get(f"worker-{node}")
    children = sorted(psutil.Process(proc.pid).children(recursive=True), key=lambda p: p.pid) if proc else []
    if not children:
        print(f"CHAOS skip: {node} has no pool process (starting up)", flush=True)
        return
    child = children[rng.randrange(len(children))]
    with suppress(psutil.NoSuchProcess):
        child.send_signal(signal.SIGKILL)
        log.record("pool-child", node, f"pid {child.pid}")


def kill_worker(c: Cluster, rng: random.Random, log: ChaosLog) -> None:
    node = rng.choice(sorted([*CPU_WORKERS, *GPU_WORKERS]))
    c.procs.stop(f"worker-{node}", sig=signal.SIGKILL)  # the whole group: no warm shutdown, nothing acked
    down = rng.uniform(1.0, 4.0)
    log.record("worker", node, f"restarted after {down:.1f} s")
    time.sleep(down)
    _restart_worker(c.procs, node)


def kill_redis_once(c: Cluster, rng: random.Random, log: ChaosLog) -> None:
    pid = kill_redis(c.stack_settings)
    log.record("redis", "redis", f"pid {pid}, down {REDIS_DOWN_SECONDS:.0f} s")
    time.sleep(REDIS_DOWN_SECONDS)
    restart_redis(c.stack_settings)
    print(f"CHAOS redis back after {time.time() - log.last_fault_at:.1f} s", flush=True)


def kill_postgres_once(c: Cluster, rng: random.Random, log: ChaosLog, campaigns: list[str]) -> None:
    pid = kill_postgres(c.stack_settings)
    log.record("postgres", "postgres", f"pid {pid}, down {POSTGRES_DOWN_SECONDS:.0f} s")
    until = time.monotonic() + POSTGRES_DOWN_SECONDS
    while time.monotonic() < until:  # what a client polling its campaign sees meanwhile
        log.outage.append(_sample(c.api, rng.choice(campaigns)))
        time.sleep(0.25)
    restart_postgres(c.stack_settings)
    print(f"CHAOS postgres back after {time.time() - log.last_fault_at:.1f} s", flush=True)


def _sample(api: httpx.Client, campaign_id: str) -> tuple[int, bool, str]:
    try:
        response = api.get(f"/v1/campaigns/{campaign_id}", timeout=10)
    except httpx.HTTPError as exc:
        return 0, False, type(exc).__name__
    code = ""
    if response.headers.get("content-type", "").startswith("application/problem+json"):
        code = str(response.json().get("code", ""))
    return response.status_code, "retry-after" in response.headers, code


def run_chaos(c: Cluster, campaigns: Campaigns, seed: int, seconds: float) -> ChaosLog:
    """A fault every 4-9 s for `seconds`: pool processes and whole workers at random, Redis once at 30 %, Postgres
    once at 60 % of the time. Three more campaigns go in at 15, 35 and 55 %, the last one as the faults end: work is
    in flight up to the last faults, which otherwise hit an idle system once the first campaigns are done."""
    rng, log = random.Random(seed), ChaosLog()
    due: list[tuple[float, Callable[[], None]]] = [
        (0.3 * seconds, lambda: kill_redis_once(c, rng, log)),
        (0.6 * seconds, lambda: kill_postgres_once(c, rng, log, list(campaigns.secrets))),
    ]
    due += [
        (share * seconds, lambda b=brief: campaigns.submit(b))
        for share, brief in zip(LATER, BRIEFS[UP_FRONT:-1], strict=True)
    ]
    due.sort(key=lambda entry: entry[0])
    while (elapsed := time.time() - log.started) < seconds:
        if due and elapsed >= due[0][0]:
            due.pop(0)[1]()
        elif rng.random() < 0.65:
            kill_pool_child(c, rng, log)
        else:
            kill_worker(c, rng, log)
        time.sleep(rng.uniform(4.0, 9.0))
    for _, action in due:  # a short ONBRAND_CHAOS_SECONDS: whatever is left still runs
        action()
    campaigns.submit(BRIEFS[-1])
    final_fault(c, campaigns, log)
    return log


def final_fault(c: Cluster, campaigns: Campaigns, log: ChaosLog, timeout: float = 120.0) -> None:
    """The last fault hits work for sure: the whole worker running a GPU stage of the last campaign is SIGKILLed
    (its run's lease must lapse and the sweep re-send it: the slowest recovery there is). Campaigns can be done in
    seconds on an idle machine, so random faults alone may end on an idle system."""
    last = list(campaigns.secrets)[-1]
    deadline = time.monotonic() + timeout
    with psycopg.connect(c.database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT stage, claimed_by FROM stage_runs WHERE campaign_id = %s AND status = 'running' "
                "AND stage IN ('segment', 'generate', 'qc') AND claimed_by IS NOT NULL LIMIT 1",
                (last,),
            ).fetchone()
            if row and (node := _node_of(c.procs, int(row[1].rpartition(":")[2]))):
                c.procs.stop(f"worker-{node}", sig=signal.SIGKILL)
                log.record("worker", node, f"running {row[0]} of the last campaign {last}; restarted at once")
                _restart_worker(c.procs, node)
                return
            time.sleep(0.05)
    print(f"CHAOS no GPU stage of {last} seen running within {timeout:.0f} s: no final fault", flush=True)


def _node_of(procs: Processes, pid: int) -> str | None:
    """The worker node whose pool process `pid` is."""
    for node in [*CPU_WORKERS, *GPU_WORKERS]:
        proc = procs.procs.get(f"worker-{node}")
        with suppress(psutil.NoSuchProcess):
            if proc and pid in {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}:
                return node
    return None


# ---------------------------------------------------------------- campaigns and what to check


@dataclass
class Campaigns:
    api: httpx.Client
    brand_id: str
    webhook_url: str
    secrets: dict[str, str] = field(default_factory=dict)  # campaign id -> its webhook secret

    def submit(self, brief: str) -> None:
        """POST as a client would: retried under one Idempotency-Key while the gateway cannot answer."""
        body = {
            "brand_id": self.brand_id,
            "brief": brief,
            "sizes": [{"width": 512, "height": 512}],
            "top_k": TOP_K,
            "webhook_url": self.webhook_url,
        }
        headers = {"Idempotency-Key": f"chaos-{brief}"}
        for _ in range(10):
            with suppress(httpx.HTTPError):
                response = self.api.post("/v1/campaigns", json=body, headers=headers)
                if response.status_code == 202:
                    self.secrets[response.json()["id"]] = response.json()["webhook_secret"]
                    print(f"CHAOS submitted {response.json()['id']}: {brief}", flush=True)
                    return
                assert response.status_code >= 500, response.text
            time.sleep(2)
        raise AssertionError(f"could not submit {brief!r}")


def wait_started(c: Cluster, timeout: float = 300.0) -> None:
    """Until a worker finished a first stage: the workers have loaded their models, faults now hit real work."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(c.database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            if conn.execute("SELECT 1 FROM stage_runs WHERE status = 'succeeded' LIMIT 1").fetchone():
                return
            time.sleep(1)
    raise TimeoutError("no stage finished: the workers never started working")


def wait_terminal(c: Cluster, ids: list[str], deadline: float) -> dict[str, dict[str, Any]]:
    """The last body seen per campaign, once all are terminal or at the deadline (errors are retried)."""
    last: dict[str, dict[str, Any]] = {}
    while time.time() < deadline:
        for cid in ids:
            if last.get(cid, {}).get("status") in TERMINAL:
                continue
            with suppress(httpx.HTTPError, ValueError):
                response = c.api.get(f"/v1/campaigns/{cid}")
                if response.status_code == 200:
                    last[cid] = response.json()
        if all(last.get(cid, {}).get("status") in TERMINAL for cid in ids):
            break
        time.sleep(2)
    return last


def db_checks(database_url: str, cid: str) -> tuple[list[str], dict[str, Any]]:
    """(failures, figures) of one campaign's rows: candidates per round vs the plan, results per review round."""
    failures: list[str] = []
    with psycopg.connect(database_url) as conn:
        planned = dict(
            conn.execute(
                "SELECT round, (output->>'layouts')::int FROM stage_runs "
                "WHERE campaign_id = %s AND stage = 'plan' AND status = 'succeeded'",
                (cid,),
            ).fetchall()
        )
        made = {
            rnd: (n, distinct)
            for rnd, n, distinct in conn.execute(
                "SELECT round, count(*), count(DISTINCT layout_key) FROM candidates "
                "WHERE campaign_id = %s GROUP BY round",
                (cid,),
            ).fetchall()
        }
        results = conn.execute(
            "SELECT review_round, count(*), count(DISTINCT candidate_id) FROM results "
            "WHERE campaign_id = %s GROUP BY review_round",
            (cid,),
        ).fetchall()
        retried = conn.execute(
            "SELECT count(*) FILTER (WHERE attempts > 1), coalesce(max(attempts), 0) FROM stage_runs "
            "WHERE campaign_id = %s",
            (cid,),
        ).fetchone()
    if {r: n for r, (n, _) in made.items()} != planned:
        failures.append(f"{cid}: candidates per round {made} != the plan's layouts per round {planned}")
    failures += [f"{cid}: round {r} has {n} candidates for {d} layouts" for r, (n, d) in made.items() if n != d]
    for review_round, n, distinct in results:
        if n > TOP_K or distinct != n:
            failures.append(f"{cid}: review round {review_round}: {n} results, {distinct} distinct candidates")
    figures = {
        "rounds": len(planned),
        "candidates": sum(n for n, _ in made.values()),
        "results": sum(n for _, n, _ in results),
        "retried_runs": retried[0] if retried else 0,
        "max_attempts": retried[1] if retried else 0,
    }
    return failures, figures


def webhook_checks(receiver: WebhookReceiver, secrets: dict[str, str], bodies: dict[str, Any]) -> list[str]:
    """Each campaign's terminal event arrived, signed with its secret, under one event id, naming its status."""
    deadline = time.time() + WEBHOOK_GRACE_SECONDS
    while True:
        terminal = _terminal_events(receiver)
        if all(cid in terminal for cid in secrets) or time.time() > deadline:
            break
        time.sleep(1)
    failures = []
    for cid, secret in secrets.items():
        got = terminal.get(cid, [])
        if not got:
            failures.append(f"{cid}: no terminal webhook")
            continue
        ids = {entry["headers"].get("webhook-id") for entry, _ in got}
        types = {event["type"] for _, event in got}
        if len(ids) != 1:
            failures.append(f"{cid}: {len(ids)} different terminal events {sorted(types)}")
        if types != {f"campaign.{bodies.get(cid, {}).get('status')}"}:
            failures.append(f"{cid}: terminal webhook {sorted(types)} but status {bodies.get(cid, {}).get('status')}")
        try:
            Webhook(secret).verify(got[0][0]["body"], got[0][0]["headers"])
        except Exception as exc:  # noqa: BLE001 - any verification error is the finding
            failures.append(f"{cid}: terminal webhook signature does not verify: {exc}")
    return failures


def _terminal_events(receiver: WebhookReceiver) -> dict[str, list[tuple[dict[str, Any], dict[str, Any]]]]:
    found: dict[str, list[tuple[dict[str, Any], dict[str, Any]]]] = {}
    for entry in receiver.records():
        with suppress(ValueError):
            event = json.loads(entry["body"])
            if event.get("type") in {f"campaign.{s}" for s in TERMINAL}:
                found.setdefault(str(event["data"]["campaign_id"]), []).append((entry, event))
    return found


def _epoch(stamp: str | None) -> float | None:
    return datetime.fromisoformat(stamp).timestamp() if stamp else None


def timeline(body: dict[str, Any], since: float) -> None:
    """The last campaign's stages, relative to the last fault: where the time after it went (work or waiting)."""
    print(f"CHAOS last campaign {body['id']}, its stages in seconds since the last fault (first start, last finish):")
    for stage in body.get("stages", []):
        start, end = _epoch(stage.get("started_at")), _epoch(stage.get("finished_at"))
        if start is None or end is None or end < since:
            continue
        print(f"CHAOS   {stage['stage']:<10} {start - since:+7.1f} {end - since:+7.1f}")


def _overlap(log: ChaosLog, bodies: dict[str, Any], ids: list[str]) -> list[str]:
    """Campaigns in flight at the Redis kill, the Postgres kill and the last fault: a fault that hit an idle system
    proves nothing, so none in flight is a failure of the run, not a pass."""
    moments = {f.kind: log.started + f.at for f in log.faults if f.kind in ("redis", "postgres")}
    moments["last fault"] = log.last_fault_at
    counts = {name: _in_flight(bodies, ids, at) for name, at in moments.items()}
    print(f"CHAOS campaigns in flight at: {counts}", flush=True)
    return [f"no campaign was in flight at the {name}" for name, n in counts.items() if n == 0]


def _in_flight(bodies: dict[str, Any], ids: list[str], at: float) -> int:
    spans = [
        (_epoch(bodies.get(cid, {}).get("created_at")), _epoch(bodies.get(cid, {}).get("completed_at"))) for cid in ids
    ]
    return sum(1 for start, end in spans if start is not None and start <= at and (end is None or end > at))


def report(log: ChaosLog, bodies: dict[str, Any], figures: dict[str, dict[str, Any]], ids: list[str]) -> list[str]:
    """Print the figures; the failures among them (recovery time, outage answers, statuses)."""
    failures = []
    kinds: dict[str, int] = {}
    for fault in log.faults:
        kinds[fault.kind] = kinds.get(fault.kind, 0) + 1
    print(f"CHAOS seed {SEED}, {CHAOS_SECONDS:.0f} s of faults: {len(log.faults)} faults {kinds}", flush=True)
    finished = []
    for cid in ids:
        body = bodies.get(cid, {})
        created, done = _epoch(body.get("created_at")), _epoch(body.get("completed_at"))
        took = f"{done - created:6.1f} s" if created and done else "     - "
        print(
            f"CHAOS campaign {cid} {body.get('status', 'unknown'):<9} {took} at {body.get('current_stage')} "
            f"{figures.get(cid, {})}",
            flush=True,
        )
        if body.get("status") not in ("completed", "partial"):
            failures.append(f"{cid}: ended {body.get('status')} at {body.get('current_stage')}: {body.get('error')}")
        if done:
            finished.append(done)
    if len(finished) == len(ids):
        recovery = max(0.0, max(finished) - log.last_fault_at)
        last = max(ids, key=lambda cid: _epoch(bodies[cid]["completed_at"]) or 0.0)
        timeline(bodies[last], log.last_fault_at)
        print(
            f"CHAOS last fault -> last campaign finished: {recovery:.1f} s (target < {TARGET_RECOVERY_SECONDS:.0f} s)"
        )
        if recovery > TARGET_RECOVERY_SECONDS:
            failures.append(f"recovery took {recovery:.1f} s after the last fault")
    else:
        print(
            f"CHAOS {len(ids) - len(finished)} of {len(ids)} campaigns unfinished "
            f"{SETTLE_SECONDS:.0f} s after the last fault"
        )
    failures += _overlap(log, bodies, ids)
    answers: dict[str, int] = {}
    for status, retry_after, code in log.outage:
        key = f"{status}{' +Retry-After' if retry_after else ''}{f' {code}' if code else ''}"
        answers[key] = answers.get(key, 0) + 1
    print(f"CHAOS GET /v1/campaigns/{{id}} during the Postgres outage ({len(log.outage)} samples): {answers}")
    bad = [a for a in log.outage if a[0] >= 500 and not (a[0] == 503 and a[1])]
    if bad:
        failures.append(f"{len(bad)} of {len(log.outage)} reads in the Postgres outage were not 503 + Retry-After")
    return failures


# ---------------------------------------------------------------- the test


@pytest.mark.timeout(1800)
def test_chaos_campaigns_survive_random_kills(tmp_path: Path) -> None:
    with cluster(tmp_path) as c, WebhookReceiver(tmp_path / "webhooks.jsonl") as receiver:
        brand = c.api.post("/v1/brands", json={"name": "Stride", "palette": ["#E4572E", "#17BEBB"]}).json()
        upload_library(c.api, brand["id"], build_library(tmp_path / "library"))
        campaigns = Campaigns(c.api, brand["id"], receiver.url)
        for brief in BRIEFS[:UP_FRONT]:
            campaigns.submit(brief)
        wait_started(c)
        log = run_chaos(c, campaigns, SEED, CHAOS_SECONDS)
        secrets = campaigns.secrets
        ids = list(secrets)
        bodies = wait_terminal(c, ids, log.last_fault_at + SETTLE_SECONDS)
        failures, figures = [], {}
        for cid in ids:
            found, figures[cid] = db_checks(c.database_url, cid)
            failures += found
        failures += report(log, bodies, figures, ids)
        failures += webhook_checks(receiver, secrets, bodies)
        for line in failures:
            print(f"CHAOS FAILED {line}", flush=True)
        assert not failures, f"{len(failures)} chaos checks failed (see the CHAOS lines)"
