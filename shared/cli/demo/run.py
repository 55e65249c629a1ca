"""`onbrand demo`: one real campaign end to end on the embedded defaults.

Starts the embedded Postgres+Redis, migrates, creates a tenant, runs the gateway and a cpu
and a gpu worker as separate OS processes, and then behaves exactly like an ad-tech client:
registers a webhook endpoint (served by a tiny local receiver), creates a brand, uploads
the painted demo library (shared/cli/demo/library.py) and runs the campaign
"the running shoe on an urban street at sunset" over HTTP. Everything it learns lands in
the output dir: the final campaign JSON, the ranked images, thumbnails of every candidate,
a contact sheet to look at, and every webhook request as it arrived.

The pieces (WebhookReceiver, upload_library, fetch_candidates, write_contact_sheet, ...; the HTTP helpers
api, wait_for_campaign, download live in shared/cli/api.py, shared with `onbrand campaigns`) are public so
tests and benchmarks drive the system the same way.
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import re
import subprocess
import threading
import time
import traceback
import uuid
from collections.abc import Iterable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from PIL import Image
from rich.console import Console
from rich.table import Table
from standardwebhooks import Webhook

from shared.cli import stack
from shared.cli.api import Json, api, download, wait_for_campaign
from shared.cli.demo.library import build_library
from shared.cli.procs import Processes, base_env, free_port, onbrand_cmd, run_cli
from shared.config import Settings

BRIEF = "the running shoe on an urban street at sunset"
COPY = {"headline": "Own the city after sunset", "cta": "Shop now"}  # every result gets a creative version too
BRAND: dict[str, Any] = {
    "name": "Stride",
    "palette": ["#E4572E", "#17BEBB", "#FFC914"],
    "guidelines": [
        {"text": "product fully visible", "flexible": False, "weight": 1},
        {"text": "product pixels are never altered", "flexible": False, "weight": 1},
        {"text": "warm, energetic scenes in the brand palette", "flexible": True, "weight": 0.5},
        {"text": "leave clear space around the product", "flexible": True, "weight": 0.5},
    ],
}
TERMINAL_EVENTS = {"campaign.completed", "campaign.partial", "campaign.failed", "campaign.cancelled"}
THUMB_SIZE = 256


# --------------------------------------------------------------------------- webhook receiver


class WebhookReceiver:
    """A loopback HTTP server that appends every request it gets to a JSON-lines file
    (method, path, headers, body, received_at) and answers 204, like a well-behaved client."""

    def __init__(self, log: Path, host: str = "127.0.0.1", path: str = "/hooks/onbrand") -> None:
        self.log, self.host, self.path = Path(log), host, path
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.log.write_text("")  # one run, one log: stale events would satisfy wait_for
        self._lock = threading.Lock()
        self._records: list[Json] = []
        self._server = ThreadingHTTPServer((host, 0), self._handler())  # port 0: the OS picks, no race
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self._server.server_port}{self.path}"

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
                receiver.record(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                        "received_at": time.time(),
                    }
                )
                self.send_response(204)
                self.end_headers()

            do_POST = do_PUT = do_PATCH = do_GET = do_DELETE = _record

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
                pass  # the demo's console shows a progress bar, not an access log

        return Handler

    def record(self, entry: Json) -> None:
        with self._lock:
            self._records.append(entry)
            with self.log.open("a") as fh:
                fh.write(json.dumps(entry) + "\n")

    def records(self) -> list[Json]:
        with self._lock:
            return list(self._records)

    def events(self) -> list[Json]:
        """The JSON bodies received, in arrival order (non-JSON requests skipped)."""
        out = []
        for entry in self.records():
            with contextlib.suppress(ValueError):
                out.append(json.loads(entry["body"]))
        return out

    def wait_for(self, types: Iterable[str], timeout: float) -> Json | None:
        """The first event whose `type` is one of `types`, waiting up to `timeout` seconds."""
        wanted, deadline = set(types), time.monotonic() + timeout
        while True:
            found = next((e for e in self.events() if isinstance(e, dict) and e.get("type") in wanted), None)
            if found is not None or time.monotonic() >= deadline:
                return found
            time.sleep(0.1)

    def start(self) -> WebhookReceiver:
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
            self._thread = None
        self._server.server_close()

    def __enter__(self) -> WebhookReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def verify_webhooks(secret: str, records: list[Json]) -> tuple[int, int]:
    """(verified, total) Standard Webhooks signatures among the recorded requests."""
    hook, ok = Webhook(secret), 0
    for entry in records:
        with contextlib.suppress(Exception):
            hook.verify(entry["body"], entry["headers"])
            ok += 1
    return ok, len(records)


# --------------------------------------------------------------------------- API calls


def register_webhook(client: httpx.Client, url: str) -> Json:
    """Subscribe `url` to every campaign event; the response carries the signing secret."""
    return api(client, "POST", "/v1/webhook-endpoints", json={"url": url, "event_types": ["campaign.*"]})


def create_brand(client: httpx.Client, brand: Json | None = None) -> str:
    return str(api(client, "POST", "/v1/brands", json=brand or BRAND)["id"])


def add_logo(client: httpx.Client, brand_id: str) -> Json:
    """The brand kit's logo (POST /v1/brands/{id}/kit/logos): a badge in the brand's first colour with a white
    stride mark, drawn here so that the demo needs no file; every creative carries it."""
    from PIL import ImageDraw

    logo = Image.new("RGBA", (240, 96), (0, 0, 0, 0))
    draw = ImageDraw.Draw(logo)
    draw.rounded_rectangle((0, 0, 239, 95), radius=30, fill=BRAND["palette"][0])
    draw.line([(40, 70), (110, 26), (200, 26)], fill=(255, 255, 255, 255), width=14, joint="curve")
    buffer = io.BytesIO()
    logo.save(buffer, "PNG")
    files = {"file": ("stride-logo.png", buffer.getvalue(), "image/png")}
    return api(client, "POST", f"/v1/brands/{brand_id}/kit/logos", files=files, data={"name": "Stride"})


def upload_library(client: httpx.Client, brand_id: str | None, items: list[Json]) -> list[Json]:
    """POST every library item to /v1/assets (multipart: the PNG + its metadata as JSON)."""
    uploaded = []
    for item in items:
        path = Path(item["path"])
        metadata = {**item["metadata"], **({"brand_id": brand_id} if brand_id else {})}
        files = {"file": (path.name, path.read_bytes(), "image/png")}
        uploaded.append(api(client, "POST", "/v1/assets", files=files, data={"metadata": json.dumps(metadata)}))
    return uploaded


def start_campaign(
    client: httpx.Client,
    brand_id: str,
    brief: str = BRIEF,
    top_k: int = 3,
    sizes: list[Json] | None = None,
    idempotency_key: str | None = None,
    copy: Json | None = None,
) -> Json:
    body = {"brand_id": brand_id, "brief": brief, "sizes": sizes or [{"width": 1024, "height": 1024}], "top_k": top_k}
    if copy:
        body["copy"] = copy
    headers = {"Idempotency-Key": idempotency_key or f"demo-{uuid.uuid4()}"}
    return api(client, "POST", "/v1/campaigns", expect=(202,), json=body, headers=headers)


def fetch_candidates(client: httpx.Client, campaign_id: str, limit: int = 100) -> list[Json]:
    """Every candidate of the campaign, following next_cursor until it runs out."""
    items: list[Json] = []
    params: dict[str, Any] = {"limit": limit}
    while True:
        page = api(client, "GET", f"/v1/campaigns/{campaign_id}/candidates", params=params)
        items += list(page.get("items") or page.get("data") or [])
        if not page.get("next_cursor"):
            return items
        params["cursor"] = page["next_cursor"]


# --------------------------------------------------------------------------- files


def thumb_name(candidate: Json) -> str:
    """File stem of a candidate's thumbnail: its layout key (plus the round after a retry)."""
    stem = str(candidate.get("layout_key") or candidate.get("id"))
    if candidate.get("round"):
        stem += f"-round{candidate['round']}"
    return re.sub(r"[^A-Za-z0-9._-]", "_", stem)


def save_results(client: httpx.Client, out: Path, campaign: Json) -> list[Path]:
    """rank-1.png ... rank-N.png, full size, from the campaign's results (and rank-N.creative.png, the creative
    version with the brand kit's overlay, for a campaign with copy)."""
    paths = []
    for result in sorted(campaign.get("results") or [], key=lambda r: r.get("rank") or 0):
        path = out / f"rank-{result['rank']}.png"
        path.write_bytes(download(client, result["image_url"]))
        paths.append(path)
        if result.get("creative_url"):
            path = out / f"rank-{result['rank']}.creative.png"
            path.write_bytes(download(client, result["creative_url"]))
            paths.append(path)
    return paths


def save_thumbnails(client: httpx.Client, out: Path, candidates: list[Json], size: int = THUMB_SIZE) -> list[Path]:
    """candidates/<layout_key>.png at ~`size` px: what the contact sheet shows."""
    folder = out / "candidates"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for cand in candidates:
        if not cand.get("image_url"):
            continue
        image = Image.open(io.BytesIO(download(client, cand["image_url"]))).convert("RGB")
        image.thumbnail((size, size), Image.Resampling.LANCZOS)
        path = folder / f"{thumb_name(cand)}.png"
        image.save(path, optimize=True)
        paths.append(path)
    return paths


# --------------------------------------------------------------------------- timings


def _when(value: Any) -> datetime | None:
    if not value:
        return None
    with contextlib.suppress(ValueError, TypeError):
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return None


def stage_timings(campaign: Json) -> list[Json]:
    """[{stage, start, seconds}] with start relative to the earliest stage start (Gantt input)."""
    spans = [
        (st.get("stage", "?"), _when(st.get("started_at")), _when(st.get("finished_at")))
        for st in campaign.get("stages") or []
    ]
    starts = [s for _, s, _ in spans if s]
    t0 = min(starts) if starts else None
    return [
        {
            "stage": name,
            "start": (s - t0).total_seconds() if s and t0 else None,
            "seconds": (f - s).total_seconds() if s and f else None,
        }
        for name, s, f in spans
    ]


# --------------------------------------------------------------------------- contact sheet

CSS = """
:root{--bg:#f4f3f0;--card:#fff;--ink:#1d1d22;--mute:#6b6b76;--line:#e6e4df;--ok:#1f9d6b;--bad:#d64545;
--accent:#E4572E;--teal:#17BEBB;--gold:#FFC914}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
background:var(--bg);color:var(--ink)}
header{background:linear-gradient(120deg,#241F52,#8c3b73 55%,#E4572E);color:#fff;padding:32px 40px 28px}
header h1{margin:0 0 4px;font-size:26px;letter-spacing:.2px}header .id{opacity:.7;font-size:12px}
.brief{font-size:22px;font-weight:600;margin:14px 0 6px}.brief:before{content:"“"}.brief:after{content:"”"}
.caption{font-size:16px;opacity:.92;font-style:italic}
.pill{display:inline-block;padding:2px 10px;border-radius:999px;font-size:12px;font-weight:700;
vertical-align:middle;margin-left:8px;background:#fff;color:var(--ink)}
.pill.completed{background:#c9f2df;color:#0d6b45}.pill.partial{background:#ffe9a8;color:#7a5a00}
.pill.failed,.pill.cancelled{background:#ffd1d1;color:#8a1f1f}
.swatches{margin-top:12px}.swatches span{display:inline-block;width:22px;height:22px;border-radius:6px;
margin-right:6px;border:2px solid rgba(255,255,255,.6)}
main{padding:24px 40px 48px;max-width:1500px;margin:auto}
.panels{display:grid;grid-template-columns:repeat(auto-fit,minmax(320px,1fr));gap:16px;margin-bottom:28px}
.panel{background:var(--card);border-radius:14px;padding:16px 18px;box-shadow:0 1px 3px rgba(0,0,0,.06)}
.panel h2{font-size:12px;text-transform:uppercase;letter-spacing:.08em;color:var(--mute);margin:0 0 10px}
.kv{display:grid;grid-template-columns:auto 1fr;gap:4px 12px}.kv b{font-weight:600;color:var(--mute)}
.tag{display:inline-block;background:#f0eeea;border-radius:6px;padding:1px 8px;margin:2px 4px 2px 0;font-size:12px}
.gantt .row{display:grid;grid-template-columns:90px 1fr 56px;align-items:center;gap:8px;margin:3px 0;font-size:12px}
.gantt .track{position:relative;height:10px;background:#f0eeea;border-radius:5px}
.gantt .bar{position:absolute;top:0;height:10px;border-radius:5px;background:linear-gradient(90deg,var(--teal),#0e8e8c)}
.gantt .t{text-align:right;color:var(--mute);font-variant-numeric:tabular-nums}
.stats{display:flex;gap:22px;margin-top:16px}.stats div{font-size:12px;opacity:.85}
.stats b{display:block;font-size:22px;opacity:1}
h3.section{font-size:13px;text-transform:uppercase;letter-spacing:.08em;color:var(--mute);margin:8px 0 12px}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:16px}
.card{background:var(--card);border-radius:14px;overflow:hidden;box-shadow:0 1px 3px rgba(0,0,0,.07);
position:relative;display:flex;flex-direction:column}
.card.ranked{box-shadow:0 0 0 3px var(--gold),0 6px 18px rgba(0,0,0,.12)}
.card.failed .thumb img{opacity:.5;filter:grayscale(.6)}
.thumb{display:block;background:#ddd;aspect-ratio:1/1;overflow:hidden}
.thumb img{width:100%;height:100%;object-fit:cover;display:block}
.badge{position:absolute;top:10px;left:10px;width:38px;height:38px;border-radius:50%;display:grid;
place-items:center;font-weight:800;font-size:17px;color:#1d1d22;background:var(--gold);
box-shadow:0 2px 6px rgba(0,0,0,.3)}.badge.r2{background:#dfe3e8}.badge.r3{background:#e8b58a}
.body{padding:10px 12px 12px;display:flex;flex-direction:column;gap:7px}
.key{font-weight:700;font-size:13px;font-family:ui-monospace,Menlo,monospace}
.layout{color:var(--mute);font-size:12px}
.chips{display:flex;flex-wrap:wrap;gap:4px}
.chip{font-size:11px;border-radius:999px;padding:1px 8px;cursor:help;white-space:nowrap}
.chip.pass{background:#ddf5ea;color:#0d6b45}.chip.fail{background:#ffe0e0;color:#9b1c1c}
.chip.unchecked{background:#eeeeee;color:#555}
.score{display:flex;align-items:baseline;gap:6px}.score b{font-size:20px}.score span{color:var(--mute);font-size:12px}
.parts{display:grid;grid-template-columns:88px 1fr 34px;gap:2px 6px;font-size:11px;align-items:center;color:var(--mute)}
.parts .track{height:6px;background:#f0eeea;border-radius:3px;overflow:hidden}
.parts .fill{height:6px;background:linear-gradient(90deg,var(--accent),var(--gold));border-radius:3px}
.excluded{font-size:12px;color:var(--bad);font-style:italic}
.review{font-size:12px;border-radius:8px;padding:3px 8px;background:#fff4d6;color:#7a5a00}
.review.full{background:#ddf5ea;color:#0d6b45}
footer{color:var(--mute);font-size:12px;text-align:center;padding:20px}
.problem{margin-top:10px;background:rgba(0,0,0,.25);border-radius:8px;padding:6px 10px;font-size:13px;
display:inline-block}.empty{color:var(--mute);font-style:italic}
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: Any, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and not isinstance(value, bool) else esc(value)


def order_candidates(candidates: list[Json]) -> list[Json]:
    """Ranked first (by rank), then passed by aesthetic score, then the rest by layout key."""

    def key(c: Json) -> tuple[int, float, str]:
        group = 0 if c.get("rank") else (1 if c.get("passed") else 2)
        return (group, c.get("rank") or -(c.get("aesthetic") or 0.0), str(c.get("layout_key")))

    return sorted(candidates, key=key)


MARKS = {"pass": "✓", "fail": "✗", "unchecked": "?"}


def _status(v: Json) -> str:
    return str(v.get("status") or ("pass" if v.get("passed") else "fail"))


def _chips(verdicts: list[Json]) -> str:
    """One chip per check (product, brand and guideline verdicts); the tooltip has value, limit and reason."""
    chips = []
    for v in verdicts:
        name, status = v.get("check") or v.get("guideline"), _status(v)
        limit = f" (threshold {v.get('threshold')})" if v.get("threshold") is not None else ""
        tip = f"{name}: {_num(v.get('value'), 4)}{limit} — {v.get('reason', '')}"
        value = f" {_num(v.get('value'), 3)}" if isinstance(v.get("value"), int | float) else ""
        chips.append(
            f'<span class="chip {esc(status)}" title="{esc(tip)}">{MARKS.get(status, "?")} {esc(name)}{value}</span>'
        )
    return f'<div class="chips">{"".join(chips)}</div>'


def _qc_lines(cand: Json) -> str:
    """Policy verdict and near-duplicate cluster of one candidate, in words."""
    qc = cand.get("qc") or {}
    pol, found = qc.get("policy") or {}, qc.get("cluster") or {}
    bits = []
    if pol:
        relaxed = f", relaxed {', '.join(pol['relaxed'])}" if pol.get("relaxed") else ""
        bits.append(
            f"{pol.get('name')} policy: {'pass' if pol.get('passed') else 'fail'}"
            f" (weighted {_num(pol.get('weighted_share'), 2)}){relaxed}"
        )
    if found.get("size", 1) > 1:
        bits.append(f"cluster {found.get('id')} of {found.get('size')}, best {found.get('best')}")
    return "".join(f'<div class="layout">{esc(b)}</div>' for b in bits)


def _aesthetic(cand: Json) -> str:
    block = (cand.get("qc") or {}).get("aesthetic") or {}
    score = block.get("score", cand.get("aesthetic"))
    if score is None:
        return ""
    rows = "".join(
        f'<span>{esc(name)}</span><div class="track"><div class="fill" style="width:{max(0, min(1, v)) * 100:.0f}%">'
        f"</div></div><span>{_num(v, 2)}</span>"
        for name, v in (block.get("parts") or {}).items()
        if isinstance(v, int | float)
    )
    return f'<div class="score"><b>{_num(score, 2)}</b><span>/ 10 aesthetic</span></div>' + (
        f'<div class="parts">{rows}</div>' if rows else ""
    )


def _layout(cand: Json) -> str:
    p = cand.get("placement") or {}
    canvas = p.get("canvas") or {}
    bits = [
        f"{canvas.get('width', '?')}×{canvas.get('height', '?')}",
        f"row {p.get('row', '?')} · col {p.get('col', '?')}",
        f"{_num(p.get('rotation'), 0)}°",
        f"scale {_num(p.get('scale'), 2)}",
    ]
    if cand.get("round"):
        bits.append(f"round {cand['round']}")
    return f'<div class="layout">{" · ".join(esc(b) for b in bits)}</div>'


def _review(cand: Json) -> str:
    """Was this candidate fully checked (every rule checked and passed) or does it need review, and why."""
    pol = (cand.get("qc") or {}).get("policy") or {}
    if pol.get("fully_checked"):
        return '<div class="review full">fully checked</div>'
    if not pol.get("needs_review"):
        return ""
    why = "; ".join(f"{r.get('kind')} {r.get('check')}: {r.get('reason')}" for r in pol.get("review") or [])
    label = "fallback, needs review" if pol.get("fallback") else "needs review"
    return f'<div class="review" title="{esc(why)}">{label}: {esc(why)}</div>'


def _card(cand: Json) -> str:
    rank, src = cand.get("rank"), f"candidates/{thumb_name(cand)}.png"
    cls = "ranked" if rank else ("passed" if cand.get("passed") else "failed")
    img = f'<img src="{esc(src)}" alt="{esc(cand.get("layout_key"))}" loading="lazy">'
    href = f"rank-{rank}.png" if rank else src  # ranked cards open the full-size result
    thumb = f'<a class="thumb" href="{esc(href)}">{img}</a>' + _creative(cand)
    badge = f'<div class="badge r{rank}">{rank}</div>' if rank else ""
    excluded = f'<div class="excluded">{esc(cand["excluded_reason"])}</div>' if cand.get("excluded_reason") else ""
    qc = cand.get("qc") or {}
    verdicts = [*(qc.get("verdicts") or []), *((qc.get("guidelines") or {}).get("verdicts") or [])]
    return (
        f'<article class="card {cls}">{badge}{thumb}<div class="body">'
        f'<div class="key">{esc(cand.get("layout_key"))}</div>{_layout(cand)}{_chips(verdicts)}'
        f"{_qc_lines(cand)}{_review(cand)}{_aesthetic(cand)}{excluded}</div></article>"
    )


def _creative(cand: Json) -> str:
    """A ranked result's creative version (saved as rank-N.creative.png) with its OCR verdict and contrast."""
    found = (cand.get("qc") or {}).get("creative") or {}
    texts = (found.get("layout") or {}).get("texts") or []
    if not cand.get("rank") or not found.get("key") or not texts:
        return ""
    src = f"rank-{cand['rank']}.creative.png"
    ocr = (found.get("ocr") or {}).get("status") or "not read"
    note = f"creative · OCR {ocr} · contrast ≥ {min(float(t['contrast']) for t in texts):.1f}"
    img = f'<img src="{esc(src)}" alt="{esc(note)}" loading="lazy">'
    return f'<a class="thumb creative" href="{esc(src)}">{img}</a><div class="key">{esc(note)}</div>'


def _tags(values: Any) -> str:
    items = values if isinstance(values, list) else [values]
    return "".join(f'<span class="tag">{esc(v)}</span>' for v in items if v not in (None, ""))


DECOMP_HIDDEN = {"brief", "calls", "prompt_version"}  # the brief is in the header; calls are LLM traces


def _scalars(value: Any) -> bool:
    items = value if isinstance(value, list) else [value]
    return bool(items) and all(isinstance(v, str | int | float) for v in items)


DECOMP_FIRST = ("products", "backgrounds", "themes", "mood", "style", "negatives")


def _decomposition(decomp: Json) -> str:
    keys = [k for k in DECOMP_FIRST if k in decomp] + [k for k in decomp if k not in DECOMP_FIRST]
    rows = [
        f"<b>{esc(k)}</b><div>{_tags(decomp[k])}</div>" for k in keys if k not in DECOMP_HIDDEN and _scalars(decomp[k])
    ]
    return f'<div class="panel"><h2>Decomposition</h2><div class="kv">{"".join(rows) or "<i>none</i>"}</div></div>'


def _pick(label: str, title: Any, score: Any, note: Any = None) -> str:
    score_txt = f" <span class='tag'>score {_num(score, 3)}</span>" if score is not None else ""
    note_txt = f"<br><i>{esc(note)}</i>" if note else ""
    return f"<b>{esc(label)}</b><div>{esc(title or '—')}{score_txt}{note_txt}</div>"


def _retrieval(ret: Json) -> str:
    rows = [
        _pick("product", ret.get("product_title"), ret.get("product_score"), ret.get("product_source")),
        _pick("background", ret.get("background_caption"), ret.get("background_score"), ret.get("background_reason")),
    ]
    for entity in ret.get("entities") or []:
        top = ", ".join(f"{m.get('title')} ({_num(m.get('score'), 2)})" for m in (entity.get("matches") or [])[:3])
        rows.append(
            f"<b>“{esc(entity.get('text'))}”</b><div class='layout'>{esc(entity.get('kind'))}: {esc(top)}</div>"
        )
    return f'<div class="panel"><h2>Retrieval picks</h2><div class="kv">{"".join(rows)}</div></div>'


def _timing(campaign: Json) -> str:
    spans = stage_timings(campaign)
    end = max([(s["start"] or 0) + (s["seconds"] or 0) for s in spans] or [0]) or 1.0
    rows = []
    for s in spans:
        left, width = (s["start"] or 0) / end * 100, (s["seconds"] or 0) / end * 100
        secs = f"{s['seconds']:.1f}s" if s["seconds"] is not None else "—"
        rows.append(
            f'<div class="row"><span>{esc(s["stage"])}</span><div class="track"><div class="bar" '
            f'style="left:{left:.1f}%;width:{max(width, 0.6) if s["seconds"] is not None else 0:.1f}%">'
            "</div></div>"
            f'<span class="t">{secs}</span></div>'
        )
    return f'<div class="panel gantt"><h2>Timing per stage</h2>{"".join(rows) or "<i>no stages</i>"}</div>'


def _header(campaign: Json, candidates: list[Json], palette: list[str]) -> str:
    state = campaign.get("state") or {}
    caption = (state.get("caption") or {}).get("caption", "")
    status = str(campaign.get("status", "?"))
    swatches = "".join(f'<span style="background:{esc(c)}" title="{esc(c)}"></span>' for c in palette)
    passed = sum(bool(c.get("passed")) for c in candidates)
    ranked = sum(bool(c.get("rank")) for c in candidates)
    wall = max([(s["start"] or 0) + (s["seconds"] or 0) for s in stage_timings(campaign)] or [0])
    checked = campaign.get("checked") or {}
    stats = "".join(
        f"<div><b>{v}</b>{esc(k)}</div>"
        for k, v in (
            ("candidates", len(candidates)),
            ("passed QC", passed),
            ("ranked", ranked),
            ("results fully checked", checked.get("fully_checked", 0)),
            ("results need review", checked.get("needs_review", 0)),
            ("seconds, all stages", f"{wall:.1f}"),
        )
    )
    error = campaign.get("error") or {}
    problem = f'<div class="problem">{esc(error.get("code"))}: {esc(error.get("message"))}</div>' if error else ""
    return (
        f'<header><h1>Onbrand contact sheet<span class="pill {esc(status)}">{esc(status)}</span></h1>'
        f'<div class="id">campaign {esc(campaign.get("id"))}</div>'
        f'<div class="brief">{esc(campaign.get("brief"))}</div>'
        f'<div class="caption">{esc(caption)}</div>{problem}<div class="swatches">{swatches}</div>'
        f'<div class="stats">{stats}</div>{_checked_line(checked)}</header>'
    )


def _checked_line(checked: Json) -> str:
    """The campaign's own sentence: how many results were fully checked, how many need review and why."""
    return f'<div class="problem">{esc(checked["message"])}</div>' if checked.get("message") else ""


def _report(report: Json | None) -> str:
    """The campaign QC report: pass rate per check, what was relaxed."""
    if not report:
        return ""
    rows = "".join(
        f"<b>{esc(name)}</b><span>{_num(r.get('pass_rate'), 2)} ({r.get('pass')} pass, {r.get('fail')} "
        f"fail, {r.get('unchecked')} unchecked)</span>"
        for name, r in (report.get("checks") or {}).items()
    )
    relaxed = ", ".join(f"{r.get('id')} (weight {r.get('weight')})" for r in report.get("relaxed") or []) or "nothing"
    outcomes = ", ".join(f"{k} {v}" for k, v in (report.get("outcomes") or {}).items())
    return (
        f'<section class="panel"><h2>QC report · {esc(report.get("policy"))} policy</h2><div class="kv">'
        f"<b>outcomes</b><span>{esc(outcomes)}</span><b>relaxed</b><span>{esc(relaxed)}</span>{rows}"
        f"</div></section>"
    )


def render_contact_sheet(
    campaign: Json, candidates: list[Json], palette: list[str] | None = None, report: Json | None = None
) -> str:
    """The whole page as one self-contained HTML string (inline CSS, relative image paths)."""
    state = campaign.get("state") or {}
    decomp = state.get("decompose") or state.get("decomposition") or {}
    retrieval = state.get("retrieve") or state.get("retrieval") or {}
    ordered = order_candidates(candidates)
    cards = "".join(_card(c) for c in ordered) or '<p class="empty">No candidates were generated.</p>'
    panels = _decomposition(decomp) + _retrieval(retrieval) + _timing(campaign) + _report(report)
    panels_after = _results_by_size(campaign, ordered)
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>Onbrand · {esc(campaign.get('brief'))}</title><style>{CSS}</style></head><body>"
        f'{_header(campaign, candidates, palette or BRAND["palette"])}<main><div class="panels">{panels}</div>'
        f"{panels_after}"
        f'<h3 class="section">Candidates · ranked first</h3><div class="grid">{cards}</div></main>'
        f"<footer>Every product pixel in these images is the uploaded product, composited, not generated."
        f"</footer></body></html>"
    )


def _results_by_size(campaign: Json, candidates: list[Json]) -> str:
    """With several sizes, each size's results on their own row (every size is its own top_k deliverable)."""
    groups = campaign.get("results_by_size") or []
    if len(groups) < 2:
        return ""  # one size: the ranked cards lead the candidate grid already
    by_id = {str(c.get("id")): c for c in candidates}
    shown = {str(r.get("id")): str(r.get("candidate_id")) for r in campaign.get("results") or []}
    rows = []
    for group in groups:
        size = group.get("size") or {}
        named = size.get("preset") or size.get("aspect")
        title = f"{size.get('width')}×{size.get('height')}" + (f" · {named}" if named else "")
        cards = "".join(_card(by_id[shown[r]]) for r in group.get("result_ids") or [] if shown.get(r) in by_id)
        cards = cards or '<p class="empty">No result in this size.</p>'
        rows.append(
            f'<h3 class="section size-group">{esc(title)} · {esc(group.get("delivered"))} of '
            f'{esc(group.get("top_k"))} results</h3><div class="grid">{cards}</div>'
        )
    return "".join(rows)


def write_contact_sheet(
    out: Path, campaign: Json, candidates: list[Json], palette: list[str] | None = None, report: Json | None = None
) -> Path:
    """out/contact-sheet.html; thumbnails are expected at out/candidates/<thumb_name>.png."""
    path = Path(out) / "contact-sheet.html"
    path.write_text(render_contact_sheet(campaign, candidates, palette, report), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- summary


def print_summary(console: Console, campaign: Json, out: Path, webhooks: tuple[int, int]) -> None:
    console.print(f"\n[bold]campaign[/] {campaign.get('id')}  status [bold]{campaign.get('status')}[/]")
    if campaign.get("error"):
        console.print(f"[red]error:[/] {campaign['error']}")
    if (campaign.get("checked") or {}).get("message"):
        console.print(f"checked: {campaign['checked']['message']}")
    top = Table(title="top results", show_edge=False)
    for col in ("rank", "candidate", "aesthetic"):
        top.add_column(col)
    for r in (campaign.get("results") or [])[:3]:
        top.add_row(str(r.get("rank")), str(r.get("candidate_id")), _num(r.get("aesthetic"), 2))
    console.print(top if top.row_count else "[yellow]no ranked results[/]")
    stages = Table(title="stage wall time", show_edge=False)
    stages.add_column("stage")
    stages.add_column("seconds", justify="right")
    for s in stage_timings(campaign):
        stages.add_row(s["stage"], f"{s['seconds']:.2f}" if s["seconds"] is not None else "—")
    console.print(stages)
    console.print(f"webhooks: {webhooks[1]} received, {webhooks[0]} with a valid signature")
    console.print(
        f"outputs in [bold]{out}[/]: campaign.json, report.json, rank-*.png, candidates/, "
        "contact-sheet.html, webhooks.jsonl, webhook-secret.txt, library/"
    )


def verify_results(env: dict[str, str], campaign_id: str, out: Path, console: Console) -> bool:
    """`onbrand verify`, as a user runs it: every result's product layer re-derived from the stored source
    photo and mask, checked bit for bit; its table goes to out/verify.txt, its count and failures here."""
    done = subprocess.run(onbrand_cmd("verify", campaign_id), env=env, capture_output=True, text=True)
    (out / "verify.txt").write_text(done.stdout + done.stderr)
    lines = done.stdout.strip().splitlines()
    for line in lines[1:-1]:
        if "FAILED" in line:
            console.print(line.strip(), style="red", markup=False, highlight=False)
    console.print(lines[-1] if lines else "verify failed: " + done.stderr.strip()[-500:], markup=False)
    return done.returncode == 0


# --------------------------------------------------------------------------- the run


@contextlib.contextmanager
def running_system(home: Path, console: Console) -> Iterator[tuple[str, Json, Processes]]:
    """Embedded stack + migrated DB + tenant + gateway + cpu/gpu workers; all stopped on exit."""
    settings = Settings(home=home)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(lambda: console.print("\n".join(stack.down(settings)), style="dim"))
        stack.up(settings)
        port = free_port()
        env = base_env(home, ONBRAND_EGRESS_ALLOWLIST="127.0.0.0/8", ONBRAND_PUBLIC_URL=f"http://127.0.0.1:{port}")
        console.print("[dim]migrating…[/]")
        run_cli(env, "migrate")
        tenant = json.loads(run_cli(env, "tenants", "create", "demo"))
        procs = Processes(env=env, logs=home / "logs")
        cleanup.callback(procs.stop_all)
        url = procs.gateway(port)
        procs.worker("cpu")
        procs.worker("gpu")
        console.print(f"[dim]gateway {url} · workers cpu+gpu · logs {home / 'logs'}[/]")
        yield url, tenant, procs


def run_campaign(
    client: httpx.Client,
    out: Path,
    receiver: WebhookReceiver,
    console: Console,
    timeout: float = 600.0,
    procs: Processes | None = None,
) -> Json:
    """Register the webhook, create the brand, upload the library, run the campaign; the final body. With the
    workers' processes, the campaign starts once they are warm (models loaded), so its time is the pipeline's."""
    secret = register_webhook(client, receiver.url)["secret"]
    (out / "webhook-secret.txt").write_text(secret + "\n")
    brand_id = create_brand(client)
    add_logo(client, brand_id)
    items = build_library(out / "library")
    upload_library(client, brand_id, items)
    console.print(f"brand [bold]Stride[/] {brand_id} · {len(items)} assets uploaded · brief “{BRIEF}”")
    if procs is not None:
        warm = procs.wait_warm(timeout=300.0)
        took = ", ".join(f"{node} {seconds:.0f} s" for node, seconds in sorted(warm.items())) or "not reported"
        console.print(f"[dim]workers warm (models loaded at start: {took})[/]")
    started = start_campaign(client, brand_id, copy=COPY)
    return wait_for_campaign(client, str(started["id"]), timeout=timeout, console=console)


def write_outputs(client: httpx.Client, out: Path, campaign: Json) -> list[Json]:
    """campaign.json, report.json, rank-N.png, candidates/ thumbnails and the contact sheet; the candidates."""
    (out / "campaign.json").write_text(json.dumps(campaign, indent=2, default=str) + "\n")
    report = api(client, "GET", f"/v1/campaigns/{campaign['id']}/report")
    (out / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    candidates = fetch_candidates(client, str(campaign["id"]))
    save_results(client, out, campaign)
    save_thumbnails(client, out, candidates)
    write_contact_sheet(out, campaign, candidates, report=report)
    return candidates


def run_demo(out: str) -> int:
    """Run the demo campaign end to end; 0 only when the campaign completed."""
    console = Console()
    out_dir = Path(out).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    home = Path(".onbrand/demo").absolute()
    try:
        with (
            running_system(home, console) as (url, tenant, procs),
            WebhookReceiver(out_dir / "webhooks.jsonl") as receiver,
            httpx.Client(
                base_url=url, headers={"Authorization": f"Bearer {tenant['api_key']}"}, timeout=60.0
            ) as client,
        ):
            campaign = run_campaign(client, out_dir, receiver, console, procs=procs)
            write_outputs(client, out_dir, campaign)
            receiver.wait_for(TERMINAL_EVENTS, timeout=20.0)  # delivery is async: give it a moment
            secret = (out_dir / "webhook-secret.txt").read_text().strip()
            print_summary(console, campaign, out_dir, verify_webhooks(secret, receiver.records()))
            verified = verify_results(procs.env, str(campaign["id"]), out_dir, console)
    except Exception as exc:  # any failure: one readable line and the traceback, then the exit code
        console.print(f"[red]demo failed:[/] {exc}")
        console.print(traceback.format_exc(), style="dim", markup=False, highlight=False)
        console.print(f"[dim]process logs: {home / 'logs'}[/]")
        return 1
    return 0 if campaign.get("status") == "completed" and verified else 1
