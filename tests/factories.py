"""What tests build and fake, shared by test modules (which never import one another): rows and API
objects, synthetic images, local HTTP receivers and fake servers, and the end-to-end helpers.

Fixtures that hand these out are in the conftest.py of the narrowest directory that uses them."""

from __future__ import annotations

import io
import ipaddress
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import cv2
import httpx
import numpy as np
from PIL import Image

from shared import webhooks
from shared.cli.procs import free_port, onbrand_cmd, wait_http
from shared.db.models import (
    Asset,
    Brand,
    Campaign,
    DamPush,
    Feedback,
    StorageDeletion,
    WebhookDelivery,
    WebhookEndpoint,
)
from shared.db.session import session_scope
from shared.tenants import create_tenant
from tests.system import System

# ---------------------------------------------------------------- rows written straight to the database


def make_campaign(state: dict[str, Any] | None = None, webhook_url: str | None = None) -> str:
    """A campaign row (with a new tenant and brand) in the current database; its id."""
    with session_scope() as session:
        tenant_id, _ = create_tenant(session, "t")
        brand = Brand(tenant_id=tenant_id, name="b")
        session.add(brand)
        session.flush()
        campaign = Campaign(
            tenant_id=tenant_id,
            brand_id=brand.id,
            brief="a shoe",
            sizes=[],
            state=state or {},
            webhook_url=webhook_url,
            webhook_secret="whsec_" + "A" * 32 if webhook_url else None,
        )
        session.add(campaign)
        session.flush()
        return str(campaign.id)


def add_endpoint(campaign_id: str, url: str, v1a: bool = False, patterns: tuple[str, ...] = ("campaign.*",)) -> str:
    """A webhook endpoint of the campaign's tenant; its id."""
    with session_scope() as session:
        campaign = session.get(Campaign, uuid.UUID(campaign_id))
        endpoint = WebhookEndpoint(
            tenant_id=campaign.tenant_id,
            url=url,
            secret=webhooks.new_secret(),
            event_types=list(patterns),
            signing_key=webhooks.new_signing_key() if v1a else None,
        )
        session.add(endpoint)
        session.flush()
        return str(endpoint.id)


# ---------------------------------------------------------------- the gateway in process (TestClient)


@dataclass
class Tenant:
    id: uuid.UUID
    key: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


def new_tenant(name: str) -> Tenant:
    with session_scope() as session:
        tenant_id, key = create_tenant(session, name)
    return Tenant(tenant_id, key)


# Which table the id argument of each task must already be committed in.
TASK_TABLES: dict[str, Any] = {
    "onbrand.decompose": Campaign,
    "onbrand.embed_assets": Asset,
    "onbrand.send_webhook": WebhookDelivery,
    "onbrand.route_feedback": Feedback,
    "onbrand.learn_ranking": Brand,
    "onbrand.push_results": DamPush,
    "onbrand.delete_objects": StorageDeletion,
}


class SentTasks(list[tuple[str, tuple[Any, ...]]]):
    """The tasks the gateway sent: (task name, arguments)."""

    def named(self, name: str) -> list[tuple[Any, ...]]:
        return [args for task, args in self if task == name]


def make_brand(client: Any, tenant: Tenant, name: str = "Brand") -> str:
    response = client.post("/v1/brands", json={"name": name, "palette": ["#112233"]}, headers=tenant.auth)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def post_campaign(client: Any, tenant: Tenant, **overrides: Any) -> Any:
    """A campaign created through the API (POST /v1/campaigns, with a new brand); its JSON."""
    body = {"brand_id": make_brand(client, tenant), "brief": "Summer sale on sneakers", **overrides}
    response = client.post("/v1/campaigns", json=body, headers=tenant.auth)
    assert response.status_code == 202, response.text
    return response.json()


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["code"] == code
    assert {"type", "title", "detail", "instance"} <= body.keys()
    return body


# ---------------------------------------------------------------- synthetic product images


def bottle(w: int = 120, h: int = 180, seed: int = 0) -> Image.Image:
    """A bottle: round-shouldered body and neck, mottled print, anti-aliased (soft) alpha edge."""
    rng = np.random.default_rng(seed)
    shape = np.zeros((h, w), np.uint8)
    cv2.rectangle(shape, (10, h // 3), (w - 11, h - 8), 255, -1)
    cv2.ellipse(shape, (w // 2, h // 3), (w // 2 - 10, h // 8), 0, 0, 360, 255, -1)
    cv2.rectangle(shape, (w // 2 - 12, 8), (w // 2 + 12, h // 3), 255, -1)
    alpha = cv2.GaussianBlur(shape, (0, 0), 1.3)
    noise = cv2.GaussianBlur(rng.normal(0.0, 1.0, (h, w, 3)).astype(np.float32), (0, 0), 3)
    rgb = np.clip(120 + 500 * noise, 0, 255).astype(np.uint8)
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


def cutout(w: int = 400, h: int = 500, seed: int = 0) -> Image.Image:
    """A realistic product cut-out: bottle silhouette, printed label, soft anti-aliased alpha."""
    rng = np.random.default_rng(seed)
    shape = np.zeros((h, w), np.uint8)
    cv2.rectangle(shape, (40, h // 3), (w - 41, h - 20), 255, -1)
    cv2.ellipse(shape, (w // 2, h // 3), (w // 2 - 40, h // 7), 0, 0, 360, 255, -1)
    cv2.rectangle(shape, (w // 2 - 45, 15), (w // 2 + 45, h // 3), 255, -1)
    alpha = cv2.GaussianBlur(shape, (0, 0), 1.5)
    noise = cv2.GaussianBlur(rng.normal(0.0, 1.0, (h, w, 3)).astype(np.float32), (0, 0), 5)
    rgb = np.clip(110 + 500 * noise, 0, 255).astype(np.uint8)
    cv2.rectangle(rgb, (60, h // 2), (w - 61, h // 2 + 110), (245, 235, 210), -1)
    cv2.putText(rgb, "BRAND", (90, h // 2 + 75), cv2.FONT_HERSHEY_SIMPLEX, 2.2, (30, 30, 80), 6)
    return Image.fromarray(np.dstack([rgb, alpha]), "RGBA")


def stored_composite(storage: Any, prefix: str = "t", canvas: int = 320) -> tuple[bytes, dict[str, Any]]:
    """One candidate made as generate makes it: the source photo and mask stored under ``prefix``, the product
    layer derived and composited on a backdrop. Returns (the candidate's PNG bytes, its integrity record)."""
    from shared import integrity
    from workers.imaging import composition, compositor

    photo = cutout(200, 260)
    alpha = np.asarray(photo.getchannel("A"))
    src, mask = (_png(photo.convert("RGB")), _png(Image.fromarray(alpha)))
    storage.put(f"{prefix}/source.png", src, "image/png")
    storage.put(f"{prefix}/alpha.png", mask, "image/png")
    crop = integrity.mask_box(alpha)
    size = (crop[2] - crop[0], crop[3] - crop[1])
    layout = composition.plan([(canvas, canvas)], size, cutout=integrity.cut_out(photo, alpha, crop)).layouts[0]
    t = composition.transform_of(layout, size, crop)
    layer = integrity.derive_layer(photo.convert("RGB"), alpha, t)
    image = compositor.compose(layer, compositor.backdrop((canvas, canvas), ["#336699"]))
    source_ref = integrity.stored_ref(f"{prefix}/source.png", src, kind="asset", asset_id=str(uuid.uuid4()))
    record = integrity.record(source_ref, integrity.stored_ref(f"{prefix}/alpha.png", mask), t, image, layer)
    return _png(image), record


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------- the tiny CLIP (built by the clip_dir fixture)

CLIP_PROJECTION_DIM = 16
# BPE merges of a toy vocabulary; each result joins the vocab after the 512 byte tokens.
CLIP_MERGES = [("t", "h"), ("th", "e</w>"), ("c", "a"), ("ca", "t</w>"), ("d", "o"), ("do", "g</w>"), ("a", "n")]


# ---------------------------------------------------------------- a webhook receiver

ReceiverReply = int | tuple[int, dict[str, str]] | float  # a status, a status with headers, or seconds to hang


class Receiver:
    """Answers with the scripted replies (then 200) and keeps what it got, with when it got it."""

    def __init__(self, replies: list[ReceiverReply] | None = None) -> None:
        self.replies, self.requests = list(replies or []), []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                body = self.rfile.read(int(self.headers["content-length"])).decode()
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                receiver.answer(self)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"

    def answer(self, handler: BaseHTTPRequestHandler) -> None:
        reply = self.replies.pop(0) if self.replies else 200
        if isinstance(reply, float):
            time.sleep(reply)
            reply = 200
        status, headers = reply if isinstance(reply, tuple) else (reply, {})
        body = b'{"received": true, "note": "' + b"x" * 3000 + b'"}'
        handler.send_response(status)
        for name, value in {**headers, "content-length": str(len(body))}.items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(body)


# ---------------------------------------------------------------- a fake DNS (the `dns` fixture installs it)

FAKE_DNS = {
    "metadata.evil.test": ["169.254.169.254"],
    "intranet.evil.test": ["10.0.0.5"],
    "mixed.evil.test": ["93.184.216.34", "10.0.0.5"],
    "v6.evil.test": ["::ffff:127.0.0.1"],
    "ula.evil.test": ["fd00::1"],
    "images.test": ["127.0.0.1"],
    "receiver.internal": ["127.0.0.1"],
}


def is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class FakeDns:
    """socket.getaddrinfo with FAKE_DNS names added; records every host it was asked for."""

    def __init__(self, real: Callable[..., Any]) -> None:
        self.real, self.calls = real, []

    def __call__(self, host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        self.calls.append(name)
        if name == "nxdomain.evil.test":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        if name not in FAKE_DNS:
            return self.real(host, port, *args, **kwargs)
        return [self._info(ip, int(port or 0)) for ip in FAKE_DNS[name]]

    @staticmethod
    def _info(ip: str, port: int) -> tuple[Any, ...]:
        if ":" in ip:
            return socket.AF_INET6, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, port, 0, 0)
        return socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (ip, port)

    def names(self) -> list[str]:
        """The non-literal hosts looked up: IP literals need no DNS and prove pinning."""
        return [c for c in self.calls if not is_ip(c)]


# ---------------------------------------------------------------- a fake OpenAI-compatible server (`server` fixture)


def chat_completion(
    content: Any,
    *,
    model: str = "gpt-4o-mini-2024-07-18",
    finish_reason: str = "stop",
    prompt_tokens: int = 42,
    completion_tokens: int = 7,
) -> dict[str, Any]:
    """The shape OpenAI (and vLLM, Ollama's /v1) return for POST /chat/completions."""
    return {
        "id": "chatcmpl-AbC123xyz",
        "object": "chat.completion",
        "created": 1727000000,
        "model": model,
        "system_fingerprint": "fp_0ba0d124f1",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


@dataclass
class Reply:
    """One scripted answer of FakeOpenAI."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


class FakeOpenAI:
    """Serves the scripted replies in order (the last one repeats) and records every request."""

    def __init__(self) -> None:
        self.replies: list[Reply] = []
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.handle_error = lambda request, client_address: None  # clients hanging up on timeouts
        self.base_url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def script(self, *replies: Reply) -> None:
        self.replies = list(replies)

    def _next(self, recorded: Recorded) -> Reply:
        with self._lock:
            self.requests.append(recorded)
            return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                reply = fake._next(
                    Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, json.loads(raw))
                )
                time.sleep(reply.delay_s)
                payload = (reply.body if isinstance(reply.body, str) else json.dumps(reply.body)).encode()
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (base signature)
                pass

        return Handler


# ---------------------------------------------------------------- a running system over HTTP (end to end)

BRIEF = "the running shoe on an urban street at sunset"


def api_client(system: System, api_key: str) -> httpx.Client:
    return httpx.Client(base_url=system.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=30)


def verify(system: System, campaign_id: str, *args: str) -> str:
    """`onbrand verify` on a campaign of the running system (its exit code asserted 0): the output."""
    done = subprocess.run(
        onbrand_cmd("verify", campaign_id, *args), env=system.env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.strip()


def wait_terminal(api: httpx.Client, campaign_id: str, timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = api.get(f"/v1/campaigns/{campaign_id}").json()
        if body["status"] in ("completed", "partial", "failed", "cancelled"):
            return body
        time.sleep(0.5)
    raise TimeoutError(f"campaign {campaign_id} still {body['status']} at {body.get('current_stage')}")


def httpx_get(url: str) -> Any:
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, url
    return io.BytesIO(response.content)


# --- S3: moto's server (a real HTTP S3 endpoint; it does not check signatures or expiry) -------------


@contextmanager
def moto_server() -> Iterator[str]:
    """A moto S3 server process on a free loopback port; its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/moto-api/", proc=proc)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def s3_client(url: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="test", aws_secret_access_key="test"
    )
