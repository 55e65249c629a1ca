"""The per-key rate limit on every authenticated request, and the RateLimit headers on its response.

The check runs in the authentication dependency (services/gateway/deps.py) and leaves the header values
in the request's state; RateLimitHeadersMiddleware writes them on whatever response goes out, problem
responses included (a 404 or a 429 carries them as a 200 does).
"""

from __future__ import annotations

import uuid
from typing import Any

from fastapi import Request
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.gateway.errors import ProblemError
from shared import limits
from shared.config import Settings

HEADERS_STATE = "ratelimit_headers"
DECISION_STATE = "ratelimit_decision"


def check_rate(request: Request, session: Session, tenant_id: uuid.UUID, key_prefix: str) -> None:
    """Spend one of this key's tokens (429 rate_limited when none is left); Redis down: let it through."""
    settings: Settings = request.app.state.settings
    if not settings.limits_enabled:
        return
    buckets = limits.tenant_limits(session, tenant_id, settings).buckets(request.method)
    decision = limits.take(settings, key_prefix, buckets)
    if decision is None:
        return
    setattr(request.state, DECISION_STATE, decision)
    setattr(
        request.state,
        HEADERS_STATE,
        {"RateLimit-Policy": limits.policy_header(buckets), "RateLimit": limits.state_header(decision)},
    )
    if not decision.allowed:
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
    """Adds the RateLimit-Policy and RateLimit fields check_rate left in the request's state."""

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
