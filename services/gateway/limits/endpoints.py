"""/v1/limits: the caller's rate limits and its tenant's quotas, with what is used and when it resets."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request

from services.gateway.deps import SessionDep, SettingsDep, TenantDep
from services.gateway.limits.rate import current_decision
from services.gateway.limits.schemas import ConcurrentRead, ImagesRead, LimitsRead, RateLimitRead
from shared import limits

router = APIRouter(prefix="/v1/limits", tags=["limits"])


@router.get("", response_model=LimitsRead)
def get_limits(request: Request, session: SessionDep, tenant_id: TenantDep, settings: SettingsDep) -> LimitsRead:
    own = limits.tenant_limits(session, tenant_id, settings)
    running, usage = limits.current_usage(session, tenant_id, own, datetime.now(UTC))
    return LimitsRead(
        enforced=settings.limits_enabled,
        rate_limits=_rate_limits(request, own),
        concurrent_campaigns=ConcurrentRead(
            limit=own.max_concurrent_campaigns,
            used=running,
            remaining=max(0, own.max_concurrent_campaigns - running),
        ),
        images=[
            ImagesRead(period=u.period, limit=u.limit, used=u.used, remaining=u.remaining, reset=u.reset) for u in usage
        ],
        gpu_share=own.gpu_share,
    )


def _rate_limits(request: Request, own: limits.Limits) -> list[RateLimitRead]:
    # This GET spent a token of `default` only; its state is the one the RateLimit header reports.
    decision = current_decision(request)
    states = {s.bucket.name: s for s in decision.states} if decision else {}
    return [
        RateLimitRead(
            policy=bucket.name,
            per_second=bucket.per_second,
            burst=bucket.burst,
            window_seconds=bucket.window,
            remaining=states[bucket.name].remaining if bucket.name in states else None,
            reset_seconds=states[bucket.name].reset if bucket.name in states else None,
        )
        for bucket in (own.default, own.writes)
    ]
