"""`onbrand keys create|list|revoke|rotate --tenant-id …`: a tenant's API keys, straight on the database.

An operator tool like `onbrand tenants create` (whoever runs it can reach the database, so it needs no key
and may revoke any key, the last admin key included). A new key is printed once, in the JSON on stdout;
list never prints a key or its hash. A refusal prints `error: …` on stderr and exits 1.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    from shared.db.models import ApiKey

# The database modules (SQLAlchemy, pgvector) are imported inside the commands: `onbrand --help` and
# every other command would otherwise pay about a second for them.

keys_app = typer.Typer(
    help="A tenant's API keys: create, list, revoke, rotate (on the database).", no_args_is_help=True
)


TenantId = Annotated[uuid.UUID, typer.Option("--tenant-id", help="The tenant's id.")]
KeyId = Annotated[uuid.UUID, typer.Argument(help="The key's id (from `onbrand keys list`).")]


def _fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


def _key_json(key: ApiKey, secret: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": str(key.id),
        "tenant_id": str(key.tenant_id),
        "prefix": key.prefix,
        "name": key.name,
        "scopes": list(key.scopes),
        "created_at": key.created_at.isoformat(),
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
    }
    if secret is not None:
        body["api_key"] = secret  # shown once
    return body


@keys_app.command("create")
def keys_create(
    tenant_id: TenantId,
    name: Annotated[str, typer.Option(help="What the key is for.")] = "default",
    scope: Annotated[
        list[str] | None, typer.Option("--scope", help="read, write or admin (repeat; default all three).")
    ] = None,
) -> None:
    """Create a key; print its JSON with `api_key` (shown once)."""
    from shared.db.session import session_scope
    from shared.tenants import SCOPES, new_key

    with session_scope() as session:
        try:
            key, secret = new_key(session, tenant_id, name, scope or SCOPES)
        except ValueError as exc:
            _fail(str(exc))
        typer.echo(json.dumps(_key_json(key, secret)))


@keys_app.command("list")
def keys_list(tenant_id: TenantId) -> None:
    """Print the tenant's keys as a JSON array (prefix, name, scopes, dates; never a key or its hash)."""
    from shared.db.session import session_scope
    from shared.tenants import list_keys

    with session_scope() as session:
        typer.echo(json.dumps([_key_json(key) for key in list_keys(session, tenant_id)], indent=2))


@keys_app.command("revoke")
def keys_revoke(key_id: KeyId, tenant_id: TenantId) -> None:
    """Revoke a key: its next request is refused (401)."""
    from shared.db.session import session_scope
    from shared.tenants import KeyNotFoundError, revoke_key

    with session_scope() as session:
        try:
            key = revoke_key(session, tenant_id, key_id)
        except KeyNotFoundError:
            _fail(f"no key {key_id} in tenant {tenant_id}")
        typer.echo(json.dumps(_key_json(key)))


@keys_app.command("rotate")
def keys_rotate(
    key_id: KeyId,
    tenant_id: TenantId,
    overlap_seconds: Annotated[
        int | None, typer.Option(help="How long the old key keeps working: 0 to 604800 s (default a day).")
    ] = None,
) -> None:
    """A new key with the same name and scopes (printed once, `api_key`); the old one expires after the overlap."""
    from shared.db.session import session_scope
    from shared.tenants import DEFAULT_OVERLAP_S, KeyInactiveError, KeyNotFoundError, rotate_key

    with session_scope() as session:
        try:
            key, secret = rotate_key(
                session, tenant_id, key_id, DEFAULT_OVERLAP_S if overlap_seconds is None else overlap_seconds
            )
        except KeyNotFoundError:
            _fail(f"no key {key_id} in tenant {tenant_id}")
        except KeyInactiveError:
            _fail(f"key {key_id} is revoked or expired; create a new key instead")
        except ValueError as exc:
            _fail(str(exc))
        typer.echo(json.dumps(_key_json(key, secret)))
