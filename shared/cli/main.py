"""The `onbrand` command. Gateway and workers are started by import string, so shared/
never imports services/ or workers/ code at module level."""

from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from shared.cli.campaigns import campaigns_app
from shared.cli.keys import keys_app
from shared.config import get_settings
from shared.schemas import ASSET_KINDS

app = typer.Typer(
    help="Onbrand: on-brand ad images, product pixels exact.", no_args_is_help=True, pretty_exceptions_enable=False
)
stack_app = typer.Typer(help="The embedded stack: PostgreSQL+pgvector and Redis on loopback.", no_args_is_help=True)
tenants_app = typer.Typer(help="Tenants and API keys.", no_args_is_help=True)
assets_app = typer.Typer(
    help="The media library: bulk import, embedding status and model changes.", no_args_is_help=True
)
app.add_typer(stack_app, name="stack")
app.add_typer(tenants_app, name="tenants")
models_app = typer.Typer(help="The configured models: stage -> adapter -> weights.", no_args_is_help=True)
app.add_typer(assets_app, name="assets")
app.add_typer(models_app, name="models")
probe_app = typer.Typer(help="Health probes for containers (exit 0 healthy, 1 not).", no_args_is_help=True)
app.add_typer(probe_app, name="probe")
app.add_typer(campaigns_app, name="campaigns")
app.add_typer(keys_app, name="keys")

POOLS = {"cpu": "llm,retrieval,scoring,webhooks", "gpu": "segment,generate,qc"}


@stack_app.command("up")
def stack_up() -> None:
    """Start (or find running) Postgres and Redis; print their URLs as JSON."""
    from shared.cli import stack

    typer.echo(json.dumps(stack.up(get_settings()), indent=2))


@stack_app.command("down")
def stack_down() -> None:
    """Stop exactly the servers `stack up` started."""
    from shared.cli import stack

    for line in stack.down(get_settings()):
        typer.echo(line)


@stack_app.command("status")
def stack_status() -> None:
    """Show the embedded stack's servers and whether they run."""
    from shared.cli import stack

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


@tenants_app.command("limits")
def tenants_limits(
    tenant_id: Annotated[uuid.UUID, typer.Argument(help="The tenant.")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="NAME=VALUE, e.g. max_concurrent_campaigns=50 or gpu_share=2 (repeatable)."),
    ] = None,
    unset: Annotated[
        list[str] | None, typer.Option(help="NAME: back to the deployment's default (repeatable).")
    ] = None,
) -> None:
    """Show a tenant's limit overrides and effective limits as JSON; --set / --unset change the overrides."""
    from pydantic import ValidationError

    from shared import limits
    from shared.config import get_settings
    from shared.db.session import session_scope

    changes = {}
    for item in set_ or []:
        name, sep, value = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected NAME=VALUE, got {item!r}", param_hint="--set")
        changes[name.strip()] = value.strip()
    with session_scope() as session:
        try:
            own = limits.override(session, tenant_id, changes, unset or [])
        except LookupError as exc:
            raise typer.BadParameter(str(exc), param_hint="TENANT_ID") from None
        except ValidationError as exc:
            raise typer.BadParameter(
                exc.errors()[0]["msg"] + f" ({exc.errors()[0]['loc']})", param_hint="--set"
            ) from None
        applied = limits.tenant_limits(session, tenant_id, get_settings())
    overrides = own.model_dump(exclude_none=True)
    typer.echo(json.dumps({"tenant_id": str(tenant_id), "overrides": overrides, "effective": applied.summary()}))


def _uuid_option(value: str | None, hint: str) -> str | None:
    if not value:
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise typer.BadParameter(f"not a UUID: {value!r}", param_hint=hint) from None


@assets_app.command("import")
def assets_import(
    directory: Annotated[
        Path,
        typer.Argument(exists=True, file_okay=False, resolve_path=True, help="Folder of .png/.jpg/.jpeg/.webp images."),
    ],
    brand: Annotated[str, typer.Option("--brand", help="Brand id of every asset (a sidecar may override).")],
    kind: Annotated[str, typer.Option(help="Default kind: product | background | reference.")] = "product",
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Default tag of every asset (repeat).")] = None,
    api_url: Annotated[
        str, typer.Option(envvar=["ONBRAND_API_URL", "ONBRAND_PUBLIC_URL"], help="Gateway URL.")
    ] = "http://127.0.0.1:8000",
    api_key: Annotated[
        str, typer.Option(envvar="ONBRAND_API_KEY", show_default=False, help="Tenant API key (required).")
    ] = "",
    batch_size: Annotated[int, typer.Option(min=1, max=100, help="Files per request.")] = 50,
    concurrency: Annotated[int, typer.Option(min=1, max=32, help="Requests in flight.")] = 2,
    recursive: Annotated[bool, typer.Option("--recursive/--no-recursive", help="Walk sub-folders.")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Bulk-upload a folder of images through POST /v1/assets/batch; print a JSON summary.

    Metadata of each image, later sources overriding earlier ones: the flags and the title from the file name;
    the line {"file": "<relative path>", ...} of metadata.jsonl or manifest.jsonl in the folder;
    a sidecar <stem>.json next to the image. Keys: kind, title, description, tags, brand_id, attributes, kpis.

    The same bytes again come back as "existing", so an interrupted import can simply be run again.

    Exit code: 0 when every file was stored, 2 when some failed (the others are still imported),
    1 when the import could not go on (e.g. the API key was refused).
    """
    from shared.cli.library_import import ImportAborted, Options, run_import

    if not api_key:
        raise typer.BadParameter("no API key: pass --api-key or set ONBRAND_API_KEY", param_hint="--api-key")
    if kind not in ASSET_KINDS:
        raise typer.BadParameter(f"kind must be one of {', '.join(ASSET_KINDS)}", param_hint="--kind")
    opts = Options(
        directory=directory,
        api_url=api_url,
        api_key=api_key,
        brand_id=_uuid_option(brand, "--brand"),
        kind=kind,
        tags=tuple(tag or ()),
        batch_size=batch_size,
        concurrency=concurrency,
        recursive=recursive,
        quiet=quiet,
    )
    try:
        summary = run_import(opts)
    except ImportAborted as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(summary, indent=2))
    raise typer.Exit(2 if summary["failed"] else 0)


@assets_app.command("reembed")
def assets_reembed(
    tenant: Annotated[str, typer.Option(help="Only this tenant's assets (default: all tenants).")] = "",
) -> None:
    """Ask the retrieval workers to embed every asset missing a vector in any configured space.

    Sends the `onbrand.reembed` task (bulk priority). A worker then enqueues embed tasks for the assets
    without a vector of the text model, of ONBRAND_TEXT_EMBEDDING_MODEL_NEXT (when set) and of the image model.

    Changing the text embedding model without a search outage:

    1. Set ONBRAND_TEXT_EMBEDDING_MODEL_NEXT=<new model> on the workers and restart them.
    New assets now get both vectors; search keeps using ONBRAND_TEXT_EMBEDDING_MODEL.

    2. `onbrand assets reembed` fills the new space for the existing assets.
    Wait until `onbrand assets status` shows nothing missing for the new model.

    3. Set ONBRAND_TEXT_EMBEDDING_MODEL to the new model and clear ONBRAND_TEXT_EMBEDDING_MODEL_NEXT
    (gateway and workers).

    4. `onbrand assets prune-embeddings --keep <new model id> --yes` deletes the other models' vectors.
    """
    from shared.queue import BULK_PRIORITY, TASK_QUEUES, send

    tenant_id = _uuid_option(tenant, "--tenant")
    send("onbrand.reembed", *([tenant_id] if tenant_id else []), priority=BULK_PRIORITY)
    typer.echo(
        json.dumps(
            {
                "sent": "onbrand.reembed",
                "queue": TASK_QUEUES["onbrand.reembed"],
                "tenant_id": tenant_id,
                "priority": BULK_PRIORITY,
                "next": "watch `onbrand assets status` until nothing is missing",
            }
        )
    )


def _embedding_counts(tenant_id: str | None) -> tuple[int, dict[str, dict[str, Any]]]:
    """(assets, {model: {modality, embedded}}) for one tenant or all, in plain SQL."""
    from sqlalchemy import func, select

    from shared.db.models import Asset, AssetEmbedding
    from shared.db.session import session_scope

    assets = select(func.count()).select_from(Asset)
    per_model = (
        select(AssetEmbedding.model, AssetEmbedding.modality, func.count())
        .group_by(AssetEmbedding.model, AssetEmbedding.modality)
        .order_by(AssetEmbedding.model)
    )
    if tenant_id:
        assets = assets.where(Asset.tenant_id == uuid.UUID(tenant_id))
        per_model = per_model.where(AssetEmbedding.tenant_id == uuid.UUID(tenant_id))
    with session_scope() as session:
        total = int(session.scalar(assets) or 0)
        models: dict[str, dict[str, Any]] = {}
        for model, modality, count in session.execute(per_model):
            entry = models.setdefault(model, {"modality": modality, "embedded": 0})
            entry["embedded"] += int(count)
    return total, models


@assets_app.command("status")
def assets_status(
    tenant: Annotated[str, typer.Option(help="Only this tenant (default: all tenants).")] = "",
) -> None:
    """Per embedding model: vectors stored vs assets (JSON); `missing` > 0 means embedding is still catching up."""
    tenant_id = _uuid_option(tenant, "--tenant")
    total, models = _embedding_counts(tenant_id)
    for entry in models.values():
        entry["missing"] = max(total - entry["embedded"], 0)
    typer.echo(json.dumps({"tenant_id": tenant_id, "assets": total, "models": models}, indent=2))


@assets_app.command("prune-embeddings")
def assets_prune_embeddings(
    keep: Annotated[list[str], typer.Option("--keep", help="Model id whose vectors stay (repeat).")],
    yes: Annotated[bool, typer.Option("--yes", help="Really delete (default: dry run).")] = False,
) -> None:
    """Delete the stored vectors of every embedding model not named by --keep (all tenants).

    Prints the vector count per model first; without --yes nothing is deleted (dry run).
    Refuses when none of the kept models has any vector: a mistyped id would otherwise delete every vector.
    """
    from sqlalchemy import delete

    from shared.db.models import AssetEmbedding
    from shared.db.session import session_scope

    _, models = _embedding_counts(None)
    counts = {model: entry["embedded"] for model, entry in models.items()}
    doomed = {model: n for model, n in counts.items() if model not in keep}
    report: dict[str, Any] = {"keep": keep, "models": counts, "delete": doomed, "dry_run": not yes, "deleted": 0}
    if yes and doomed and not any(counts.get(k) for k in keep):
        typer.echo(json.dumps(report, indent=2))
        typer.echo(f"error: no vectors of {', '.join(keep)}: refusing to delete every vector (mistyped id?)", err=True)
        raise typer.Exit(1)
    if yes and doomed:
        with session_scope() as session:
            result = session.execute(delete(AssetEmbedding).where(AssetEmbedding.model.not_in(keep)))
            report["deleted"] = int(getattr(result, "rowcount", 0) or 0)
    typer.echo(json.dumps(report, indent=2))


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
        "services.gateway.app:serve_app",  # create_app plus this process's logging and tracing
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=get_settings().log_level.lower(),
        log_config=None,  # uvicorn's loggers propagate to the root handler set by shared.logs
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
    metrics_port: Annotated[
        int | None, typer.Option(help="Prometheus /metrics port (0: none) [default: ONBRAND_METRICS_PORT]")
    ] = None,
) -> None:
    """Run a Celery worker consuming the cpu queues, the gpu queues or all of them."""
    if pool not in (*POOLS, "all"):
        raise typer.BadParameter("pool must be cpu, gpu or all", param_hint="--pool")
    queues = ",".join(POOLS.values()) if pool == "all" else POOLS[pool]
    node = name or f"{pool}-{os.getpid()}@%h"
    flags = ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    if pool == "gpu":
        if concurrency != 1:
            raise typer.BadParameter(
                "a GPU worker runs one process per GPU (start one worker per GPU)", param_hint="--concurrency"
            )
        # A long-lived CUDA process fragments memory and keeps what leaks; replacing the child
        # now and then bounds both (the model is loaded again once, not per task).
        flags += ["--max-tasks-per-child", str(get_settings().gpu_max_tasks_per_child)]
    if beat:
        flags += ["--beat", *BEAT_FLAGS, _schedule_file()]
    _worker_environment(queues, metrics_port)
    _exec_celery("worker", "-Q", queues, "-c", str(concurrency), "-n", node, *flags)


def _worker_environment(queues: str, metrics_port: int | None) -> None:
    """What the Celery process about to be exec'd (and its pool processes) must see at import."""
    from shared import metrics

    os.environ["ONBRAND_WORKER_QUEUES"] = queues  # tells the pool processes which models to warm
    if metrics_port is not None:
        os.environ["ONBRAND_METRICS_PORT"] = str(metrics_port)
    metrics.prepare_multiprocess()
    if get_settings().worker_soft_shutdown_seconds > 0:
        # billiard reads this at import: SIGTERM then starts the soft shutdown (finish for
        # worker_soft_shutdown_timeout, then requeue) instead of an unbounded warm shutdown.
        os.environ["REMAP_SIGTERM"] = "SIGQUIT"


# The beat's scheduler touches its heartbeat file (liveness) on every tick; then the schedule file.
BEAT_FLAGS = ("--scheduler", "workers.observability:HeartbeatScheduler", "--schedule")


@app.command()
def beat() -> None:
    """Run the periodic sweeps (lost webhook and campaign sends). Exactly one per deployment."""
    _exec_celery("beat", *BEAT_FLAGS, _schedule_file())


def _schedule_file() -> str:
    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    return str(settings.home / "celerybeat-schedule")


def _exec_celery(*args: str) -> NoReturn:
    argv = [sys.executable, "-m", "celery", "-A", "workers.celery_app:app", *args, "-l", get_settings().log_level]
    os.execvp(argv[0], argv)  # replace this process: signals reach Celery directly


@models_app.command("check")
def models_check() -> NoReturn:
    """Load every configured model offline; name the stage of each one that is missing (exit 1)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    argv = [sys.executable, "-m", "workers.models.registry"]
    os.execvp(argv[0], argv)


@models_app.command("pull")
def models_pull(
    dry_run: Annotated[bool, typer.Option(help="show what would be fetched, fetch nothing")] = False,
) -> None:
    """Download every configured hub model into ONBRAND_MODELS_DIR (where there is internet); exit 1
    when any could not be fetched. Run `onbrand models check` afterwards, offline."""
    from shared.cli import model_pull

    settings = get_settings()
    results = model_pull.pull(settings, dry_run=dry_run)
    for r in results:
        typer.echo(f"{r.status:<9} {r.stage:<9} {r.adapter:<17} {r.model or '(embedded)'}  {r.detail}")
    failed = [r for r in results if r.status == "failed"]
    typer.echo(
        f"models dir {settings.model_root}: {len(results) - len(failed)} of {len(results)} ready"
        + (" (dry run)" if dry_run else "")
    )
    if failed:
        raise typer.Exit(1)


@app.command()
def verify(
    campaign_id: Annotated[str, typer.Argument(help="The campaign whose results to verify, or an image file.")],
    every_candidate: Annotated[bool, typer.Option("--all", help="Every candidate, not only the results.")] = False,
) -> None:
    """Re-derive each result's product layer from the stored source photo + mask and check it bit for bit;
    exits 1 when any fails (or there is nothing to verify). Given an image file: validate its C2PA manifest
    and re-check its product against the source the manifest names."""
    from shared.cli.verify import image_lines, table, verify_campaign, verify_image

    if Path(campaign_id).is_file():
        check = verify_image(Path(campaign_id))
        for line in image_lines(Path(campaign_id), check):
            typer.echo(line)
        raise typer.Exit(0 if check.ok else 1)

    ident = _uuid_option(campaign_id, "CAMPAIGN_ID")
    checked = verify_campaign(uuid.UUID(str(ident)), every_candidate)
    for line in table(checked):
        typer.echo(line)
    if not checked or not all(c.report.ok for c in checked):
        raise typer.Exit(1)


@app.command()
def demo(out: Annotated[str, typer.Option(help="output dir")] = "out/demo") -> None:
    """Run a real campaign end to end on the embedded defaults (what `make demo` calls)."""
    from shared.cli.demo.run import run_demo

    sys.exit(run_demo(out))


@probe_app.command("heartbeat")
def probe_heartbeat(
    process: Annotated[str, typer.Option(help="worker | beat")] = "worker",
    max_age: Annotated[float, typer.Option(help="seconds since the last heartbeat")] = 120.0,
) -> None:
    """Liveness: the process's event loop touched <home>/<process>.heartbeat within --max-age seconds.
    Needs neither broker nor database, so an outage of either does not restart every pod."""
    import time

    if process not in ("worker", "beat"):
        raise typer.BadParameter("process must be worker or beat", param_hint="--process")
    path = get_settings().home / f"{process}.heartbeat"
    try:
        age = time.time() - path.stat().st_mtime
    except OSError:
        _unhealthy(f"no heartbeat file {path}")
    if age > max_age:
        _unhealthy(f"last heartbeat {age:.0f} s ago (max {max_age:.0f} s)")
    typer.echo(f"ok: heartbeat {age:.1f} s ago")


def _unhealthy(why: str) -> NoReturn:
    typer.echo(f"unhealthy: {why}", err=True)
    raise typer.Exit(1)


@probe_app.command("ping")
def probe_ping(
    pool: Annotated[str, typer.Option(help="cpu | gpu | all: the node <pool>@<this host> to ping")] = "cpu",
    timeout: Annotated[float, typer.Option(help="seconds to wait for the reply")] = 10.0,
) -> None:
    """Readiness: this host's worker answers a Celery ping through the broker."""
    import socket

    from shared.queue import producer

    node = f"{pool}@{socket.gethostname()}"
    replies = producer().control.ping(destination=[node], timeout=timeout)
    if not any(node in reply for reply in replies or []):
        _unhealthy(f"{node} did not answer within {timeout:g} s")
    typer.echo(f"ok: {node}")


@probe_app.command("http")
def probe_http(
    url: Annotated[str, typer.Option(help="URL that must answer 200")] = "http://127.0.0.1:8000/healthz",
    timeout: Annotated[float, typer.Option(help="seconds")] = 4.0,
) -> None:
    """The gateway answers (container health checks; Kubernetes uses httpGet probes instead)."""
    import httpx

    try:
        status = httpx.get(url, timeout=timeout).status_code
    except httpx.HTTPError as exc:
        _unhealthy(f"{url}: {exc}")
    if status != 200:
        _unhealthy(f"{url}: HTTP {status}")
    typer.echo(f"ok: {url}")


def main() -> None:
    app()
