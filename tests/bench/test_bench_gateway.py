"""Gateway POST /v1/campaigns throughput and latency (p50/p99) on this machine.

A gateway process with no workers attached: the benchmark measures the request path
(auth, validation, the campaign + outbox insert, commit, task send to Redis), not the pipeline.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time

import httpx
import pytest

from shared.cli.procs import Processes, base_env, free_port, run_cli
from tests.system import create_database

REQUESTS = 2000
CONCURRENCY = 32


async def _fire(url: str, key: str, brand_id: str) -> list[float]:
    latencies: list[float] = []
    limits = httpx.Limits(max_connections=CONCURRENCY)
    async with httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, limits=limits) as client:
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(REQUESTS):
            queue.put_nowait(i)

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                start = time.perf_counter()
                response = await client.post("/v1/campaigns", json={"brand_id": brand_id, "brief": f"shoe {i}"})
                assert response.status_code == 202, response.text
                latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return latencies


@pytest.mark.bench
def test_campaign_create_throughput(stack_urls: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> None:
    home = tmp_path_factory.mktemp("bench-gw")
    port = free_port()
    env = base_env(
        home,
        ONBRAND_DATABASE_URL=create_database(stack_urls, "bench_gw"),
        ONBRAND_REDIS_URL=stack_urls["redis_url"].rsplit("/", 1)[0] + "/9",
        ONBRAND_PUBLIC_URL=f"http://127.0.0.1:{port}",
        ONBRAND_LOG_LEVEL="WARNING",
        # One key sends 2000 creations as fast as it can: limits out of the way, their checks still measured.
        ONBRAND_RATE_LIMIT_PER_SECOND="1000000",
        ONBRAND_RATE_LIMIT_BURST="1000000",
        ONBRAND_WRITE_RATE_LIMIT_PER_SECOND="1000000",
        ONBRAND_WRITE_RATE_LIMIT_BURST="1000000",
        ONBRAND_MAX_CONCURRENT_CAMPAIGNS="1000000",
        ONBRAND_IMAGES_PER_DAY="1000000000",
        ONBRAND_IMAGES_PER_MONTH="1000000000",
    )
    run_cli(env, "migrate")
    tenant = json.loads(run_cli(env, "tenants", "create", "bench"))
    procs = Processes(env=env, logs=home / "logs")
    try:
        url = procs.gateway(port)
        brand = httpx.post(
            f"{url}/v1/brands", json={"name": "b"}, headers={"Authorization": f"Bearer {tenant['api_key']}"}
        ).json()
        started = time.perf_counter()
        latencies = asyncio.run(_fire(url, tenant["api_key"], brand["id"]))
        wall = time.perf_counter() - started
    finally:
        procs.stop_all()
    latencies.sort()
    p50, p99 = statistics.median(latencies), latencies[int(len(latencies) * 0.99) - 1]
    print(
        f"\nBENCH gateway POST /v1/campaigns: {REQUESTS} requests, concurrency {CONCURRENCY}, "
        f"{REQUESTS / wall:.0f} req/s, p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms (1 uvicorn process, "
        f"client on the same 2 cores)"
    )
    assert len(latencies) == REQUESTS
