"""The `onbrand` command. Gateway and workers are started by import string, so shared/
never imports services/ or workers/ code at module level."""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, NoReturn

import typer

from shared.config import get_settings

app = typer.Typer(
    help="Onbrand: on-brand ad images, product pixels exact.", no_args_is_help=True, pretty_exceptions_enable=False
)
stack_app = typer.Typer(help="The embedded stack: PostgreSQL+pgvector and Redis on loopback.", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants and API keys.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")
app.add_typer(tenants_app, name="tenants")

POOLS = {"cpu": "llm,retrieval,scoring,webhooks", "gpu": "segment,generate,qc"}


@stack_app.command("up")
def stack_up() -> None:
    """Start (or find running) Postgres and Redis; print their URLs as JSON."""
    from shared import stack

    typer.echo(json.dumps(stack.up(get_settings()), indent=2))


@stack_app.command("down")
def stack_down() -> None:
    """Stop exactly the servers `stack up` started."""
    from shared import stack

    for line in stack.down(get_settings()):
        typer.echo(line)


@stack_app.command("status")
def stack_status() -> None:
    """Show the embedded stack's servers and whether they run."""
    from shared import stack

    typer.echo(json.dumps(stack.status(get_settings()), indent=2))


@app.command()
def migrate(revision: str = "head") -> None:
    """Apply Alembic migrations (creates the vector extension and every table)."""
    from shared.db.migrate import upgrade

    upgrade(revision)
    typer.echo(f"migrated to {revision}")


@tenants_app.command("create")
def tenants_create(name: str) -> None:
    """Create a tenant and print JSON with tenant_id and api_key (shown once)."""
    from shared.db.session import session_scope
    from shared.tenants import create_tenant

    with session_scope() as session:
        tenant_id, api_key = create_tenant(session, name)
    typer.echo(json.dumps({"tenant_id": str(tenant_id), "name": name, "api_key": api_key}))


@app.command()
def gateway(
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    host: Annotated[str, typer.Option(help="Bind address")] = "127.0.0.1",
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Run the REST gateway."""
    import uvicorn

    os.environ.setdefault("ONBRAND_PUBLIC_URL", f"http://{host}:{port}")
    get_settings.cache_clear()
    uvicorn.run(
        "services.gateway.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=get_settings().log_level.lower(),
        access_log=False,
    )


@app.command()
def worker(
    pool: Annotated[str, typer.Option(help="cpu | gpu | all")] = "all",
    concurrency: Annotated[int, typer.Option(help="worker processes")] = 1,
    name: Annotated[str, typer.Option(help="worker node name")] = "",
    beat: Annotated[
        bool, typer.Option(help="also run the periodic sweeps (exactly one worker per deployment)")
    ] = False,
) -> None:
    """Run a Celery worker consuming the cpu queues, the gpu queues or all of them."""
    if pool not in (*POOLS, "all"):
        raise typer.BadParameter("pool must be cpu, gpu or all", param_hint="--pool")
    queues = ",".join(POOLS.values()) if pool == "all" else POOLS[pool]
    node = name or f"{pool}-{os.getpid()}@%h"
    flags = ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    if beat:
        flags += ["--beat", "--schedule", _schedule_file()]
    os.environ["ONBRAND_WORKER_QUEUES"] = queues  # tells the pool processes which models to warm
    _exec_celery("worker", "-Q", queues, "-c", str(concurrency), "-n", node, *flags)


@app.command()
def beat() -> None:
    """Run the periodic sweeps (lost webhook and campaign sends). Exactly one per deployment."""
    _exec_celery("beat", "--schedule", _schedule_file())


def _schedule_file() -> str:
    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    return str(settings.home / "celerybeat-schedule")


def _exec_celery(*args: str) -> NoReturn:
    argv = [sys.executable, "-m", "celery", "-A", "workers.celery_app:app", *args, "-l", get_settings().log_level]
    os.execvp(argv[0], argv)  # replace this process: signals reach Celery directly


@app.command()
def demo(out: Annotated[str, typer.Option(help="output dir")] = "out/demo") -> None:
    """Run a real campaign end to end on the embedded defaults (what `make demo` calls)."""
    from shared.demo import run_demo

    sys.exit(run_demo(out))


def main() -> None:
    app()
