"""Fair share of the GPU workers between tenants: one tenant's backlog must not hold another's single campaign.

Real processes (gateway, a CPU worker with the beat, two GPU-queue workers of one process each: two GPU slots),
production dispatch (the slots come from the GPU workers' registrations). Small campaigns (512 px, one size, top_k
1, no retries, the language stages on the rules backend so the LLM does not dominate).

1. Tenant B's campaign alone, after a warm-up campaign: its time to completion (the reference) and its GPU-seconds.
2. Tenant A submits 30 campaigns; once A's GPU work is waiting, B submits one: B's time to completion again.
   B's delay over the reference is compared with one campaign's GPU time (the target: about one campaign's GPU
   time at most). The Jain fairness index of GPU-seconds per tenant is printed over the time both had GPU work
   waiting or running (1.0: an equal split) and over B's whole campaign (B's CPU stages leave the GPUs to A then).
3. The same with every GPU run sent at once (ONBRAND_GPU_DISPATCH_SLOTS=1000: Redis first-come-first-served, what
   dispatch was before), bounded: B's time there, or that it had not finished after FIFO_TIMEOUT_FACTOR x the fair
   time (at least 180 s). ONBRAND_FAIRNESS_FIFO=0 skips it.

ONBRAND_FAIRNESS_BACKLOG changes the backlog (default 30).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from shared.cli.demo.library import build_library
from shared.cli.demo.run import upload_library
from shared.queue import GPU_STAGES
from tests.system import System, running_system

pytestmark = [pytest.mark.bench, pytest.mark.slow]

BACKLOG = int(os.environ.get("ONBRAND_FAIRNESS_BACKLOG", "30"))
RUN_FIFO = os.environ.get("ONBRAND_FAIRNESS_FIFO", "1") != "0"
FIFO_TIMEOUT_FACTOR = 3.0
TARGET_DELAY_CAMPAIGNS = 1.5  # B's delay under the backlog, in campaigns' GPU time ("about one")
SETTINGS = {
    "ONBRAND_LLM_BACKEND": "rules",
    "ONBRAND_MAX_CONCURRENT_CAMPAIGNS": str(BACKLOG + 5),
}
BRIEF = "the running shoe on an urban street at sunset"
GPU = tuple(sorted(GPU_STAGES))


@dataclass
class Tenant:
    api: httpx.Client
    brand_id: str

    def submit(self, n: int = 1) -> list[str]:
        body = {
            "brand_id": self.brand_id,
            "brief": BRIEF,
            "sizes": [{"width": 512, "height": 512}],
            "top_k": 1,
            "max_retry_attempts": 0,
            "max_prompt_revisions": 0,
        }
        ids = []
        for _ in range(n):
            response = self.api.post("/v1/campaigns", json=body)
            assert response.status_code == 202, response.text
            ids.append(response.json()["id"])
        return ids

    def wait(self, cid: str, timeout: float) -> dict[str, Any] | None:
        """The campaign's body once terminal; None at the timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body: dict[str, Any] = self.api.get(f"/v1/campaigns/{cid}").json()
            if body["status"] in ("completed", "partial", "failed", "cancelled"):
                return body
            time.sleep(0.5)
        return None

    def cancel(self, ids: list[str]) -> None:
        for cid in ids:
            self.api.post(f"/v1/campaigns/{cid}/cancel")


def tenant(system: System, name: str, library: list[dict[str, Any]]) -> Tenant:
    key = system.tenant(name)["api_key"]
    api = httpx.Client(base_url=system.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    brand = api.post("/v1/brands", json={"name": name, "palette": ["#E4572E", "#17BEBB"]}).json()
    upload_library(api, brand["id"], library)
    return Tenant(api, brand["id"])


@contextmanager
def cluster(stack_urls: dict[str, str], home: Path, database: str, **env: str) -> Iterator[System]:
    with running_system(stack_urls, home, database, **SETTINGS, **env) as system:
        system.procs.worker("gpu", name="gpu-2")  # a second GPU slot
        yield system


def wait_for_backlog(database_url: str, tenant_brand: str, runs: int, timeout: float = 300.0) -> None:
    """Until `runs` GPU runs of the brand's campaigns exist (sent or waiting): the backlog is real work."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(database_url, autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM stage_runs r JOIN campaigns c ON c.id = r.campaign_id "
                "WHERE c.brand_id = %s AND r.stage = ANY(%s) AND r.status IN ('pending', 'running')",
                (tenant_brand, list(GPU)),
            ).fetchone()
            if row and row[0] >= runs:
                return
            time.sleep(0.5)
    raise TimeoutError(f"tenant A never had {runs} GPU runs waiting")


def gpu_spans(database_url: str) -> list[tuple[str, float, float, float]]:
    """(tenant, queued, started, finished) of every finished GPU run, epoch seconds."""
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT tenant_id::text, extract(epoch FROM queued_at), extract(epoch FROM started_at), "
            "extract(epoch FROM finished_at) FROM stage_runs "
            "WHERE stage = ANY(%s) AND started_at IS NOT NULL AND finished_at IS NOT NULL",
            (list(GPU),),
        ).fetchall()
    return [(t, float(q), float(s), float(f)) for t, q, s, f in rows]


def gpu_seconds(spans: list[tuple[str, float, float, float]], tenant_id: str, start: float, end: float) -> float:
    return sum(max(0.0, min(f, end) - max(s, start)) for t, _, s, f in spans if t == tenant_id)


def _merge(intervals: list[tuple[float, float]]) -> list[tuple[float, float]]:
    merged: list[tuple[float, float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def contended(spans: list[tuple[str, float, float, float]], a: str, b: str) -> list[tuple[float, float]]:
    """When both tenants had a GPU run waiting or running (from its creation to its end)."""
    demand = {t: _merge([(q, f) for tt, q, _, f in spans if tt == t]) for t in (a, b)}
    both = []
    for sa, ea in demand[a]:
        for sb, eb in demand[b]:
            if min(ea, eb) > max(sa, sb):
                both.append((max(sa, sb), min(ea, eb)))
    return both


def jain(values: list[float]) -> float:
    total, squares = sum(values), sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else 1.0


def tenant_id(database_url: str, cid: str) -> str:
    with psycopg.connect(database_url) as conn:
        row = conn.execute("SELECT tenant_id::text FROM campaigns WHERE id = %s", (cid,)).fetchone()
    assert row is not None
    return str(row[0])


def took(body: dict[str, Any]) -> float:
    return (datetime.fromisoformat(body["completed_at"]) - datetime.fromisoformat(body["created_at"])).total_seconds()


def campaign_gpu_seconds(database_url: str, cid: str) -> float:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(extract(epoch FROM finished_at - started_at)), 0) FROM stage_runs "
            "WHERE campaign_id = %s AND stage = ANY(%s) AND status = 'succeeded'",
            (cid, list(GPU)),
        ).fetchone()
    return float(row[0]) if row else 0.0


def under_backlog(system: System, a: Tenant, b: Tenant, timeout: float) -> tuple[str, list[str], dict[str, Any] | None]:
    """A's backlog, then B's one campaign: (B's id, A's ids, B's terminal body or None at the timeout)."""
    backlog = a.submit(BACKLOG)
    wait_for_backlog(system.env["ONBRAND_DATABASE_URL"], a.brand_id, runs=6)
    (single,) = b.submit()
    body = b.wait(single, timeout)
    a.cancel(backlog)
    return single, backlog, body


@pytest.mark.timeout(3600)
def test_one_tenants_backlog_does_not_hold_another_tenants_campaign(stack_urls: dict[str, str], tmp_path: Path) -> None:
    library = build_library(tmp_path / "library")
    with cluster(stack_urls, tmp_path / "fair", "bench_fair") as system:
        db = system.env["ONBRAND_DATABASE_URL"]
        a, b = tenant(system, "tenant-a", library), tenant(system, "tenant-b", library)
        (warm_up,) = a.submit()  # the first campaign after a worker starts also loads its models
        assert a.wait(warm_up, 600) is not None
        (alone,) = b.submit()
        reference = b.wait(alone, 600)
        assert reference is not None and reference["status"] in ("completed", "partial"), reference
        t_alone, g_campaign = took(reference), campaign_gpu_seconds(db, alone)
        print(f"FAIRNESS B alone: {t_alone:.1f} s to completion, {g_campaign:.1f} GPU-seconds", flush=True)

        single, backlog, body = under_backlog(system, a, b, timeout=1200)
        assert body is not None and body["status"] in ("completed", "partial"), body
        t_fair = took(body)
        spans = gpu_spans(db)
        ta, tb = tenant_id(db, backlog[0]), tenant_id(db, single)
        start, end = (datetime.fromisoformat(body[k]).timestamp() for k in ("created_at", "completed_at"))
        both = contended(spans, ta, tb)
        in_both = [sum(gpu_seconds(spans, t, s, e) for s, e in both) for t in (ta, tb)]
        in_window = [gpu_seconds(spans, t, start, end) for t in (ta, tb)]
        delay = t_fair - t_alone
        print(
            f"FAIRNESS B behind A's {BACKLOG} campaigns: {t_fair:.1f} s ({t_fair / t_alone:.2f}x alone), delay "
            f"{delay:.1f} s = {delay / g_campaign:.2f} campaigns' GPU time (target <= {TARGET_DELAY_CAMPAIGNS})",
            flush=True,
        )
        print(
            f"FAIRNESS GPU-seconds A/B while both had GPU work: {in_both[0]:.1f}/{in_both[1]:.1f} over "
            f"{sum(e - s for s, e in both):.1f} s, Jain {jain(in_both):.3f}; over B's campaign: "
            f"{in_window[0]:.1f}/{in_window[1]:.1f}, Jain {jain(in_window):.3f}",
            flush=True,
        )
    if RUN_FIFO:
        fifo_timeout = max(FIFO_TIMEOUT_FACTOR * t_fair, 180.0)
        with cluster(stack_urls, tmp_path / "fifo", "bench_fifo", ONBRAND_GPU_DISPATCH_SLOTS="1000") as system:
            a, b = tenant(system, "tenant-a", library), tenant(system, "tenant-b", library)
            _, _, fifo = under_backlog(system, a, b, timeout=fifo_timeout)
            verdict = f"{took(fifo):.1f} s" if fifo else f"not finished after {fifo_timeout:.0f} s"
            print(f"FAIRNESS every GPU run sent at once (Redis FIFO, before): B {verdict}", flush=True)
    assert delay <= TARGET_DELAY_CAMPAIGNS * g_campaign, f"B was delayed {delay:.1f} s by A's backlog"
    assert jain(in_both) >= 0.9, f"GPU-seconds while both had work: {in_both}"
