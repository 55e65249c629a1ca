"""Request dependencies shared by every router."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from opentelemetry import trace
from sqlalchemy.orm import Session

from services.gateway.errors import ProblemError
from services.gateway.limits.rate import key_epoch, refuse_if_limited, take_token
from services.gateway.unit_of_work import transaction
from shared import logs
from shared.config import Settings
from shared.db.session import new_session
from shared.key_cache import Caller, KeyCache
from shared.limits import SAFE_METHODS
from shared.storage import Storage
from shared.tenants import Scope, hash_key, last_use_due, read_caller, touch_last_used


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


def required_scope(method: str, path: str) -> Scope:
    """The one scope rule for every route: /v1/keys* (ADMIN_PATHS) → admin, GET/HEAD → read, else write."""
    if any(path == prefix or path.startswith(prefix + "/") for prefix in ADMIN_PATHS):
        return "admin"
    return "read" if method.upper() in SAFE_METHODS else "write"


def _insufficient_scope(scope: Scope) -> ProblemError:
    return ProblemError(
        403,
        "insufficient_scope",
        "Insufficient scope",
        f"This request needs an API key with the `{scope}` scope.",
        headers={"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'},
        extra={"scope": scope},
    )


async def get_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """Authenticate the key and check its scope for this method and path. The key is read from this process's
    cache (shared.key_cache) when it holds it; revocation, rotation and limit changes reach the cache through the
    key-changes subscription, or the key epoch checked per request while that is down, so they count from the next
    request. async: a cached key costs the event loop no round trip while the rate limiter's lease holds tokens and
    the subscription is live; Postgres is read in the thread pool, on a session of its own (a request that only
    reads on the event loop then opens none)."""
    if credentials is None or not credentials.credentials.strip():
        raise _unauthorized("Send the API key as `Authorization: Bearer <key>`.")
    api_key, now = credentials.credentials.strip(), datetime.now(UTC)
    settings: Settings = request.app.state.settings
    cache: KeyCache = request.app.state.key_cache
    key_hash = hash_key(api_key)
    epoch_before, caller = cache.epoch, cache.get(key_hash)
    cached = caller is not None
    if caller is None:
        caller = await run_in_threadpool(_read_caller, cache, api_key, key_hash)
    elif not caller.valid_at(now):
        raise _invalid_key()  # expired since it was read
    decision = await take_token(request, caller)  # RateLimit headers; maybe the key epoch
    epoch = await key_epoch(request, decision, cache.subscribed(settings))
    if epoch is not None:
        cache.saw_epoch(epoch)
    if cached and cache.epoch != epoch_before:
        # a key or limit changed somewhere (heard from Redis, or through the subscription): read this one again
        caller = await run_in_threadpool(_read_caller, cache, api_key, key_hash)
    request.state.key_prefix, request.state.key_id = caller.prefix, caller.key_id
    logs.bind(tenant_id=caller.tenant_id)  # on every later log line of this request, and on its span
    trace.get_current_span().set_attribute("onbrand.tenant_id", str(caller.tenant_id))
    refuse_if_limited(decision)  # 429 rate_limited
    scope = required_scope(request.method, request.scope["path"])  # request.url would parse a URL for it
    if scope not in caller.scopes:
        raise _insufficient_scope(scope)
    if last_use_due(caller, now) and await run_in_threadpool(touch_last_used, caller, now):
        cache.used(key_hash, now)
    return caller


def _read_caller(cache: KeyCache, api_key: str, key_hash: str) -> Caller:
    """The key's caller from Postgres, now in the cache; 401 for a key that is unknown, revoked or expired."""
    epoch = cache.epoch  # before the read: a change announced meanwhile makes this entry stale at once
    with new_session(read_only=True) as session:
        caller = read_caller(session, api_key)
    if caller is None or not caller.valid_at(datetime.now(UTC)):
        raise _invalid_key()
    cache.put(key_hash, caller, epoch)
    return caller


def _invalid_key() -> ProblemError:
    return _unauthorized("The API key is invalid or revoked, or it has expired.", "invalid_token")


CallerDep = Annotated[Caller, Depends(get_caller)]


async def get_tenant(caller: CallerDep) -> uuid.UUID:
    return caller.tenant_id


TenantDep = Annotated[uuid.UUID, Depends(get_tenant)]


async def get_key_prefix(request: Request, tenant_id: TenantDep) -> str:
    """The calling key's prefix (onb_ + 8 characters): who decided, in review records and events."""
    prefix: str = request.state.key_prefix
    return prefix


KeyPrefixDep = Annotated[str, Depends(get_key_prefix)]
