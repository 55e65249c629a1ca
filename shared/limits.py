"""Rate limits per API key (token buckets in Redis) and quotas per tenant (Postgres).

Rate limits: every authenticated request takes one token from its key's `default` bucket, and a write
(any method but GET/HEAD/OPTIONS) also one from the lower `writes` bucket. The tokens are taken from Redis in
one Lua script, so two gateways never both spend the last token, a batch at a time per process (leases, below
TOKEN_BUCKETS: a small limit is taken token by token; the worst-case overshoot over N processes is stated there).
Redis keeps the clock (TIME), not the gateways. When Redis cannot be reached the limiter fails open (logged and
counted): the quotas below live in Postgres and still hold.

Quotas: concurrent (non-terminal) campaigns and images per UTC day and month, checked when a campaign's creation
commits, by the database under a lock on the tenant's row (reserve, migration 0018), so two concurrent creations at
the limit cannot both pass and the lock is held for the check and the commit alone. An image is a
generated candidate: a campaign reserves its first attempt's candidates (products x sizes x grid cells x
rotations) when it is accepted and is settled to the candidates it really made (retries and review rounds
included) when it ends, and while it runs by every stalled sweep: a creation only sums the ledger.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import psycopg
import redis
import redis.asyncio
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import case, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from shared.config import Settings
from shared.db.models import TERMINAL_STATUSES, Campaign, Candidate, ImageUsage, ImageUsageDay, Tenant, TenantLive
from shared.key_cache import KEY_EPOCH, announce_change

log = logging.getLogger(__name__)

RATE_LIMIT_FAIL_OPEN = Counter(
    "onbrand_rate_limit_fail_open_total", "Requests let through unlimited because Redis could not be reached."
)
RATE_LIMITED = Counter("onbrand_rate_limited_total", "Requests refused with 429 rate_limited, by policy.", ["policy"])

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
Period = Literal["day", "month"]
PERIODS: tuple[Period, ...] = ("day", "month")

# KEYS: the key epoch (shared.key_cache), then one bucket per policy. ARGV, four per bucket in KEYS order: rate,
# burst, tokens wanted (the lease's batch) and tokens given back (left in the process's expired lease). A request is
# allowed only when every bucket holds a token, and then takes up to `wanted` whole tokens from each; the reply is
# [allowed, key epoch, then per bucket: tokens left (a string: Lua numbers would be truncated to integers on the way
# back), tokens granted]. The epoch rides along so that gateways learn of revoked keys without a round trip of their
# own.
TOKEN_BUCKETS = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local held = {}
local allowed = 1
for i = 2, #KEYS do
  local j = 4 * (i - 2)
  local rate = tonumber(ARGV[j + 1])
  local burst = tonumber(ARGV[j + 2])
  local state = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local tokens = tonumber(state[1]) or burst
  local since = tonumber(state[2]) or now
  held[i] = math.min(burst, tokens + math.max(0, now - since) * rate + tonumber(ARGV[j + 4]))
  if held[i] < 1 then allowed = 0 end
end
local reply = {allowed, tonumber(redis.call('GET', KEYS[1]) or '0')}
for i = 2, #KEYS do
  local j = 4 * (i - 2)
  local rate = tonumber(ARGV[j + 1])
  local burst = tonumber(ARGV[j + 2])
  local grant = 0
  if allowed == 1 then
    grant = math.min(tonumber(ARGV[j + 3]), math.floor(held[i]))
    held[i] = held[i] - grant
  end
  redis.call('HSET', KEYS[i], 'tokens', tostring(held[i]), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[i], math.ceil(burst / rate) + 1)
  reply[2 * i - 1] = tostring(held[i])
  reply[2 * i] = grant
end
return reply
"""


class LimitOverrides(BaseModel):
    """A tenant's overrides (tenants.limits); a missing field takes the settings' default."""

    model_config = ConfigDict(extra="forbid")

    rate_limit_per_second: float | None = Field(default=None, gt=0)
    rate_limit_burst: int | None = Field(default=None, ge=1)
    write_rate_limit_per_second: float | None = Field(default=None, gt=0)
    write_rate_limit_burst: int | None = Field(default=None, ge=1)
    max_concurrent_campaigns: int | None = Field(default=None, ge=0)
    images_per_day: int | None = Field(default=None, ge=0)
    images_per_month: int | None = Field(default=None, ge=0)
    gpu_share: float | None = Field(default=None, gt=0, le=100)


@dataclass(frozen=True)
class Bucket:
    """A token-bucket policy: `burst` requests at once, refilled at `per_second`."""

    name: str
    per_second: float
    burst: int

    @property
    def window(self) -> int:
        """Seconds an empty bucket takes to fill: the policy's window (`w`) in the RateLimit-Policy field."""
        return max(1, math.ceil(self.burst / self.per_second))


@dataclass(frozen=True)
class Limits:
    """A tenant's effective limits: its overrides over the settings' defaults."""

    default: Bucket
    writes: Bucket
    max_concurrent_campaigns: int
    images_per_day: int
    images_per_month: int
    gpu_share: float  # weight in the fair share of the GPU pool (workers.engine.dispatch)

    def buckets(self, method: str) -> tuple[Bucket, ...]:
        return (self.default,) if method.upper() in SAFE_METHODS else (self.default, self.writes)

    def images(self, period: Period) -> int:
        return self.images_per_day if period == "day" else self.images_per_month

    def summary(self) -> dict[str, Any]:
        """The effective values under the names a tenant's overrides use (LimitOverrides)."""
        return {
            "rate_limit_per_second": self.default.per_second,
            "rate_limit_burst": self.default.burst,
            "write_rate_limit_per_second": self.writes.per_second,
            "write_rate_limit_burst": self.writes.burst,
            "max_concurrent_campaigns": self.max_concurrent_campaigns,
            "images_per_day": self.images_per_day,
            "images_per_month": self.images_per_month,
            "gpu_share": self.gpu_share,
        }


def effective(settings: Settings, overrides: dict[str, Any] | None) -> Limits:
    own = LimitOverrides.model_validate(overrides or {})

    def pick(name: str) -> Any:
        value = getattr(own, name)
        return getattr(settings, name) if value is None else value

    return Limits(
        default=Bucket("default", pick("rate_limit_per_second"), pick("rate_limit_burst")),
        writes=Bucket("writes", pick("write_rate_limit_per_second"), pick("write_rate_limit_burst")),
        max_concurrent_campaigns=pick("max_concurrent_campaigns"),
        images_per_day=pick("images_per_day"),
        images_per_month=pick("images_per_month"),
        gpu_share=pick("gpu_share"),
    )


def tenant_limits(session: Session, tenant_id: uuid.UUID, settings: Settings) -> Limits:
    return effective(settings, session.scalar(select(Tenant.limits).where(Tenant.id == tenant_id)))


def override(session: Session, tenant_id: uuid.UUID, changes: dict[str, Any], unset: list[str]) -> LimitOverrides:
    """Set (`changes`) and clear (`unset`: back to the settings' default) a tenant's overrides, validated as
    LimitOverrides (an unknown name or a bad value raises ValidationError); the tenant's new overrides."""
    tenant = session.scalars(select(Tenant).where(Tenant.id == tenant_id).with_for_update()).first()
    if tenant is None:
        raise LookupError(f"no tenant {tenant_id}")
    current = LimitOverrides.model_validate(tenant.limits or {}).model_dump(exclude_none=True)
    merged = LimitOverrides.model_validate({**{k: v for k, v in current.items() if k not in unset}, **changes})
    LimitOverrides.model_validate(dict.fromkeys(unset))  # an unknown name to unset is an error too
    tenant.limits = merged.model_dump(exclude_none=True) or None
    announce_change(session)  # gateways cached the old limits with the tenant's keys (shared.key_cache)
    return merged


# ---------------------------------------------------------------- rate limits (Redis)


@dataclass(frozen=True)
class BucketState:
    bucket: Bucket
    tokens: float  # left after this request

    @property
    def remaining(self) -> int:
        return max(0, math.floor(self.tokens))

    @property
    def reset(self) -> int:
        """Seconds until the bucket is full again (`t` in the RateLimit field)."""
        return max(0, math.ceil((self.bucket.burst - self.tokens) / self.bucket.per_second))

    @property
    def retry_after(self) -> int:
        """Seconds until this bucket holds a whole token again."""
        return max(1, math.ceil((1 - self.tokens) / self.bucket.per_second))


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    states: tuple[BucketState, ...]
    # shared.key_cache: a change means some key or limit changed since. None when the request was served from
    # this process's leases without asking Redis.
    key_epoch: int | None

    @property
    def retry_after(self) -> int:
        return max(s.retry_after for s in self.states if s.tokens < 1)

    @property
    def exhausted(self) -> list[str]:
        return [s.bucket.name for s in self.states if s.tokens < 1]


# Leases. Each gateway process takes a batch of a key's tokens from its Redis bucket in one script call and spends
# them itself; it goes back to Redis when the batch is spent or older than rate_lease_seconds, and then gives back
# what an expired lease still held (in that same call: a process that never sees the key again lets them lapse).
# Every token a process spends was taken from the bucket in Redis, so no process and no number of them spends more
# than the bucket grants; what changes is when: a process may spend, up to rate_lease_seconds later, tokens it took
# earlier. Over any window N processes therefore serve at most N x (batch - 1) requests more than one bucket
# would (burst + rate x window), and a process may be refused while another still holds up to batch - 1 tokens.
# The batch is at most lease_cap(): rate x rate_lease_seconds, burst / BURST_SHARE and rate_lease_max_batch, so
# a small limit (10/s with a burst of 20, or 20/s with 40 at most 2) is counted request by request as before, and
# within that it follows the process's own use: twice what the last lease served.
BURST_SHARE = 16
MAX_LEASES = 10_000  # leases a process holds at once; more and it starts over (their tokens lapse)


def lease_cap(settings: Settings, bucket: Bucket) -> int:
    """The most tokens a process takes from `bucket` at once (1: every request asks Redis)."""
    by_rate = math.floor(bucket.per_second * settings.rate_lease_seconds)
    return max(1, min(settings.rate_lease_max_batch, by_rate, bucket.burst // BURST_SHARE))


@dataclass(eq=False)
class _Lease:
    """Tokens of one bucket this process took from Redis and has not spent yet."""

    bucket: Bucket
    cap: int
    tokens: int = 0
    expires: float = 0.0  # time.monotonic()
    remote: float = 0.0  # the bucket's tokens in Redis after the refill: the RateLimit field's basis
    at: float = 0.0
    spent: int = 0  # requests this lease served, its refill's own included: sizes the next batch
    flight: asyncio.Future[bool] | None = None  # the refill under way: other requests wait for it

    def usable(self, now: float) -> bool:
        return self.tokens >= 1 and now < self.expires

    def want(self) -> int:
        return max(1, min(self.cap, 2 * self.spent))

    def give_back(self) -> int:
        """What this expired (or spent) lease still holds, handed back with the next refill."""
        left, self.tokens = self.tokens, 0
        return left

    def refilled(self, granted: int, remote: float, now: float, lease_s: float) -> None:
        self.tokens, self.remote, self.at, self.expires, self.spent = granted - 1, remote, now, now + lease_s, 1

    def spend(self) -> None:
        self.tokens -= 1
        self.spent += 1

    def estimate(self, now: float) -> float:
        """The bucket's tokens after this request's as this process can tell without asking: right to within the
        lease (other processes may have spent some since the refill). Never a full bucket: one was just spent."""
        refilled = self.remote + (now - self.at) * self.bucket.per_second
        return min(float(self.bucket.burst - 1), refilled + self.tokens)


@dataclass(eq=False)
class _Redis:
    """This loop's client for one Redis URL, the token-bucket script registered on it, and this process's leases."""

    client: redis.asyncio.Redis
    script: Any
    leases: dict[tuple[str, Bucket], _Lease]


# One client per event loop and URL: an asyncio connection belongs to the loop that opened it (the gateway runs one
# loop per process; tests run one per TestClient, so two TestClients hold their leases apart as two processes do).
_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Redis]] = weakref.WeakKeyDictionary()
_REDIS_ERRORS = (redis.RedisError, RuntimeError, OSError, asyncio.TimeoutError)


def _redis(url: str) -> _Redis:
    """This loop's client for `url`, with its script and leases."""
    clients = _CLIENTS.setdefault(asyncio.get_running_loop(), {})
    found = clients.get(url)
    if found is None:
        # Short timeouts: with Redis gone a request waits at most this long before failing open.
        client = redis.asyncio.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        found = clients[url] = _Redis(client, client.register_script(TOKEN_BUCKETS), {})
    return found


def _lease(settings: Settings, conn: _Redis, key: str, bucket: Bucket) -> _Lease:
    # Keyed by the policy too: a key whose limits changed starts a new lease (the old one's tokens lapse).
    lease = conn.leases.get((key, bucket))
    if lease is None:
        if len(conn.leases) >= MAX_LEASES:
            conn.leases.clear()
        lease = conn.leases[(key, bucket)] = _Lease(bucket, lease_cap(settings, bucket))
    return lease


async def take(settings: Settings, key_prefix: str, buckets: tuple[Bucket, ...]) -> RateDecision | None:
    """Take a token from each bucket of this key: from this process's leases while they hold one, else from Redis
    (one script call, which refills the leases); None when Redis failed (fail open)."""
    conn = _redis(settings.broker_url)
    keys = [f"onbrand:ratelimit:{b.name}:{key_prefix}" for b in buckets]
    leases = [_lease(settings, conn, key, b) for key, b in zip(keys, buckets, strict=True)]
    while True:
        now = time.monotonic()
        lacking = [i for i, lease in enumerate(leases) if not lease.usable(now)]
        if not lacking:
            for lease in leases:
                lease.spend()
            return RateDecision(True, tuple(BucketState(lease.bucket, lease.estimate(now)) for lease in leases), None)
        flight = next((f for f in (leases[i].flight for i in lacking) if f is not None), None)
        if flight is None:
            return await _refill(settings, conn, keys, leases, lacking)
        # One refill per lease at a time: the requests that find it under way wait for its tokens.
        if not await asyncio.shield(flight):
            RATE_LIMIT_FAIL_OPEN.inc()  # that refill failed (and logged): Redis is down
            return None


async def _refill(
    settings: Settings, conn: _Redis, keys: list[str], leases: list[_Lease], lacking: list[int]
) -> RateDecision | None:
    """One script call for the buckets whose lease is spent or expired; spends this request's token of the others
    only when the call allows the request."""
    flight: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    args: list[str] = []
    for i in lacking:
        lease = leases[i]
        if lease.cap > 1:  # a lease of 1 token has nothing to share: those requests go to Redis side by side
            lease.flight = flight
        bucket = lease.bucket
        args += [repr(float(bucket.per_second)), str(bucket.burst), str(lease.want()), str(lease.give_back())]
    try:
        reply = await conn.script(keys=[KEY_EPOCH, *(keys[i] for i in lacking)], args=args)
    except _REDIS_ERRORS as exc:
        flight.set_result(False)
        RATE_LIMIT_FAIL_OPEN.inc()
        log.warning("rate limiter unavailable, request let through: %s", exc)
        return None
    finally:
        for i in lacking:
            if leases[i].flight is flight:
                leases[i].flight = None
        if not flight.done():
            # The waiters look at the leases again (refilled below before they run, or not if this was cancelled).
            flight.set_result(True)
    allowed, now = bool(int(reply[0])), time.monotonic()
    remote = {i: (float(reply[2 + 2 * n]), int(reply[3 + 2 * n])) for n, i in enumerate(lacking)}
    states = []
    for i, lease in enumerate(leases):
        if i in remote:
            tokens, granted = remote[i]
            if allowed:
                lease.refilled(granted, tokens, now, settings.rate_lease_seconds)
            states.append(BucketState(lease.bucket, tokens + lease.tokens))  # this request's token taken
        else:
            if allowed:
                lease.spend()
            states.append(BucketState(lease.bucket, lease.estimate(now)))
    decision = RateDecision(allowed, tuple(states), int(reply[1]))
    for name in [] if decision.allowed else decision.exhausted:
        RATE_LIMITED.labels(name).inc()
    return decision


async def read_key_epoch(settings: Settings) -> int | None:
    """The key epoch alone, for a request that did not ask the limiter; None when Redis failed."""
    try:
        return int(await _redis(settings.broker_url).client.get(KEY_EPOCH) or 0)
    except _REDIS_ERRORS as exc:
        log.warning("key epoch unavailable, cached keys expire on their own: %s", exc)
        return None


def policy_header(buckets: tuple[Bucket, ...]) -> str:
    """RateLimit-Policy (draft-ietf-httpapi-ratelimit-headers-10): quota q requests per window w seconds."""
    return ", ".join(f'"{b.name}";q={b.burst};w={b.window}' for b in buckets)


def state_header(decision: RateDecision) -> str:
    """RateLimit (same draft): r requests remaining, t seconds until the policy's quota is whole again."""
    return ", ".join(f'"{s.bucket.name}";r={s.remaining};t={s.reset}' for s in decision.states)


# ---------------------------------------------------------------- quotas (Postgres)


class LimitExceeded(Exception):
    """A quota refused a campaign; the gateway turns it into a problem response."""

    def __init__(self, code: str, detail: str, extra: dict[str, Any]) -> None:
        super().__init__(detail)
        self.code, self.detail, self.extra = code, detail, extra

    @property
    def concurrent(self) -> bool:
        """Over the concurrent-campaigns limit (frees up as campaigns finish), not an images quota."""
        return self.code == "concurrent_campaigns_limit"


@dataclass(frozen=True)
class PeriodUsage:
    period: Period
    limit: int
    used: int
    reset: datetime

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


def expected_images(products: int, sizes: int, settings: Settings) -> int:
    """Candidates one attempt generates: every grid cell at every rotation, per product and canvas."""
    per_canvas = settings.grid_rows * settings.grid_cols * len(settings.rotations)
    return max(1, products) * max(1, sizes) * per_canvas


def period_start(now: datetime, period: Period) -> datetime:
    day = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day if period == "day" else day.replace(day=1)


def period_reset(now: datetime, period: Period) -> datetime:
    start = period_start(now, period)
    if period == "day":
        return start + timedelta(days=1)
    return (start + timedelta(days=32)).replace(day=1)


def settle(session: Session, which: ColumnElement[bool]) -> None:
    """Count the candidates of each campaign in the ledger rows `which`: a finished one uses what it made, one in
    flight at least its reservation (it may still make them). Rows already right are not written."""
    made = select(func.count()).where(Candidate.campaign_id == ImageUsage.campaign_id).scalar_subquery()
    finished = select(Campaign.status.in_([s.value for s in TERMINAL_STATUSES])).where(
        Campaign.id == ImageUsage.campaign_id
    )
    used = case((finished.scalar_subquery(), made), else_=func.greatest(ImageUsage.reserved, made))
    session.execute(
        update(ImageUsage)
        .where(which, ImageUsage.campaign_id.is_not(None), ImageUsage.used.is_distinct_from(used))
        .values(used=used)
        .execution_options(synchronize_session=False)
    )


def settle_campaign(session: Session, campaign_id: uuid.UUID) -> None:
    """Settle a campaign's row where its status becomes terminal, in that transaction."""
    settle(session, ImageUsage.campaign_id == campaign_id)


def settle_in_flight(session: Session, now: datetime) -> None:
    """Settle this month's rows of campaigns still running (the stalled sweep): retries and review rounds that
    make more than the reservation count before the campaign ends."""
    running = select(Campaign.id).where(
        Campaign.id == ImageUsage.campaign_id, Campaign.status.not_in([s.value for s in TERMINAL_STATUSES])
    )
    settle(session, (ImageUsage.created_at >= period_start(now, "month")) & running.exists())


def current_usage(
    session: Session, tenant_id: uuid.UUID, limits: Limits, now: datetime
) -> tuple[int, list[PeriodUsage]]:
    """The tenant's non-terminal campaigns and the images used this UTC day and month (the ledger as last settled),
    as the database keeps them for the admission (tenant_live, image_usage_days), in one statement."""
    day, month = period_start(now, "day").date(), period_start(now, "month").date()
    row = session.execute(
        select(
            select(func.coalesce(func.sum(TenantLive.campaigns), 0))
            .where(TenantLive.tenant_id == tenant_id)
            .scalar_subquery(),
            select(func.coalesce(func.sum(ImageUsageDay.images).filter(ImageUsageDay.day == day), 0))
            .where(ImageUsageDay.tenant_id == tenant_id, ImageUsageDay.day >= month)
            .scalar_subquery(),
            select(func.coalesce(func.sum(ImageUsageDay.images), 0))
            .where(ImageUsageDay.tenant_id == tenant_id, ImageUsageDay.day >= month)
            .scalar_subquery(),
        )
    ).one()
    usage = [
        PeriodUsage(period, limits.images(period), int(n), period_reset(now, period))
        for period, n in zip(PERIODS, row[1:], strict=True)
    ]
    return int(row[0]), usage


def admitted_under(limits: Limits) -> dict[str, int]:
    """What a creation's ledger row (image_usage.admitted_under) holds for migration 0018's deferred trigger, which
    admits the campaign under these limits when its transaction commits: over a quota the commit fails whole, and
    refusal() reads why."""
    return {
        "max_concurrent_campaigns": limits.max_concurrent_campaigns,
        "images_per_day": limits.images_per_day,
        "images_per_month": limits.images_per_month,
    }


# SQLSTATEs the admission trigger raises (migration 0018).
_REFUSALS = {"OB429": "concurrent_campaigns_limit", "OB402": "quota_exceeded"}


def refusal(exc: BaseException, now: datetime | None = None) -> LimitExceeded | None:
    """The quota refusal a failed commit carries (the admission trigger's SQLSTATE and JSON detail); None for any
    other error."""
    orig = getattr(exc, "orig", exc)
    code = _REFUSALS.get(getattr(orig, "sqlstate", None) or "")
    if code is None or not isinstance(orig, psycopg.Error):
        return None
    facts: dict[str, Any] = json.loads(orig.diag.message_detail or "{}")
    if code == "concurrent_campaigns_limit":
        detail = f"{facts['used']} campaigns are running; at most {facts['limit']} may run at once."
        return LimitExceeded(code, detail, facts)
    period: Period = facts["period"]
    reset = period_reset(now or datetime.now(UTC), period).isoformat()
    left = max(0, facts["limit"] - facts["used"])
    detail = (
        f"This campaign needs {facts['requested']} images; {left} of this {period}'s {facts['limit']} are left "
        f"(resets {reset})."
    )
    return LimitExceeded(code, detail, facts | {"reset": reset})
