"""Rate limits per API key (token buckets in Redis) and quotas per tenant (Postgres).

Rate limits: every authenticated request takes one token from its key's `default` bucket, and a write
(any method but GET/HEAD/OPTIONS) also one from the lower `writes` bucket, in one Lua script, so two
gateways never both spend the last token. Redis keeps the clock (TIME), not the gateways. When Redis cannot
be reached the limiter fails open (logged and counted): the quotas below live in Postgres and still hold.

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

# KEYS: the key epoch (shared.key_cache), then one bucket per policy. ARGV: rate and burst per bucket, in KEYS
# order. A request is allowed only when every bucket holds a token, and then takes one from each; the reply is
# [allowed, key epoch, tokens left per bucket] (tokens as strings: Lua numbers would be truncated to integers on the
# way back). The epoch rides along so that gateways learn of revoked keys without a round trip of their own.
TOKEN_BUCKETS = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) + tonumber(now_parts[2]) / 1000000
local tokens = {}
local allowed = 1
for i = 2, #KEYS do
  local rate = tonumber(ARGV[2 * i - 3])
  local burst = tonumber(ARGV[2 * i - 2])
  local state = redis.call('HMGET', KEYS[i], 'tokens', 'ts')
  local held = tonumber(state[1]) or burst
  local since = tonumber(state[2]) or now
  held = math.min(burst, held + math.max(0, now - since) * rate)
  tokens[i] = held
  if held < 1 then allowed = 0 end
end
local reply = {allowed, tonumber(redis.call('GET', KEYS[1]) or '0')}
for i = 2, #KEYS do
  local rate = tonumber(ARGV[2 * i - 3])
  local burst = tonumber(ARGV[2 * i - 2])
  if allowed == 1 then tokens[i] = tokens[i] - 1 end
  redis.call('HSET', KEYS[i], 'tokens', tostring(tokens[i]), 'ts', tostring(now))
  redis.call('EXPIRE', KEYS[i], math.ceil(burst / rate) + 1)
  reply[i + 1] = tostring(tokens[i])
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
    key_epoch: int  # shared.key_cache: a change means some key or limit changed since

    @property
    def retry_after(self) -> int:
        return max(s.retry_after for s in self.states if s.tokens < 1)

    @property
    def exhausted(self) -> list[str]:
        return [s.bucket.name for s in self.states if s.tokens < 1]


# One client per event loop and URL: an asyncio connection belongs to the loop that opened it (the gateway runs one
# loop per process; tests run one per TestClient).
_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, tuple[redis.asyncio.Redis, Any]]] = (
    weakref.WeakKeyDictionary()
)
_REDIS_ERRORS = (redis.RedisError, RuntimeError, OSError, asyncio.TimeoutError)


def _client(url: str) -> tuple[redis.asyncio.Redis, Any]:
    """This loop's client for `url` and the token-bucket script registered on it."""
    clients = _CLIENTS.setdefault(asyncio.get_running_loop(), {})
    if url not in clients:
        # Short timeouts: with Redis gone a request waits at most this long before failing open.
        client = redis.asyncio.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        clients[url] = (client, client.register_script(TOKEN_BUCKETS))
    return clients[url]


async def take(settings: Settings, key_prefix: str, buckets: tuple[Bucket, ...]) -> RateDecision | None:
    """Take a token from each bucket of this key atomically; None when Redis failed (fail open)."""
    keys = [KEY_EPOCH, *(f"onbrand:ratelimit:{b.name}:{key_prefix}" for b in buckets)]
    args = [v for b in buckets for v in (repr(float(b.per_second)), str(b.burst))]
    try:
        _, script = _client(settings.broker_url)
        reply = await script(keys=keys, args=args)
    except _REDIS_ERRORS as exc:
        RATE_LIMIT_FAIL_OPEN.inc()
        log.warning("rate limiter unavailable, request let through: %s", exc)
        return None
    states = tuple(BucketState(b, float(t)) for b, t in zip(buckets, reply[2:], strict=True))
    decision = RateDecision(bool(int(reply[0])), states, int(reply[1]))
    for name in [] if decision.allowed else decision.exhausted:
        RATE_LIMITED.labels(name).inc()
    return decision


async def read_key_epoch(settings: Settings) -> int | None:
    """The key epoch alone, for a gateway with rate limits off; None when Redis failed."""
    try:
        client, _ = _client(settings.broker_url)
        return int(await client.get(KEY_EPOCH) or 0)
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


def reserve(session: Session, tenant_id: uuid.UUID, campaign_id: uuid.UUID, images: int, limits: Limits | None) -> None:
    """Write the campaign's row in the ledger. With `limits`, the database admits it when the transaction commits
    (migration 0018's deferred trigger: under the tenant's lock, counting every creation committed before): over a
    quota the commit fails whole, and refusal() reads why. Without, the row is only the ledger (limits off)."""
    admitted_under = None
    if limits is not None:
        admitted_under = {
            "max_concurrent_campaigns": limits.max_concurrent_campaigns,
            "images_per_day": limits.images_per_day,
            "images_per_month": limits.images_per_month,
        }
    session.add(
        ImageUsage(tenant_id=tenant_id, campaign_id=campaign_id, reserved=images, admitted_under=admitted_under)
    )


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
