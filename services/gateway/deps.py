"""Request dependencies shared by every router."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from opentelemetry import trace
from sqlalchemy.orm import Session

from services.gateway.errors import ProblemError
from services.gateway.limits.rate import check_rate
from services.gateway.unit_of_work import transaction
from shared import logs
from shared.config import Settings
from shared.storage import Storage
from shared.tenants import key_owner


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

_bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer onb_...`")


def _unauthorized(detail: str, error: str | None = None) -> ProblemError:
    challenge = f'Bearer error="{error}"' if error else "Bearer"
    return ProblemError(401, "unauthorized", "Unauthorized", detail, headers={"WWW-Authenticate": challenge})


def get_tenant(
    request: Request,
    session: SessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> uuid.UUID:
    if credentials is None or not credentials.credentials.strip():
        raise _unauthorized("Send the API key as `Authorization: Bearer <key>`.")
    owner = key_owner(session, credentials.credentials.strip())
    if owner is None:
        raise _unauthorized("The API key is invalid or revoked.", "invalid_token")
    tenant_id, request.state.key_prefix = owner
    logs.bind(tenant_id=tenant_id)  # on every later log line of this request, and on its span
    trace.get_current_span().set_attribute("onbrand.tenant_id", str(tenant_id))
    check_rate(request, session, tenant_id, request.state.key_prefix)  # 429 rate_limited; RateLimit headers
    return tenant_id


TenantDep = Annotated[uuid.UUID, Depends(get_tenant)]


async def get_key_prefix(request: Request, tenant_id: TenantDep) -> str:
    """The calling key's prefix (onb_ + 8 characters): who decided, in review records and events."""
    prefix: str = request.state.key_prefix
    return prefix


KeyPrefixDep = Annotated[str, Depends(get_key_prefix)]
