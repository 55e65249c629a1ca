"""`onbrand campaigns create|watch|review-link|download`: run and review a campaign from a shell.

Everything goes through the gateway's HTTP API with a tenant key (never the database), so the
commands work against any deployment. A refused call prints the problem's title and detail and
exits 1; the API key is sent, never printed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer
from rich.console import Console
from rich.table import Table

from shared.cli.api import TERMINAL, ApiError, Json, api, get_campaign, wait_for_campaign
from shared.presets import PRESETS

campaigns_app = typer.Typer(
    help="Run and review campaigns over the gateway's API: create, watch, review-link, download.",
    no_args_is_help=True,
)

ApiUrl = Annotated[
    str, typer.Option("--api-url", envvar=["ONBRAND_API_URL", "ONBRAND_PUBLIC_URL"], help="Gateway URL.")
]
ApiKey = Annotated[
    str,
    typer.Option("--api-key", envvar="ONBRAND_API_KEY", show_default=False, help="Tenant API key (never printed)."),
]
Interval = Annotated[float, typer.Option(min=0.1, help="Seconds between polls.")]
Timeout = Annotated[float, typer.Option(min=1, help="Give up watching after this many seconds (exit 3).")]
DEFAULT_URL = "http://127.0.0.1:8000"

# watch: completed 0, partial 2 (some results, or some products failed), failed or cancelled 1
EXIT_CODES = {"completed": 0, "partial": 2, "failed": 1, "cancelled": 1}
STILL_RUNNING = 3  # --timeout passed before the campaign ended: not a verdict on the campaign


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _uuid(value: str, hint: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise typer.BadParameter(f"not a UUID: {value!r}", param_hint=hint) from None


@contextmanager
def gateway(api_url: str, api_key: str) -> Iterator[httpx.Client]:
    """A client with the key; a refused call or an unreachable gateway ends the command (one line, exit 1)."""
    if not api_key:
        raise typer.BadParameter("no API key: pass --api-key or set ONBRAND_API_KEY", param_hint="--api-key")
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=api_url.rstrip("/"), headers=headers, timeout=60.0) as client:
        try:
            yield client
        except ApiError as exc:
            _fail(str(exc))
        except httpx.HTTPError as exc:  # the message names the error, never the request's headers
            _fail(f"gateway {api_url} did not answer: {type(exc).__name__}: {exc}")


# --------------------------------------------------------------------------- create


def parse_size(value: str) -> Json:
    """WxH (e.g. 1080x1350) as width/height; an aspect ratio (e.g. 4:5) as the API's named size; a preset
    name (e.g. story, iab-300x250: shared.presets) as the preset."""
    if match := re.fullmatch(r"\s*(\d+)\s*[xX×]\s*(\d+)\s*", value):
        return {"width": int(match[1]), "height": int(match[2])}
    if re.fullmatch(r"\s*\d+(\.\d+)?:\d+\s*", value):
        return {"aspect": value.strip()}
    if value.strip() in PRESETS:
        return {"preset": value.strip()}
    raise typer.BadParameter(
        f"{value!r}: give WIDTHxHEIGHT (e.g. 1024x1024), an aspect (e.g. 4:5) or a preset ({', '.join(PRESETS)})",
        param_hint="--size",
    )


def campaign_body(brand_id: str, brief: str | None, products: list[str], sizes: list[str], top_k: int | None) -> Json:
    """The POST /v1/campaigns body; what is not given is left to the gateway's defaults (no brief: inferred
    from the products)."""
    body: Json = {"brand_id": _uuid(brand_id, "--brand-id")} | ({"brief": brief} if brief else {})
    if products:
        body["product_asset_ids"] = [_uuid(p, "--product") for p in products]
    if sizes:
        body["sizes"] = [parse_size(s) for s in sizes]
    if top_k is not None:
        body["top_k"] = top_k
    return body


@campaigns_app.command("create")
def create(
    brand_id: Annotated[str, typer.Option("--brand-id", help="The brand the campaign is for.")],
    brief: Annotated[
        str | None, typer.Option(help="What the images should show (left out: inferred from the --product assets).")
    ] = None,
    product: Annotated[list[str] | None, typer.Option("--product", help="A product asset id (repeat).")] = None,
    size: Annotated[
        list[str] | None, typer.Option("--size", help="WIDTHxHEIGHT, an aspect or a preset (repeat).")
    ] = None,
    top_k: Annotated[int | None, typer.Option(min=1, max=10, help="Results per product and size.")] = None,
    idempotency_key: Annotated[
        str, typer.Option(help="Reuse a key to retry without a second campaign (default: a fresh UUID).")
    ] = "",
    watch: Annotated[bool, typer.Option("--watch", help="Then watch it to the end (as `watch`).")] = False,
    interval: Interval = 1.0,
    timeout: Timeout = 3600.0,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = "",
) -> None:
    """POST /v1/campaigns; prints the campaign id (stdout), with --watch then its progress and results."""
    body = campaign_body(brand_id, brief, product or [], size or [], top_k)
    key = idempotency_key or str(uuid.uuid4())
    with gateway(api_url, api_key) as client:
        created = api(client, "POST", "/v1/campaigns", json=body, headers={"Idempotency-Key": key})
        typer.echo(created["id"])
        if not idempotency_key:
            typer.echo(f"idempotency key {key} (pass --idempotency-key {key} to retry safely)", err=True)
        if watch:
            _watch(client, str(created["id"]), interval, timeout)


# --------------------------------------------------------------------------- watch


def _checked(result: Json) -> str:
    """Fully checked, or needs review and why (unchecked is never shown as passed)."""
    if result.get("fully_checked"):
        return "fully checked"
    reasons = [f"{r.get('kind')} {r.get('check')}" for r in (result.get("review") or {}).get("reasons") or []]
    return "needs review" + (f": {', '.join(reasons)}" if reasons else "")


def _aesthetic(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "—"


def results_table(campaign: Json) -> Table:
    """rank, aesthetic, checked, decision and the result id of the current review round's results."""
    table = Table(title=f"results · review round {campaign.get('review_round', 0)}", show_edge=False)
    for column in ("rank", "aesthetic", "checked", "decision", "result"):
        table.add_column(column, overflow="fold")
    for result in campaign.get("results") or []:
        table.add_row(
            str(result.get("rank")),
            _aesthetic(result.get("aesthetic")),
            _checked(result),
            str(result.get("decision") or "undecided"),
            str(result.get("id") or result.get("candidate_id")),
        )
    return table


def print_outcome(console: Console, campaign: Json) -> None:
    """The final status, the results table and the review state."""
    console.print(f"campaign {campaign.get('id')}: [bold]{campaign.get('status')}[/]")
    if campaign.get("error"):
        console.print(f"[red]error:[/] {json.dumps(campaign['error'])}", markup=True, highlight=False)
    if (campaign.get("checked") or {}).get("message"):
        console.print(campaign["checked"]["message"], markup=False, highlight=False)
    if campaign.get("results"):
        console.print(results_table(campaign))
    else:
        console.print("no results")
    state = campaign.get("review_state") or "none (no results delivered)"
    console.print(f"review state: {state} · review round {campaign.get('review_round', 0)}", highlight=False)


def cost_line(report: Json) -> str | None:
    """The campaign report's GPU cost (shared.costs): GPU-seconds and dollars per delivered image; None when the
    report has none (nothing delivered, or a gateway that does not report it)."""
    cost = report.get("cost")
    if not isinstance(cost, dict) or cost.get("gpu_seconds_per_image") is None:
        return None
    return (
        f"GPU time: {cost['gpu_seconds_per_image']:.2f} s per delivered image ({cost['gpu_seconds']:.1f} s over "
        f"{cost['delivered']}) · ${cost['usd_per_image']:.4f} per image at ${cost['gpu_price_usd_per_hour']:g} "
        "per GPU-hour"
    )


def _report_cost(client: httpx.Client, campaign_id: str) -> str | None:
    # Best effort: the outcome is already printed, a report that cannot be read changes nothing about it.
    with contextlib.suppress(ApiError, httpx.HTTPError):
        return cost_line(api(client, "GET", f"/v1/campaigns/{campaign_id}/report"))
    return None


def _watch(client: httpx.Client, campaign_id: str, interval: float, timeout: float) -> NoReturn:
    get_campaign(client, campaign_id)  # a bad key or an unknown id fails here, not after the timeout
    campaign = wait_for_campaign(client, campaign_id, timeout, interval, console=Console(stderr=True))
    console = Console(width=max(Console().width, 120))
    print_outcome(console, campaign)
    if campaign.get("results") and (line := _report_cost(client, campaign_id)):
        console.print(line, markup=False, highlight=False)
    status = str(campaign.get("status"))
    if status not in TERMINAL:
        _fail(f"campaign {campaign_id} still {status} after {timeout:.0f} s", STILL_RUNNING)
    raise typer.Exit(EXIT_CODES[status])


@campaigns_app.command("watch")
def watch(
    campaign_id: Annotated[str, typer.Argument(help="The campaign to watch.")],
    interval: Interval = 1.0,
    timeout: Timeout = 3600.0,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = "",
) -> None:
    """A progress bar (stderr) until the campaign ends, then its results and review state (stdout).

    Exit code: 0 completed, 2 partial, 1 failed or cancelled (or the call was refused), 3 still running
    after --timeout."""
    ident = _uuid(campaign_id, "CAMPAIGN_ID")
    with gateway(api_url, api_key) as client:
        _watch(client, ident, interval, timeout)


# --------------------------------------------------------------------------- review-link


@campaigns_app.command("review-link")
def review_link(
    campaign_id: Annotated[str, typer.Argument(help="The campaign to review.")],
    reviewer: Annotated[str, typer.Option(help="Who reviews (shown with each decision).")],
    hours: Annotated[int, typer.Option(min=1, max=720, help="The link expires after this many hours.")] = 72,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = "",
) -> None:
    """Create a review link (POST /v1/campaigns/{id}/review-links) and print its URL: the only output on
    stdout, so it can be piped; the link's id and expiry go to stderr."""
    ident = _uuid(campaign_id, "CAMPAIGN_ID")
    with gateway(api_url, api_key) as client:
        body = {"reviewer": reviewer, "expires_in_hours": hours}
        link = api(client, "POST", f"/v1/campaigns/{ident}/review-links", expect=(200, 201), json=body)
    typer.echo(link["url"])
    typer.echo(f"review link {link.get('id')} for {link.get('reviewer')}, expires {link.get('expires_at')}", err=True)


# --------------------------------------------------------------------------- download


@dataclass(frozen=True)
class Planned:
    """One file `download` writes: where, and its bytes."""

    path: Path
    data: bytes


def fetch_image(client: httpx.Client, url: str) -> bytes:
    """The image's bytes; an error names the status and the path, never the signed query string."""
    response = client.get(url)
    if response.status_code != 200:
        _fail(f"image {httpx.URL(url).path} -> HTTP {response.status_code}")
    return response.content


def check_size(data: bytes, result: Json, sizes: list[tuple[int, int]]) -> tuple[int, int]:
    """(width, height) after decoding the whole image; it must be the result's canvas and a requested size."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes every row: a truncated download fails here
            width, height = image.size
    except (UnidentifiedImageError, OSError) as exc:
        _fail(f"rank {result.get('rank')}: not a readable image ({exc})")
    canvas = (result.get("placement") or {}).get("canvas") or {}
    if (width, height) != (canvas.get("width"), canvas.get("height")):
        _fail(f"rank {result.get('rank')}: image is {width}x{height}, its placement canvas {canvas}")
    if sizes and (width, height) not in sizes:
        _fail(f"rank {result.get('rank')}: image is {width}x{height}, not a requested size {sizes}")
    return width, height


SIDECAR_FIELDS = (
    "id",
    "rank",
    "review_round",
    "candidate_id",
    "product_asset_id",
    "aesthetic",
    "fully_checked",
    "needs_review",
    "review",
    "decision",
    "decided_by",
    "decided_at",
    "placement",
    "qc",
)


def result_files(client: httpx.Client, campaign: Json, result: Json, folder: Path) -> list[Planned]:
    """rank-N.png and its rank-N.json sidecar (rank, qc, decision, ... and the image's size and sha256)."""
    import hashlib

    if not result.get("image_url"):
        _fail(f"rank {result.get('rank')} has no image")
    data = fetch_image(client, str(result["image_url"]))
    sizes = [(s["width"], s["height"]) for s in (campaign.get("request") or {}).get("sizes") or [] if "width" in s]
    width, height = check_size(data, result, sizes)
    stem = f"rank-{result['rank']}"
    sidecar = {
        "campaign_id": campaign.get("id"),
        "brief": campaign.get("brief"),
        **{k: result.get(k) for k in SIDECAR_FIELDS if k in result},
        "image": {
            "file": f"{stem}.png",
            "width": width,
            "height": height,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        },
    }
    text = json.dumps(sidecar, indent=2, sort_keys=True, default=str) + "\n"
    return [Planned(folder / f"{stem}.png", data), Planned(folder / f"{stem}.json", text.encode())]


def round_results(client: httpx.Client, campaign: Json, review_round: int) -> list[Json]:
    """The results of one review round: the campaign's own for the current one, else the results listing."""
    if review_round == campaign.get("review_round", 0):
        return list(campaign.get("results") or [])
    page = api(client, "GET", f"/v1/campaigns/{campaign['id']}/results", params={"review_round": review_round})
    return list(page.get("items") or [])


def planned_files(client: httpx.Client, campaign: Json, out: Path, all_rounds: bool) -> list[Planned]:
    """Every file to write: the current round's into OUT, or each review round's into OUT/review-round-N."""
    current = int(campaign.get("review_round") or 0)
    rounds = range(current + 1) if all_rounds else [current]
    planned: list[Planned] = []
    for n in rounds:
        folder = out / f"review-round-{n}" if all_rounds else out
        results = round_results(client, campaign, n)
        if not results and n == current:
            _fail(f"campaign {campaign.get('id')} is {campaign.get('status')} with no results to download")
        for result in sorted(results, key=lambda r: int(r.get("rank") or 0)):
            planned += result_files(client, campaign, result, folder)
    return planned


def file_state(item: Planned) -> str:
    """new, unchanged (same bytes already there) or conflict (different bytes there)."""
    if not item.path.exists():
        return "new"
    return "unchanged" if item.path.read_bytes() == item.data else "conflict"


def write_atomically(item: Planned) -> None:
    """Write beside the target, then rename: an interrupted download never leaves half a file."""
    item.path.parent.mkdir(parents=True, exist_ok=True)
    partial = item.path.with_name(f".{item.path.name}.partial")
    partial.write_bytes(item.data)
    os.replace(partial, item.path)


def save(planned: list[Planned], force: bool) -> list[tuple[str, Planned]]:
    """Check every file first (nothing is written when one would overwrite other content without --force)."""
    states = [(file_state(item), item) for item in planned]
    conflicts = [str(item.path) for state, item in states if state == "conflict"]
    if conflicts and not force:
        _fail(f"exists with different content (pass --force to replace): {', '.join(conflicts)}")
    for state, item in states:
        if state != "unchanged":
            write_atomically(item)
    return [("replaced" if state == "conflict" else state, item) for state, item in states]


@campaigns_app.command("download")
def download(
    campaign_id: Annotated[str, typer.Argument(help="The campaign whose results to download.")],
    out: Annotated[Path, typer.Option("--out", file_okay=False, help="Folder to write into (created).")],
    all_rounds: Annotated[
        bool, typer.Option("--all-rounds", help="Every review round, each into OUT/review-round-N.")
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace files that differ.")] = False,
    api_url: ApiUrl = DEFAULT_URL,
    api_key: ApiKey = "",
) -> None:
    """The current review round's results: rank-N.png and a rank-N.json sidecar (rank, qc, decision, the
    image's size and sha256). Each image is decoded and must have its requested size. Files already there
    with the same bytes are left alone; with other bytes nothing is written unless --force."""
    ident = _uuid(campaign_id, "CAMPAIGN_ID")
    with gateway(api_url, api_key) as client:
        campaign = get_campaign(client, ident)
        planned = planned_files(client, campaign, out, all_rounds)
    for state, item in save(planned, force):
        typer.echo(f"{state:<9} {item.path}  {len(item.data)} bytes")
