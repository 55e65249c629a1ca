"""Request dependencies shared by every router."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from opentelemetry import trace
from sqlalchemy.orm import Session

from services.gateway.errors import ProblemError
from services.gateway.limits.rate import check_rate
from services.gateway.unit_of_work import transaction
from shared import logs
from shared.config import Settings
from shared.storage import Storage
from shared.tenants import Caller, Scope, authenticate, touch_last_used


async def get_app_settings(request: Request) -> Settings:
    # The app's own Settings (create_app may be given one), not the process-wide cache.
    # async: no blocking work, so FastAPI need not hop to the threadpool for it.
    settings: Settings = request.app.state.settings
    return settings


async def get_app_storage(request: Request) -> Storage:
    storage: Storage = request.app.state.storage
    return storage


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
StorageDep = Annotated[Storage, Depends(get_app_storage)]
# scope="function": commit (and the after-commit task sends) happen before the response is
# sent, so a client that follows a 202 immediately finds the row it was told about.
SessionDep = Annotated[Session, Depends(transaction, scope="function")]
# Every write that creates something takes one: the same key and request return the first response (marked
# Idempotent-Replayed), the same key with another request is 422 idempotency_key_reused.
IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="Retry-safe write: the same key and request return the first response; another request "
        "with the same key is 422.",
    ),
]

_bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer onb_...`")


def _unauthorized(detail: str, error: str | None = None) -> ProblemError:
    challenge = f'Bearer error="{error}"' if error else "Bearer"
    return ProblemError(401, "unauthorized", "Unauthorized", detail, headers={"WWW-Authenticate": challenge})


# Paths only an admin key may use (every method). Everything else: safe methods need read, others write.
ADMIN_PATHS = ("/v1/keys",)
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def required_scope(method: str, path: str) -> Scope:
    """The one scope rule for every route: /v1/keys* (ADMIN_PATHS) → admin, GET/HEAD → read, else write."""
    if any(path == prefix or path.startswith(prefix + "/") for prefix in ADMIN_PATHS):
        return "admin"
    return "read" if method.upper() in _SAFE_METHODS else "write"


def _insufficient_scope(scope: Scope) -> ProblemError:
    return ProblemError(
        403,
        "insufficient_scope",
        "Insufficient scope",
        f"This request needs an API key with the `{scope}` scope.",
        headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
        extra={"scope": scope},
    )


def get_caller(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """Authenticate the key (read on every request: revocation and expiry count from the next one) and
    check its scope for this method and path."""
    if credentials is None or not credentials.credentials.strip():
        raise _unauthorized("Send the API key as `Authorization: Bearer <key>`.")
    caller = authenticate(session, credentials.credentials.strip())
    if caller is None:
        raise _unauthorized("The API key is invalid or revoked, or it has expired.", "invalid_token")
    request.state.key_prefix, request.state.key_id = caller.prefix, caller.key_id
    logs.bind(tenant_id=caller.tenant_id)  # on every later log line of this request, and on its span
    trace.get_current_span().set_attribute("onbrand.tenant_id", str(caller.tenant_id))
    check_rate(request, session, caller.tenant_id, caller.prefix)  # 429 rate_limited; RateLimit headers
    scope = required_scope(request.method, request.url.path)
    if scope not in caller.scopes:
        raise _insufficient_scope(scope)
    touch_last_used(caller)
    return caller


CallerDep = Annotated[Caller, Depends(get_caller)]


async def get_tenant(caller: CallerDep) -> uuid.UUID:
    return caller.tenant_id


TenantDep = Annotated[uuid.UUID, Depends(get_tenant)]


async def get_key_prefix(request: Request, tenant_id: TenantDep) -> str:
    """The calling key's prefix (onb_ + 8 characters): who decided, in review records and events."""
    prefix: str = request.state.key_prefix
    return prefix


KeyPrefixDep = Annotated[str, Depends(get_key_prefix)]
