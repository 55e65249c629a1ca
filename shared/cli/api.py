"""The gateway over HTTP, as a client sees it: what `onbrand demo` and `onbrand campaigns` share.

Calls that fail raise ApiError carrying the problem+json body (RFC 9457: title, detail, code),
so a command can print what the gateway said instead of a raw response.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskProgressColumn, TextColumn, TimeElapsedColumn

TERMINAL = {"completed", "partial", "failed", "cancelled"}
Json = dict[str, Any]


class ApiError(RuntimeError):
    """A gateway call answered with an unexpected status; `problem` is its problem+json body (or {})."""

    def __init__(self, method: str, path: str, status: int, problem: Json, text: str) -> None:
        self.method, self.path, self.status, self.problem = method, path, status, problem
        self.code = str(problem.get("code") or "")
        super().__init__(_describe(method, path, status, problem, text))


def _describe(method: str, path: str, status: int, problem: Json, text: str) -> str:
    """One readable line: the problem's title and detail (and field errors), else the raw body."""
    if not problem.get("title"):
        return f"{method} {path} -> {status}: {text[:800]}"
    line = f"{problem['title']} (HTTP {status}{', ' + str(problem['code']) if problem.get('code') else ''})"
    if problem.get("detail"):
        line += f": {problem['detail']}"
    fields = [f"{'.'.join(map(str, e.get('loc') or []))}: {e.get('msg')}" for e in problem.get("errors") or []]
    return line + (f" [{'; '.join(fields)}]" if fields else "")


def _problem(response: httpx.Response) -> Json:
    with contextlib.suppress(ValueError):
        body = response.json()
        if isinstance(body, dict):
            return body
    return {}


def api(client: httpx.Client, method: str, path: str, expect: Iterable[int] = (200, 201, 202), **kwargs: Any) -> Json:
    response = client.request(method, path, **kwargs)
    if response.status_code not in set(expect):
        raise ApiError(method, path, response.status_code, _problem(response), response.text)
    return response.json() if response.content else {}


def get_campaign(client: httpx.Client, campaign_id: str) -> Json:
    return api(client, "GET", f"/v1/campaigns/{campaign_id}")


def download(client: httpx.Client, url: str) -> bytes:
    response = client.get(url)
    response.raise_for_status()
    return response.content


# --------------------------------------------------------------------------- progress


def stage_line(campaign: Json) -> str:
    """One line of stage states for the progress bar: ✓ done, ▸ running (with done/total)."""
    parts = []
    for st in campaign.get("stages") or []:
        done, total, status = st.get("done") or 0, st.get("total") or 0, str(st.get("status", ""))
        if status in ("succeeded", "completed", "done") or (total and done >= total):
            parts.append(f"[green]✓ {st['stage']}[/]")
        elif status == "skipped":
            parts.append(f"[dim]– {st['stage']}[/]")
        elif status == "failed":
            parts.append(f"[red]✗ {st['stage']}[/]")
        elif status == "running" or done:
            parts.append(f"[yellow]▸ {st['stage']} {done}/{total}[/]" if total > 1 else f"[yellow]▸ {st['stage']}[/]")
        else:
            parts.append(f"[dim]{st['stage']}[/]")
    return "  ".join(parts)


def wait_for_campaign(
    client: httpx.Client,
    campaign_id: str,
    timeout: float = 600.0,
    interval: float = 0.5,
    console: Console | None = None,
) -> Json:
    """Poll until the campaign is terminal (or `timeout`), drawing a progress bar; the last body.
    A refused call (ApiError: bad key, unknown campaign) ends the wait; a slow or lost poll does not."""
    columns = (
        SpinnerColumn(),
        TextColumn("[bold]{task.description:<22}"),
        BarColumn(bar_width=32),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[stages]}"),
    )
    deadline, body = time.monotonic() + timeout, {}
    with Progress(*columns, console=console or Console(), transient=False) as progress:
        task = progress.add_task("queued", total=1.0, stages="")
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):  # a slow poll is no reason to give up
                body = get_campaign(client, campaign_id)
            label = f"{body.get('status', '?')} · {body.get('current_stage') or '-'}"
            progress.update(
                task, completed=float(body.get("progress") or 0), description=label, stages=stage_line(body)
            )
            if body.get("status") in TERMINAL:
                break
            time.sleep(interval)
    return body
