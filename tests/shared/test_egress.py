"""The egress (SSRF) guard against a real loopback HTTP(S) server and a fake DNS.

The fake DNS replaces socket.getaddrinfo itself (the real resolution path), so these tests also
see whether the HTTP stack resolves a name a second time: it must only ever be handed IPs.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from shared import egress
from shared.config import Settings
from shared.egress import EgressRefused, fetch, is_public, normalize_allow_entry, permitted, pin, post
from tests.factories import FAKE_DNS, FakeDns

LOOPBACK = ["127.0.0.0/8"]
IMG = bytes(range(200))
BIG = b"x" * 5000


# ----------------------------------------------------------------------------- fixtures


class Routes(BaseHTTPRequestHandler):
    """The routes of the test server; every request is recorded on the server."""

    server: Server

    def log_message(self, *args: Any) -> None:
        pass

    def _record(self) -> None:
        self.server.seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))

    def _send(self, status: int, body: bytes = b"", length: bool = True, **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _trickle(self, data: bytes, every: float) -> None:
        for i in range(len(data)):
            self.wfile.write(data[i : i + 1])
            self.wfile.flush()
            time.sleep(every)

    def do_GET(self) -> None:  # noqa: N802 - stdlib name
        self._record()
        try:
            self._route(self.path)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up, as it should
            pass

    def do_POST(self) -> None:  # noqa: N802 - stdlib name
        self._record()
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path == "/post-redirect":
            self._send(302, Location="/img")
        else:
            self._send(200, BIG, Content_Type="text/plain")

    def _route(self, path: str) -> None:
        port = self.server.server_port
        simple: dict[str, Callable[[], None]] = {
            "/img": lambda: self._send(200, IMG, Content_Type="image/png"),
            "/big": lambda: self._send(200, BIG),
            "/big-no-length": lambda: self._send(200, BIG, length=False),  # HTTP/1.0: ends at close
            "/404": lambda: self._send(404, b"nope"),
            "/redirect-ok": lambda: self._send(302, Location="/img"),
            "/redirect-private": lambda: self._send(302, Location="http://10.0.0.5/x"),
            "/redirect-metadata": lambda: self._send(302, Location="http://metadata.evil.test/latest/meta-data/"),
            "/redirect-other-origin": lambda: self._send(302, Location=f"http://127.0.0.1:{port}/img"),
            "/redirect-ftp": lambda: self._send(302, Location="ftp://example.com/x"),
            "/loop": lambda: self._send(302, Location="/loop"),
            "/slow": lambda: (time.sleep(3), self._send(200, IMG)),
            "/stall": self._stall,
            "/trickle": self._trickle_body,
            "/trickle-headers": self._trickle_headers,
        }
        if path.startswith("/chain/"):  # /chain/N: N redirects, then /img
            left = int(path.rsplit("/", 1)[1])
            self._send(302, Location=f"/chain/{left - 1}" if left > 1 else "/img")
        else:
            simple[path]()

    def _stall(self) -> None:
        """One body byte at 0.8 s, then silence: a per-read timeout alone would wait again."""
        self.send_response(200)
        self.send_header("Content-Length", "100")
        self.end_headers()
        self.wfile.flush()
        time.sleep(0.8)
        self.wfile.write(b"x")
        self.wfile.flush()
        time.sleep(3)

    def _trickle_body(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "100")
        self.end_headers()
        self._trickle(b"y" * 25, 0.2)

    def _trickle_headers(self) -> None:
        self.wfile.write(b"HTTP/1.0 200 OK\r\n")
        self._trickle(b"X-Slow: " + b"z" * 25 + b"\r\n\r\n", 0.2)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__(("127.0.0.1", 0), Routes)
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        if ssl_context is not None:
            self.socket = ssl_context.wrap_socket(self.socket, server_side=True)

    def url(self, path: str, host: str = "127.0.0.1", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.server_port}{path}"


def _serve(server: Server) -> Iterator[Server]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def http_server() -> Iterator[Server]:
    yield from _serve(Server())


@pytest.fixture
def server(http_server: Server) -> Server:
    http_server.seen.clear()
    return http_server


def refused(code: str, call: Callable[[], Any]) -> EgressRefused:
    with pytest.raises(EgressRefused) as info:
        call()
    assert info.value.code == code, info.value.detail
    return info.value


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ----------------------------------------------------------------------------- addresses


NOT_PUBLIC = [
    "127.0.0.1",
    "127.255.255.254",
    "10.0.0.1",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",
    "169.254.0.1",
    "100.64.0.1",
    "100.127.255.255",
    "0.0.0.0",
    "0.1.2.3",
    "224.0.0.1",
    "239.255.255.250",
    "255.255.255.255",
    "240.0.0.1",
    "192.0.0.192",
    "192.0.2.1",
    "198.18.0.1",
    "::1",
    "::",
    "fc00::1",
    "fd12::1",
    "fe80::1",
    "fe80::1%eth0",
    "fec0::1",
    "ff02::1",
    "2001:db8::1",
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:10.0.0.1",
    "::ffff:0:10.0.0.1",
    "::10.0.0.1",
    "64:ff9b::a00:1",
    "64:ff9b::7f00:1",
    "64:ff9b:1::a00:1",
    "2002:a00:1::",
    "2002:7f00:1::",
    "2002:a9fe:a9fe::",
    "2001:0:4136:e378:8000:63bf:f5ff:fffe",  # Teredo, client 10.0.0.1
    "not-an-ip",
    "",
    "1.2.3",
]
PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",
    "2002:808:808::",
]


@pytest.mark.parametrize("ip", NOT_PUBLIC)
def test_not_public(ip: str) -> None:
    assert not is_public(ip)


@pytest.mark.parametrize("ip", PUBLIC)
def test_public(ip: str) -> None:
    assert is_public(ip)


def test_allowlist_entries() -> None:
    assert permitted("h", "127.0.0.1", LOOPBACK) and permitted("h", "::ffff:127.0.0.1", LOOPBACK)
    assert not permitted("h", "10.0.0.5", LOOPBACK) and not permitted("h", "::1", LOOPBACK)
    assert permitted("h", "::1", ["::1"]) and permitted("h", "10.1.2.3", ["10.1.2.3"])
    assert permitted("Receiver.Internal.", "10.9.9.9", ["receiver.internal"])  # a named host, any address
    assert not permitted("other.internal", "10.9.9.9", ["receiver.internal"])
    assert permitted("h", "8.8.8.8", [])
    assert normalize_allow_entry(" 127.0.0.1/8 ") == "127.0.0.0/8" and normalize_allow_entry("::1") == "::1/128"
    for bad in ("not a host!", "10.0.0.300", "http://x/", "-bad.example", ""):
        with pytest.raises(ValueError):
            normalize_allow_entry(bad)


def test_refusal_codes_are_closed() -> None:
    with pytest.raises(ValueError):
        EgressRefused("something_else", "x")


# ----------------------------------------------------------------------------- pin


@pytest.mark.parametrize(
    "host", ["metadata.evil.test", "intranet.evil.test", "mixed.evil.test", "v6.evil.test", "ula.evil.test"]
)
def test_names_resolving_to_private_addresses_are_refused(dns: FakeDns, host: str) -> None:
    error = refused("url_private_address", lambda: pin(f"http://{host}/latest/meta-data/"))
    refused("url_private_address", lambda: fetch(f"https://{host}/x", max_bytes=100, timeout_s=2))
    for ip in FAKE_DNS[host]:
        assert ip not in error.detail  # never tell a client what our network looks like
    assert dns.calls.count(host) == 2  # one lookup per attempt, no connection after it


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://[::1]/",
        "http://169.254.169.254/latest/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://0.0.0.0:8000/",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://localhost/",
    ],
)
def test_private_literals_and_real_localhost_are_refused(url: str) -> None:
    refused("url_private_address", lambda: pin(url))


def test_unresolvable_names(dns: FakeDns) -> None:
    error = refused("url_unresolvable", lambda: pin("http://nxdomain.evil.test/"))
    assert "Name or service" not in error.detail


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/x",
        "gopher://example.com:70/_x",
        "javascript:alert(1)",
        "//example.com/x",
        "example.com/x",
    ],
)
def test_only_http_and_https(url: str) -> None:
    refused("url_scheme_not_allowed", lambda: pin(url))


@pytest.mark.parametrize(
    "url",
    [
        "http://user:pw@example.com/",
        "http://user@example.com/",
        "http:///x",
        "http://exa mple.com/",
        "http://example.com:99999/",
        "https://:443/",
    ],
)
def test_invalid_urls(url: str) -> None:
    refused("url_invalid", lambda: pin(url))


def test_pin_returns_the_address_it_checked(dns: FakeDns) -> None:
    url, ip = pin("http://images.test:8080/a?b=1", LOOPBACK)
    assert (str(url), ip, dns.names()) == ("http://images.test:8080/a?b=1", "127.0.0.1", ["images.test"])
    assert pin("http://receiver.internal/", ["receiver.internal"])[1] == "127.0.0.1"
    assert pin("http://[::1]:9/", ["::1"])[1] == "::1"


# ----------------------------------------------------------------------------- fetch


def test_fetch_through_the_allowlist(server: Server) -> None:
    got = fetch(server.url("/img"), max_bytes=len(IMG), timeout_s=5, allowlist=LOOPBACK)
    assert (got.status, got.body, got.address, got.url) == (200, IMG, "127.0.0.1", server.url("/img"))
    assert got.headers["content-type"] == "image/png" and got.headers["content-length"] == "200"


def test_without_the_allowlist_the_local_server_is_refused(server: Server) -> None:
    refused("url_private_address", lambda: fetch(server.url("/img"), max_bytes=1000, timeout_s=5))
    assert server.seen == []


def test_resolved_once_per_hop_and_connected_by_address(server: Server, dns: FakeDns) -> None:
    got = fetch(server.url("/redirect-ok", host="images.test"), max_bytes=1000, timeout_s=5, allowlist=LOOPBACK)
    assert got.body == IMG and got.url == server.url("/img", host="images.test") and got.address == "127.0.0.1"
    assert dns.names() == ["images.test", "images.test"]  # one lookup per hop; the connections used the IP
    assert [(path, headers["host"]) for _, path, headers in server.seen] == [
        ("/redirect-ok", f"images.test:{server.server_port}"),
        ("/img", f"images.test:{server.server_port}"),
    ]


def test_a_named_host_in_the_allowlist(server: Server, dns: FakeDns) -> None:
    got = fetch(
        server.url("/img", host="receiver.internal"), max_bytes=1000, timeout_s=5, allowlist=["receiver.internal"]
    )
    assert got.body == IMG
    refused(
        "url_private_address",
        lambda: fetch(
            server.url("/img", host="images.test"), max_bytes=1000, timeout_s=5, allowlist=["receiver.internal"]
        ),
    )


@pytest.mark.parametrize("path", ["/big", "/big-no-length"])
def test_bodies_over_the_limit(server: Server, path: str) -> None:
    error = refused("url_too_large", lambda: fetch(server.url(path), max_bytes=1000, timeout_s=5, allowlist=LOOPBACK))
    assert "1000" in error.detail
    assert fetch(server.url(path), max_bytes=len(BIG), timeout_s=5, allowlist=LOOPBACK).body == BIG


@pytest.mark.parametrize("path", ["/slow", "/trickle", "/trickle-headers", "/stall"])
def test_the_timeout_is_a_total_deadline(server: Server, path: str) -> None:
    started = time.monotonic()
    refused("url_timeout", lambda: fetch(server.url(path), max_bytes=10_000, timeout_s=1.0, allowlist=LOOPBACK))
    assert time.monotonic() - started < 1.5


def test_redirect_targets_are_checked_again(server: Server, dns: FakeDns) -> None:
    for path in ("/redirect-private", "/redirect-metadata"):
        error = refused(
            "url_private_address", lambda p=path: fetch(server.url(p), max_bytes=1000, timeout_s=5, allowlist=LOOPBACK)
        )
        assert error.detail.startswith("redirect refused")
    refused(
        "url_scheme_not_allowed",
        lambda: fetch(server.url("/redirect-ftp"), max_bytes=1000, timeout_s=5, allowlist=LOOPBACK),
    )
    assert "169.254.169.254" not in dns.calls  # resolved, refused, never connected to
    assert [path for _, path, _ in server.seen] == ["/redirect-private", "/redirect-metadata", "/redirect-ftp"]


def test_redirect_limits(server: Server) -> None:
    def get(path: str, max_redirects: int = 3) -> egress.Fetched:
        return fetch(server.url(path), max_bytes=1000, timeout_s=5, allowlist=LOOPBACK, max_redirects=max_redirects)

    assert get("/redirect-ok").url == server.url("/img")
    assert get("/chain/3").body == IMG
    refused("url_redirect_refused", lambda: get("/chain/4"))
    refused("url_redirect_refused", lambda: get("/loop"))
    refused("url_redirect_refused", lambda: get("/redirect-ok", max_redirects=0))


def test_credentials_stay_with_their_origin(server: Server, dns: FakeDns) -> None:
    fetch(
        server.url("/redirect-other-origin", host="images.test"),
        max_bytes=1000,
        timeout_s=5,
        allowlist=LOOPBACK,
        headers={"Authorization": "Bearer s3cret", "X-Trace": "1"},
    )
    first, second = (headers for _, _, headers in server.seen)
    assert first["authorization"] == "Bearer s3cret" and "authorization" not in second
    assert second["x-trace"] == "1" and second["host"] == f"127.0.0.1:{server.server_port}"


def test_error_statuses_and_unreachable_hosts(server: Server) -> None:
    error = refused(
        "url_http_status", lambda: fetch(server.url("/404"), max_bytes=1000, timeout_s=5, allowlist=LOOPBACK)
    )
    assert "404" in error.detail
    error = refused(
        "url_unreachable",
        lambda: fetch(f"http://127.0.0.1:{closed_port()}/", max_bytes=1000, timeout_s=5, allowlist=LOOPBACK),
    )
    assert "refused" not in error.detail.lower() and "errno" not in error.detail.lower()


# ----------------------------------------------------------------------------- https


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    """An HTTPS server whose certificate names only images.test (not 127.0.0.1), from a test CA."""
    ca_pem, cert_pem, key_pem = _certificates("images.test")
    folder = tmp_path_factory.mktemp("tls")
    (folder / "ca.pem").write_bytes(ca_pem)
    (folder / "cert.pem").write_bytes(cert_pem)
    (folder / "key.pem").write_bytes(key_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    names: list[str | None] = []
    context.sni_callback = lambda _sock, name, _ctx: names.append(name)  # type: ignore[assignment, misc]
    for server in _serve(Server(context)):
        server.sni = names  # type: ignore[attr-defined]
        yield server, folder / "ca.pem"


def test_https_uses_the_real_name_for_sni_and_certificate(
    tls: tuple[Server, Path], dns: FakeDns, monkeypatch: pytest.MonkeyPatch
) -> None:
    import certifi

    server, ca = tls
    monkeypatch.setattr(certifi, "where", lambda: str(ca))  # httpx's default trust store, now our test CA
    got = fetch(server.url("/img", host="images.test", scheme="https"), max_bytes=1000, timeout_s=5, allowlist=LOOPBACK)
    assert got.body == IMG and got.address == "127.0.0.1" and server.sni[-1] == "images.test"  # type: ignore[attr-defined]
    # The certificate names images.test only: by its address the same server fails verification.
    refused(
        "url_unreachable",
        lambda: fetch(server.url("/img", scheme="https"), max_bytes=1000, timeout_s=5, allowlist=LOOPBACK),
    )


def _certificates(hostname: str) -> tuple[bytes, bytes, bytes]:
    """(CA cert, server cert, server key) PEMs: a throwaway CA and a leaf for `hostname`."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "onbrand test CA")])

    def base(subject: Any, public_key: Any) -> Any:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        )

    ca = (
        base(ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        base(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]), key.public_key())
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return ca.public_bytes(pem), leaf.public_bytes(pem), key_pem


# ----------------------------------------------------------------------------- post


def test_post_does_not_follow_redirects(server: Server) -> None:
    got = post(
        server.url("/post-redirect"),
        content=b"{}",
        headers={"Content-Type": "application/json"},
        timeout_s=5,
        allowlist=LOOPBACK,
    )
    assert got.status == 302 and got.headers["location"] == "/img"
    assert [(method, path) for method, path, _ in server.seen] == [("POST", "/post-redirect")]


def test_post_truncates_the_response_body(server: Server) -> None:
    got = post(server.url("/echo"), content=b"{}", headers={}, timeout_s=5, allowlist=LOOPBACK, max_response_bytes=100)
    assert (got.status, got.body) == (200, BIG[:100])
    assert post(server.url("/echo"), content=b"", headers={}, timeout_s=5, allowlist=LOOPBACK).body == BIG[:2048]


def test_post_refusals(server: Server, dns: FakeDns) -> None:
    refused("url_private_address", lambda: post(server.url("/echo"), content=b"{}", headers={}, timeout_s=5))
    refused("url_private_address", lambda: post("https://metadata.evil.test/", content=b"{}", headers={}, timeout_s=5))
    refused(
        "url_unreachable",
        lambda: post(f"http://127.0.0.1:{closed_port()}/", content=b"{}", headers={}, timeout_s=5, allowlist=LOOPBACK),
    )
    assert server.seen == []


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.0/8,::1", ["127.0.0.0/8", "::1/128"]),
        (" 127.0.0.0/8 , receiver.internal ", ["127.0.0.0/8", "receiver.internal"]),
        ('["127.0.0.0/8"]', ["127.0.0.0/8"]),
        ("", []),
    ],
)
def test_allowlist_setting_parses(monkeypatch: pytest.MonkeyPatch, value: str, expected: list[str]) -> None:
    monkeypatch.setenv("ONBRAND_EGRESS_ALLOWLIST", value)
    assert Settings(_env_file=None).egress_allowlist == expected  # type: ignore[call-arg]


def test_allowlist_setting_defaults_to_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ONBRAND_EGRESS_ALLOWLIST", raising=False)
    assert Settings(_env_file=None).egress_allowlist == []  # type: ignore[call-arg]


@pytest.mark.parametrize("value", ["127.0.0.0/8,not a host!", '["10.0.0.300"]', "[not json"])
def test_allowlist_setting_rejects_bad_entries(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("ONBRAND_EGRESS_ALLOWLIST", value)
    with pytest.raises(ValidationError):
        Settings(_env_file=None)  # type: ignore[call-arg]
