"""Rate limits per key (Redis token buckets, RateLimit headers) and quotas per tenant (Postgres) at the API."""

from __future__ import annotations

import itertools
import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio
from fastapi.testclient import TestClient
from sqlalchemy import text, update

from services.gateway.app import create_app
from shared import limits
from shared.config import get_settings
from shared.db.models import TERMINAL_STATUSES, Campaign, CampaignStatus, Candidate, Tenant
from shared.db.session import session_scope
from shared.tenants import issue_key
from tests.factories import Tenant as ApiTenant
from tests.factories import assert_problem, make_brand, new_tenant
from tests.system import clear_caches

PER_CAMPAIGN = 27  # one product, one size: 3 x 3 grid cells x 3 rotations


@pytest.fixture(scope="module")
def limited(env: dict[str, str]) -> Iterator[None]:
    """This module's gateway with the limits on (the suite's other modules run without them)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ONBRAND_LIMITS_ENABLED", "true")
        clear_caches()
        yield
    clear_caches()


@pytest.fixture
def client(limited: None, sent: Any) -> Iterator[TestClient]:
    with TestClient(create_app()) as test_client:
        yield test_client


def tenant_with(**overrides: Any) -> ApiTenant:
    """A new tenant (its own keys, so its own buckets) with these tenants.limits overrides."""
    tenant = new_tenant(f"limits-{uuid.uuid4().hex[:6]}")
    with session_scope() as session:
        session.execute(update(Tenant).where(Tenant.id == tenant.id).values(limits=overrides))
    return tenant


def second_key(tenant: ApiTenant) -> ApiTenant:
    with session_scope() as session:
        return ApiTenant(tenant.id, issue_key(session, tenant.id))


def create(client: TestClient, tenant: ApiTenant, brand_id: str) -> Any:
    return client.post("/v1/campaigns", json={"brand_id": brand_id, "brief": "Sneakers at sunset"}, headers=tenant.auth)


def test_burst_then_429_with_retry_after_and_ratelimit_fields(client: TestClient) -> None:
    acme = tenant_with(rate_limit_per_second=0.5, rate_limit_burst=3)
    remaining = []
    for _ in range(3):
        response = client.get("/v1/brands", headers=acme.auth)
        assert response.status_code == 200, response.text
        assert response.headers["RateLimit-Policy"] == '"default";q=3;w=6'
        remaining.append(response.headers["RateLimit"])
    assert [r.split(";t=")[0] for r in remaining] == ['"default";r=2', '"default";r=1', '"default";r=0']
    refused = client.get("/v1/brands", headers=acme.auth)
    body = assert_problem(refused, 429, "rate_limited")
    assert refused.headers["Retry-After"] == "2"  # one token at 0.5/s, nothing has refilled it yet
    assert body["policies"] == ["default"] and body["retry_after"] == 2
    assert refused.headers["RateLimit"].startswith('"default";r=0;t=')
    # The same tenant's other key and another tenant's key each have their own full bucket.
    for other in (second_key(acme), tenant_with(rate_limit_per_second=0.5, rate_limit_burst=3)):
        fresh = client.get("/v1/brands", headers=other.auth)
        assert fresh.status_code == 200 and fresh.headers["RateLimit"].startswith('"default";r=2;')


def test_tokens_refill_at_the_rate(client: TestClient) -> None:
    acme = tenant_with(rate_limit_per_second=10, rate_limit_burst=2)
    assert [client.get("/v1/brands", headers=acme.auth).status_code for _ in range(3)] == [200, 200, 429]
    time.sleep(0.25)  # 2.5 tokens' worth, capped at the burst of 2
    assert client.get("/v1/brands", headers=acme.auth).headers["RateLimit"] == '"default";r=1;t=1'


def test_writes_spend_their_own_lower_bucket_too(client: TestClient) -> None:
    # A default bucket that barely refills (0.01/s): the counts below are exact.
    acme = tenant_with(rate_limit_per_second=0.01, write_rate_limit_per_second=0.2, write_rate_limit_burst=2)
    brand = make_brand(client, acme)
    created = client.post("/v1/brands", json={"name": "B2", "palette": ["#112233"]}, headers=acme.auth)
    assert created.headers["RateLimit-Policy"] == '"default";q=40;w=4000, "writes";q=2;w=10'
    assert created.headers["RateLimit"] == '"default";r=38;t=200, "writes";r=0;t=10'
    body = assert_problem(create(client, acme, brand), 429, "rate_limited")
    assert body["policies"] == ["writes"] and body["retry_after"] == 5
    # Reads only spend the default bucket: still served (the refused write took no token from it).
    read = client.get("/v1/brands", headers=acme.auth)
    assert read.status_code == 200 and read.headers["RateLimit"] == '"default";r=37;t=300'


def test_every_authenticated_response_carries_the_fields_and_only_those(client: TestClient) -> None:
    acme = tenant_with()
    missing = client.get(f"/v1/campaigns/{uuid.uuid4()}", headers=acme.auth)
    assert_problem(missing, 404, "not_found")
    assert missing.headers["RateLimit-Policy"] == '"default";q=40;w=2'
    assert missing.headers["RateLimit"] == '"default";r=39;t=1'
    anonymous = client.get("/v1/brands")
    assert_problem(anonymous, 401, "unauthorized")
    assert "RateLimit" not in anonymous.headers and "RateLimit-Policy" not in anonymous.headers


def count_redis_commands(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The commands every gateway in this process sends to Redis from now on (the subscription's aside)."""
    calls: list[str] = []
    execute = redis.asyncio.Redis.execute_command

    async def counted(self: redis.asyncio.Redis, *args: Any, **options: Any) -> Any:
        calls.append(str(args[0]))
        return await execute(self, *args, **options)

    monkeypatch.setattr(redis.asyncio.Redis, "execute_command", counted)
    return calls


def test_a_small_limit_is_exact_across_processes(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """10/s with a burst of 20 is taken token by token, each request asking Redis as it did before leases: two
    processes spending one key in an irregular interleaving are refused at the bucket's count, no sooner and no
    later, and none holds a token back from the other."""
    settings = get_settings()
    assert limits.lease_cap(settings, limits.Bucket("default", 10, 20)) == 1
    acme = tenant_with(rate_limit_per_second=10, rate_limit_burst=20)
    with TestClient(create_app()) as other:
        apps, served, started = [client, other], 0, time.monotonic()
        calls = count_redis_commands(monkeypatch)
        for turn in itertools.cycle([0, 0, 1, 0, 1, 1, 1, 0, 0, 1, 0]):
            response = apps[turn].get("/v1/brands", headers=acme.auth)
            if response.status_code == 429:
                break
            assert response.status_code == 200, response.text
            served += 1
        refilled = (time.monotonic() - started) * 10
        assert 20 <= served <= 20 + refilled, (served, refilled)
        # every request took its token in Redis (an EVALSHA, and another after loading the script if it was not)
        assert calls.count("EVALSHA") - calls.count("SCRIPT LOAD") == served + 1, calls


def test_a_big_limit_makes_few_redis_calls(client: TestClient, monkeypatch: pytest.MonkeyPatch) -> None:
    """A key with a big limit spends tokens its process took in batches: far fewer Redis calls (refills, and no
    epoch reads once the key-changes subscription is live) than requests, with RateLimit fields still right."""
    acme = tenant_with(rate_limit_per_second=100_000, rate_limit_burst=1_000_000)
    assert client.get("/v1/brands", headers=acme.auth).status_code == 200  # starts the subscription
    wait_until_live = time.monotonic() + 3
    while not client.app.state.key_cache.live:  # type: ignore[attr-defined]
        assert time.monotonic() < wait_until_live
        time.sleep(0.01)
    calls = count_redis_commands(monkeypatch)
    answers = [client.get("/v1/brands", headers=acme.auth) for _ in range(200)]
    assert all(a.status_code == 200 for a in answers)
    assert 0 < len(calls) <= 20 and set(calls) == {"EVALSHA"}, calls
    # The bucket refills faster than these requests spend it: the field says nearly full, short by a lease at most.
    remaining = [int(a.headers["RateLimit"].split(";r=")[1].split(";")[0]) for a in answers]
    assert all(1_000_000 - 1_000 <= r < 1_000_000 for r in remaining), remaining


def test_redis_down_fails_open(limited: None, sent: Any) -> None:
    acme = tenant_with(rate_limit_per_second=0.1, rate_limit_burst=1)
    settings = get_settings().model_copy(update={"redis_url": "redis://127.0.0.1:9/0"})  # nothing listens
    before = limits.RATE_LIMIT_FAIL_OPEN._value.get()
    with TestClient(create_app(settings)) as down:
        answers = [down.get("/v1/brands", headers=acme.auth) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 200]
    assert all("RateLimit" not in a.headers for a in answers)
    assert limits.RATE_LIMIT_FAIL_OPEN._value.get() == before + 3


def test_concurrent_campaigns_limit_is_race_safe(client: TestClient) -> None:
    acme = tenant_with(max_concurrent_campaigns=2)
    brand = make_brand(client, acme)
    assert create(client, acme, brand).status_code == 202
    answers: list[Any] = []
    barrier = threading.Barrier(4)

    def post() -> None:
        barrier.wait()
        answers.append(create(client, acme, brand))

    threads = [threading.Thread(target=post) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(a.status_code for a in answers) == [202, 429, 429, 429]
    refused = next(a for a in answers if a.status_code == 429)
    body = assert_problem(refused, 429, "concurrent_campaigns_limit")
    assert body["limit"] == 2 and body["used"] == 2
    # A finished campaign frees its slot.
    with session_scope() as session:
        session.execute(
            update(Campaign)
            .where(Campaign.tenant_id == acme.id)
            .values(status=CampaignStatus.COMPLETED)
            .execution_options(synchronize_session=False)
        )
    assert create(client, acme, brand).status_code == 202


def test_the_check_waits_for_the_tenant_lock_and_rereads(client: TestClient) -> None:
    """A creation at the limit that commits while another transaction holds the tenant's admission lock (its
    tenant_live row) waits, then counts that one's campaign."""
    acme = tenant_with(max_concurrent_campaigns=2)
    brand = make_brand(client, acme)
    assert create(client, acme, brand).status_code == 202
    answers: list[Any] = []
    with session_scope() as holder:
        holder.execute(text("SELECT 1 FROM tenant_live WHERE tenant_id = :id FOR UPDATE"), {"id": acme.id})
        waiting = threading.Thread(target=lambda: answers.append(create(client, acme, brand)))
        waiting.start()
        waiting.join(timeout=1.0)
        assert waiting.is_alive() and not answers  # blocked on the lock
        other = Campaign(tenant_id=acme.id, brand_id=uuid.UUID(brand), brief="held", status=CampaignStatus.QUEUED)
        holder.add(other)
    waiting.join(timeout=10)
    body = assert_problem(answers[0], 429, "concurrent_campaigns_limit")
    assert (body["limit"], body["used"]) == (2, 2)


def test_daily_images_quota_reserved_then_settled(client: TestClient) -> None:
    acme = tenant_with(images_per_day=2 * PER_CAMPAIGN + 10, images_per_month=1000)
    brand = make_brand(client, acme)
    first, second = create(client, acme, brand).json(), create(client, acme, brand).json()
    assert second["status"] == "queued"
    refused = create(client, acme, brand)
    body = assert_problem(refused, 402, "quota_exceeded")
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert body["period"] == "day" and body["used"] == 2 * PER_CAMPAIGN and body["requested"] == PER_CAMPAIGN
    assert body["reset"] == f"{tomorrow}T00:00:00+00:00"
    # The first campaign finishes having made 5 candidates: it is settled to 5 (where the worker sets a terminal
    # status: workers.engine.records.campaign_finished), and 27 more fit.
    with session_scope() as session:
        session.execute(update(Campaign).where(Campaign.id == first["id"]).values(status=CampaignStatus.COMPLETED))
        for i in range(5):
            session.add(Candidate(tenant_id=acme.id, campaign_id=uuid.UUID(first["id"]), layout_key=f"k{i}"))
        limits.settle_campaign(session, uuid.UUID(first["id"]))
    assert create(client, acme, brand).status_code == 202
    assert_problem(create(client, acme, brand), 402, "quota_exceeded")


def test_monthly_images_quota_counts_the_month_before_this_campaign(client: TestClient) -> None:
    """The admission (migration 0020) rolls the row into its day and reads the month's sums in one statement: the
    sums are the month as it was before this campaign, and a refusal leaves no roll-up behind."""
    acme = tenant_with(images_per_day=1000, images_per_month=2 * PER_CAMPAIGN + 10)
    brand = make_brand(client, acme)
    assert [create(client, acme, brand).status_code for _ in range(2)] == [202, 202]
    for _ in range(2):  # the first refusal's reservation is not left in the month
        body = assert_problem(create(client, acme, brand), 402, "quota_exceeded")
        assert (body["period"], body["used"], body["requested"]) == ("month", 2 * PER_CAMPAIGN, PER_CAMPAIGN)
    month = client.get("/v1/limits", headers=acme.auth).json()["images"][1]
    assert month["used"] == 2 * PER_CAMPAIGN


def test_a_running_campaign_beyond_its_reservation_is_counted_by_the_sweep(client: TestClient) -> None:
    acme = tenant_with(images_per_day=1000, images_per_month=1000)
    brand = make_brand(client, acme)
    running = create(client, acme, brand).json()
    with session_scope() as session:  # retries made more candidates than its first attempt reserved
        for i in range(PER_CAMPAIGN + 3):
            session.add(Candidate(tenant_id=acme.id, campaign_id=uuid.UUID(running["id"]), layout_key=f"k{i}"))
    day = client.get("/v1/limits", headers=acme.auth).json()["images"][0]
    assert day["used"] == PER_CAMPAIGN  # the reservation, until the sweep settles it
    with session_scope() as session:
        limits.settle_in_flight(session, datetime.now(UTC))
    day = client.get("/v1/limits", headers=acme.auth).json()["images"][0]
    assert day["used"] == PER_CAMPAIGN + 3


def test_get_limits_reports_limits_used_remaining_and_reset(client: TestClient) -> None:
    acme = tenant_with(
        rate_limit_per_second=0.01, max_concurrent_campaigns=3, images_per_day=100, images_per_month=1000
    )
    brand = make_brand(client, acme)
    create(client, acme, brand)
    response = client.get("/v1/limits", headers=acme.auth)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["enforced"] is True
    assert body["concurrent_campaigns"] == {"limit": 3, "used": 1, "remaining": 2}
    day, month = body["images"]
    now = datetime.now(UTC)
    assert day["period"] == "day" and (day["limit"], day["used"], day["remaining"]) == (100, 27, 73)
    assert month["period"] == "month" and (month["limit"], month["used"], month["remaining"]) == (1000, 27, 973)
    assert datetime.fromisoformat(day["reset"]) == limits.period_reset(now, "day")
    assert datetime.fromisoformat(month["reset"]).day == 1 and datetime.fromisoformat(month["reset"]) > now
    default, writes = body["rate_limits"]
    # Three requests so far with this key (brand, campaign, this GET): what the RateLimit field says too.
    assert default == {
        "policy": "default",
        "per_second": 0.01,
        "burst": 40,
        "window_seconds": 4000,
        "remaining": 37,
        "reset_seconds": 300,
    }
    assert response.headers["RateLimit"] == '"default";r=37;t=300'
    assert writes["policy"] == "writes" and writes["burst"] == 20 and writes["remaining"] is None
    # Another tenant sees only its own usage.
    other = client.get("/v1/limits", headers=tenant_with().auth).json()
    assert other["concurrent_campaigns"]["used"] == 0 and other["images"][0]["used"] == 0


def test_the_admission_trigger_knows_the_terminal_statuses(client: TestClient) -> None:
    """Migration 0018's trigger lists the terminal statuses itself: they must stay shared.db.models'."""
    with session_scope() as session:
        source = session.scalar(text("SELECT prosrc FROM pg_proc WHERE proname = 'onbrand_admit_usage'"))
    listed = re.search(r"status NOT IN \(([^)]*)\)", source or "")
    assert listed, source
    assert {s.strip(" '") for s in listed.group(1).split(",")} == {s.value for s in TERMINAL_STATUSES}
