"""The per-key rate limit on every authenticated request, and the RateLimit headers on its response.

The check runs in the authentication dependency (services/gateway/deps.py) and leaves the header values
in the request's state; RateLimitHeadersMiddleware writes them on whatever response goes out, problem
responses included (a 404 or a 429 carries them as a 200 does).
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.errors import ProblemError
from shared import limits
from shared.config import Settings
from shared.key_cache import Caller

HEADERS_STATE = "ratelimit_headers"
DECISION_STATE = "ratelimit_decision"


async def take_token(request: Request, caller: Caller) -> limits.RateDecision | None:
    """Spend one of this key's tokens (from this process's lease while it holds one: shared.limits) and leave the
    RateLimit fields for the response; None when limits are off or Redis is down (then the request goes through).
    refuse_if_limited turns a refusal into the 429."""
    settings: Settings = request.app.state.settings
    if not settings.limits_enabled:
        return None
    buckets = _effective(request, settings, caller.limit_overrides).buckets(request.method)
    decision = await limits.take(settings, caller.prefix, buckets)
    if decision is None:
        return None
    setattr(request.state, DECISION_STATE, decision)
    setattr(
        request.state,
        HEADERS_STATE,
        {"RateLimit-Policy": limits.policy_header(buckets), "RateLimit": limits.state_header(decision)},
    )
    return decision


_LIMITS_STATE = "effective_limits"  # app.state: overrides -> Limits, so that a request does not validate them again


def _effective(request: Request, settings: Settings, overrides: dict[str, Any] | None) -> limits.Limits:
    known: dict[Any, limits.Limits] | None = getattr(request.app.state, _LIMITS_STATE, None)
    if known is None:
        known = {}
        setattr(request.app.state, _LIMITS_STATE, known)
    key = None if not overrides else tuple(sorted(overrides.items()))  # JSON scalars: hashable
    found = known.get(key)
    if found is None:
        if len(known) >= 1_000:  # tenants with overrides a process serves at once; more and it starts over
            known.clear()
        found = known[key] = limits.effective(settings, overrides)
    return found


async def key_epoch(request: Request, decision: limits.RateDecision | None, subscribed: bool) -> int | None:
    """The key epoch (shared.key_cache) when this request must check it: from the limiter's reply when it asked
    Redis, else read on its own unless this process is subscribed to key changes (it hears of them then). None when
    there is nothing to check or Redis is down (cached keys then expire on their own)."""
    if decision is not None and decision.key_epoch is not None:
        return decision.key_epoch
    settings: Settings = request.app.state.settings
    if subscribed or (decision is None and settings.limits_enabled):  # the latter: the limiter failed open
        return None
    return await limits.read_key_epoch(settings)


def refuse_if_limited(decision: limits.RateDecision | None) -> None:
    """429 rate_limited when the key had no token left."""
    if decision is None or decision.allowed:
        return
    names = " and ".join(f"`{n}`" for n in decision.exhausted)
    raise ProblemError(
        429,
        "rate_limited",
        "Too many requests",
        f"This API key used up its {names} rate limit; retry in {decision.retry_after} s.",
        headers={"Retry-After": str(decision.retry_after)},
        extra={"policies": decision.exhausted, "retry_after": decision.retry_after},
    )


def current_decision(request: Request) -> limits.RateDecision | None:
    decision: limits.RateDecision | None = getattr(request.state, DECISION_STATE, None)
    return decision


class RateLimitHeadersMiddleware:
    """Adds the RateLimit-Policy and RateLimit fields take_token left in the request's state."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})  # the dict request.state writes into

        async def send_with_headers(message: Message) -> None:
            fields: dict[str, str] | None = state.get(HEADERS_STATE)
            if message["type"] == "http.response.start" and fields:
                extra = [(name.lower().encode(), value.encode()) for name, value in fields.items()]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
