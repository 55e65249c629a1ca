"""The egress (SSRF) guard: every request to a URL a client gave us goes through here.

A client-supplied URL (webhook target, asset import) must not let a client reach our own
network: loopback, private ranges, the cloud metadata service (169.254.169.254), nor any of
them wrapped in an IPv6 form. Checking the URL text is not enough: a public-looking name can
resolve to 10.0.0.5, resolve differently on a second lookup (DNS rebinding), or redirect to
an internal address. So we

* resolve the host once, refuse if ANY of its addresses is non-public (`pin`),
* connect to exactly that address, keeping the real name for Host, TLS SNI and certificate
  verification (so a second lookup by the HTTP stack can never pick another address),
* validate every redirect hop the same way, and bound size and total time.

The only way through for private addresses is an explicit allowlist (development, tests).
Errors carry a stable `code` and a `detail` that is safe to show a client: it never contains
errno text or the internal address a name resolved to.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import certifi
import httpx

CODES = (
    "url_invalid",
    "url_scheme_not_allowed",
    "url_unresolvable",
    "url_private_address",
    "url_unreachable",
    "url_timeout",
    "url_redirect_refused",
    "url_too_large",
    "url_http_status",
)

SCHEMES = ("http", "https")
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Credentials we attached for one origin must not be replayed to another one a redirect names.
_ORIGIN_BOUND_HEADERS = ("authorization", "cookie", "proxy-authorization")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Spelled out rather than trusting `is_global` alone: its tables changed between Python
# releases, and for an SSRF guard the list of what we refuse should be readable here.
_V4_BLOCKED = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",  # "this network"; connecting to 0.0.0.0 reaches the local host on Linux
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",  # RFC 1918
        "100.64.0.0/10",  # carrier-grade NAT (RFC 6598), used for internal addresses by some clouds
        "127.0.0.0/8",  # loopback
        "169.254.0.0/16",  # link-local, incl. the cloud metadata service 169.254.169.254
        "192.0.0.0/24",  # IETF protocol assignments (192.0.0.192 is a cloud metadata address)
        "192.0.2.0/24",
        "198.51.100.0/24",
        "203.0.113.0/24",  # documentation
        "192.88.99.0/24",  # deprecated 6to4 relay anycast
        "198.18.0.0/15",  # benchmarking
        "224.0.0.0/4",  # multicast
        "240.0.0.0/4",  # reserved, incl. the broadcast address 255.255.255.255
    )
)
_V6_BLOCKED = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/96",  # unspecified, loopback ::1 and the deprecated IPv4-compatible ::a.b.c.d
        "100::/64",  # discard-only
        "2001:db8::/32",  # documentation
        "fc00::/7",  # unique local (ULA)
        "fe80::/10",  # link-local
        "fec0::/10",  # site-local (deprecated, still routed internally in places)
        "ff00::/8",  # multicast
        "64:ff9b:1::/48",  # local-use NAT64 (RFC 8215)
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SIIT = ipaddress.IPv6Network("::ffff:0:0:0/96")  # IPv4-translated ::ffff:0:a.b.c.d
_V4_COMPATIBLE = ipaddress.IPv6Network("::/96")

# RFC 1123 labels (underscore tolerated: it exists in real host names).
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOSTNAME = re.compile(rf"^(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*$")


class EgressRefused(Exception):
    """A URL we will not fetch, or a fetch that did not succeed; `detail` is client-safe."""

    code: str
    detail: str

    def __init__(self, code: str, detail: str) -> None:
        if code not in CODES:
            raise ValueError(f"unknown egress code {code!r}")
        super().__init__(f"{code}: {detail}")
        self.code, self.detail = code, detail


@dataclass(frozen=True)
class Fetched:
    status: int
    headers: dict[str, str]  # lower-cased names
    body: bytes
    url: str  # final URL (after allowed redirects), with the host name, not the pinned address
    address: str  # the IP actually connected to


# ----------------------------------------------------------------------------- addresses


def _v4_public(addr: ipaddress.IPv4Address) -> bool:
    if any(addr in net for net in _V4_BLOCKED):
        return False
    return addr.is_global and not (addr.is_multicast or addr.is_reserved or addr.is_unspecified)


def _embedded_v4(addr: ipaddress.IPv6Address) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses an IPv6 address carries: traffic to it may end up at them."""
    found: list[ipaddress.IPv4Address] = []
    if addr.sixtofour is not None:
        found.append(addr.sixtofour)
    if addr.teredo is not None:
        found.extend(addr.teredo)  # (server, client); the client is the host behind the NAT
    if addr in _NAT64 or addr in _SIIT or addr in _V4_COMPATIBLE:
        found.append(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    return found


def _v6_public(addr: ipaddress.IPv6Address) -> bool:
    if addr.ipv4_mapped is not None:  # ::ffff:a.b.c.d is a v4 connection on a dual-stack socket
        return _v4_public(addr.ipv4_mapped)
    if addr in _NAT64:  # what DNS64 answers on IPv6-only networks: it reaches the v4 address inside
        return _v4_public(ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF))
    if addr.scope_id or any(addr in net for net in _V6_BLOCKED):
        return False  # a zone id only makes sense on link-local addresses
    if not all(_v4_public(v4) for v4 in _embedded_v4(addr)):
        return False
    return addr.is_global and not (addr.is_multicast or addr.is_reserved or addr.is_site_local)


def is_public(ip: str) -> bool:
    """True only for an address on the public internet; anything unparsable is not."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return _v4_public(addr) if isinstance(addr, ipaddress.IPv4Address) else _v6_public(addr)


# ----------------------------------------------------------------------------- allowlist


def _ip_literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _normal_host(host: str) -> str:
    return host.strip("[]").rstrip(".").lower()


def _is_hostname(host: str) -> bool:
    # An all-digit last label is no DNS name but a mistyped address ("10.0.0.300").
    return bool(_HOSTNAME.match(host)) and not host.rsplit(".", 1)[-1].isdigit()


def normalize_allow_entry(entry: str) -> str:
    """One allowlist entry in canonical form: a network ("10.0.0.0/8", "::1/128") or a host name.

    Raises ValueError for anything else, so a typo in the setting fails at start-up instead of
    silently allowing nothing (or, worse, something else).
    """
    text = entry.strip()
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        pass
    name = _normal_host(text)
    if not _is_hostname(name):
        raise ValueError(f"not an IP network or host name: {entry!r}")
    return name


def _split_allowlist(allowlist: Sequence[str]) -> tuple[set[str], list[IPNetwork]]:
    names: set[str] = set()
    networks: list[IPNetwork] = []
    for entry in map(normalize_allow_entry, allowlist):
        if _ip_literal(entry.split("/")[0]) is not None:
            networks.append(ipaddress.ip_network(entry))
        else:
            names.add(entry)
    return names, networks


def _allowlisted(host: str, addr: IPAddress, allowlist: Sequence[str]) -> bool:
    names, networks = _split_allowlist(allowlist)
    if _normal_host(host) in names:
        return True
    candidates: list[IPAddress] = [addr]
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        candidates.append(addr.ipv4_mapped)  # the same destination as the plain v4 address
    return any(c.version == net.version and c in net for c in candidates for net in networks)


def permitted(host: str, ip: str, allowlist: Sequence[str] = ()) -> bool:
    """May a request for `host` connect to `ip`? Public, or explicitly allowed (dev setting)."""
    if is_public(ip):
        return True
    addr = _ip_literal(ip)
    return addr is not None and _allowlisted(host, addr, allowlist)


# ----------------------------------------------------------------------------- pinning


def resolve(host: str, port: int) -> list[str]:
    """socket.getaddrinfo once; the unique IPs in order.

    Tests monkeypatch shared.egress.resolve or socket.getaddrinfo.
    """
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for family, _, _, _, sockaddr in infos:
        ip = str(sockaddr[0])
        if family in (socket.AF_INET, socket.AF_INET6) and ip not in addresses:
            addresses.append(ip)
    return addresses


def _port(url: httpx.URL) -> int:
    return url.port or (443 if url.scheme == "https" else 80)


def _parse(url: str) -> httpx.URL:
    """The URL if it is a plain http(s) URL with a host and no credentials."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise EgressRefused("url_invalid", "the URL is not valid") from None
    if parsed.scheme not in SCHEMES:
        raise EgressRefused("url_scheme_not_allowed", "only http and https URLs are allowed")
    if parsed.userinfo:  # credentials in URLs end up in logs, and confuse naive parsers
        raise EgressRefused("url_invalid", "the URL must not contain credentials")
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise EgressRefused("url_invalid", "the URL has no host")
    if _ip_literal(host) is None and not _HOSTNAME.match(_normal_host(host)):
        raise EgressRefused("url_invalid", "the URL's host is not a valid host name")
    if not 0 < _port(parsed) < 65536:
        raise EgressRefused("url_invalid", "the URL's port is out of range")
    return parsed


def _addresses(host: str, port: int) -> list[str]:
    literal = _ip_literal(host)
    if literal is not None:
        return [str(literal)]  # nothing to resolve, and nothing to rebind
    try:
        addresses = resolve(host, port)
    except (OSError, UnicodeError):  # socket.gaierror is an OSError; its text stays internal
        addresses = []
    if not addresses:
        raise EgressRefused("url_unresolvable", "the URL's host name does not resolve")
    return addresses


def pin(url: str, allowlist: Sequence[str] = ()) -> tuple[httpx.URL, str]:
    """Check a URL and choose the address to connect to: (parsed url, chosen ip).

    Scheme http/https only (else url_scheme_not_allowed); a host and no userinfo credentials
    (else url_invalid). The host is resolved ONCE (failure: url_unresolvable) and refused if ANY
    of its addresses is non-public and not allowlisted (url_private_address).
    """
    target = _parse(url)
    host = target.raw_host.decode("ascii")
    addresses = _addresses(host, _port(target))
    # ANY, not the first: the HTTP stack or a retry might otherwise use the private one.
    if not all(permitted(host, ip, allowlist) for ip in addresses):
        raise EgressRefused("url_private_address", "the URL's host resolves to a private address")
    return target, addresses[0]


# ----------------------------------------------------------------------------- deadline


class _Deadline:
    """The total time budget of one fetch or post, across connects, reads and redirect hops.

    httpx timeouts apply per socket operation, so a server sending one byte every 0.2 s (in the
    headers or the body) would never trip them. A timer thread shuts down every socket this
    request opened when the budget runs out, which unblocks any read in progress.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.expired = False
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._timer = threading.Timer(max(seconds, 0.0), self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._timer.cancel()
        with self._lock:
            for sock in self._sockets:
                sock.close()
            self._sockets.clear()

    def refusal(self) -> EgressRefused:
        return EgressRefused("url_timeout", f"no complete response within {self.seconds:g} seconds")

    def remaining(self) -> float:
        """Seconds left; raises url_timeout when none are."""
        left = self.end - time.monotonic()
        if self.expired or left <= 0:
            raise self.refusal()
        return left

    def trace(self, event: str, info: dict[str, Any]) -> None:
        """httpcore's `trace` request extension: learn each socket as soon as it is connected."""
        if event == "connection.connect_tcp.complete" and info.get("return_value") is not None:
            sock = info["return_value"].get_extra_info("socket")
            if isinstance(sock, socket.socket):
                self._watch(sock)

    def _watch(self, sock: socket.socket) -> None:
        # A dup shares the connection but survives the TLS wrapper detaching the original.
        watched = sock.dup()
        with self._lock:
            self._sockets.append(watched)
            if self.expired:
                _shutdown(watched)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._sockets:
                _shutdown(sock)


def _shutdown(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by the peer or by us
        sock.shutdown(socket.SHUT_RDWR)


# ----------------------------------------------------------------------------- one exchange


def _failure(exc: Exception, deadline: _Deadline) -> EgressRefused:
    """A client-safe refusal for a transport error (the exception text stays in our logs)."""
    if deadline.expired or isinstance(exc, httpx.TimeoutException):
        return deadline.refusal()
    if isinstance(exc, httpx.ConnectError):
        return EgressRefused("url_unreachable", "could not connect to the URL's host")
    return EgressRefused("url_unreachable", "the connection to the URL's host failed")


def _pinned_request(
    client: httpx.Client,
    method: str,
    target: httpx.URL,
    ip: str,
    headers: Mapping[str, str],
    content: bytes | None,
    deadline: _Deadline,
) -> httpx.Request:
    """A request to `ip` that still says (Host), and verifies TLS for (SNI), the URL's host."""
    host = target.raw_host.decode("ascii")
    extensions: dict[str, Any] = {"trace": deadline.trace}
    if target.scheme == "https":
        extensions["sni_hostname"] = host  # httpcore uses it for SNI and certificate hostname checks
    sent = httpx.Headers(headers)
    sent["Host"] = target.netloc.decode("ascii")  # replaces any caller-given Host, whatever its case
    return client.build_request(
        method,
        target.copy_with(host=ip),
        content=content,
        headers=sent,
        timeout=deadline.remaining(),
        extensions=extensions,
    )


@contextlib.contextmanager
def _exchange(
    method: str, target: httpx.URL, ip: str, headers: Mapping[str, str], content: bytes | None, deadline: _Deadline
) -> Iterator[httpx.Response]:
    """One pinned request with a streamed response; transport errors become EgressRefused,
    also those raised while the caller reads the body inside the with-block."""
    try:
        # A fresh client per hop: its pool keys connections by address, so a kept-alive TLS
        # connection verified for one name could otherwise serve another name on the same IP.
        with httpx.Client(
            follow_redirects=False,
            trust_env=False,  # trust_env: no env proxies
            verify=_tls_context(certifi.where()),
        ) as client:
            request = _pinned_request(client, method, target, ip, headers, content, deadline)
            with contextlib.closing(client.send(request, stream=True)) as response:
                yield response
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise _failure(exc, deadline) from exc


@functools.lru_cache(maxsize=4)
def _tls_context(cafile: str) -> ssl.SSLContext:
    """httpx's default verifying context, built once per trust store: building one takes ~18 ms, more
    than a whole webhook POST to a fast receiver. Shared by all requests (SSLContext is thread-safe);
    SNI and the hostname check stay per request."""
    return ssl.create_default_context(cafile=cafile)  # what httpx builds with trust_env=False


def _headers(response: httpx.Response) -> dict[str, str]:
    return {name.lower(): value for name, value in response.headers.items()}


def _read_body(response: httpx.Response, limit: int, deadline: _Deadline, *, truncate: bool) -> bytes:
    """At most `limit` bytes of the body: cut (truncate) or refused with url_too_large."""
    declared = response.headers.get("content-length", "")
    if not truncate and declared.isdigit() and int(declared) > limit:
        raise EgressRefused("url_too_large", f"the response is larger than {limit} bytes")
    body = bytearray()
    for chunk in response.iter_bytes():
        deadline.remaining()  # a trickling body must not outlive the budget
        body += chunk
        if len(body) > limit and not truncate:
            raise EgressRefused("url_too_large", f"the response is larger than {limit} bytes")
        if len(body) >= limit and truncate:
            break
    # The watchdog's shutdown looks like a normal end to a body delimited by connection close.
    deadline.remaining()
    return bytes(body[:limit])


# ----------------------------------------------------------------------------- fetch / post


def _redirect_target(response: httpx.Response, current: httpx.URL) -> str | None:
    location = response.headers.get("location")
    if response.status_code not in REDIRECT_STATUSES or not location:
        return None
    try:
        return str(current.join(location))
    except (httpx.InvalidURL, TypeError, ValueError):
        raise EgressRefused("url_redirect_refused", "the redirect target is not a valid URL") from None


def _pin_hop(url: str, allowlist: Sequence[str], hop: int) -> tuple[httpx.URL, str]:
    try:
        return pin(url, allowlist)
    except EgressRefused as exc:
        if hop == 0:
            raise
        raise EgressRefused(exc.code, f"redirect refused: {exc.detail}") from None


def _same_origin(a: httpx.URL, b: httpx.URL) -> bool:
    return (a.scheme, a.raw_host, _port(a)) == (b.scheme, b.raw_host, _port(b))


def _too_many_redirects(max_redirects: int) -> EgressRefused:
    if max_redirects <= 0:
        return EgressRefused("url_redirect_refused", "redirects are not followed")
    return EgressRefused("url_redirect_refused", f"more than {max_redirects} redirects")


def _get_headers(headers: Mapping[str, str] | None) -> httpx.Headers:
    # identity: the size cap then applies to what travels, and no decompression bomb is unpacked.
    sent = httpx.Headers({"Accept-Encoding": "identity"})
    sent.update(headers or {})  # case-insensitive: a caller's accept-encoding replaces ours
    return sent


def fetch(
    url: str,
    *,
    max_bytes: int,
    timeout_s: float,
    allowlist: Sequence[str] = (),
    max_redirects: int = 3,
    headers: Mapping[str, str] | None = None,
) -> Fetched:
    """GET with the connection going to the pinned IP (never a second DNS lookup).

    Each redirect hop (301/302/303/307/308 with Location, relative to the current URL) is checked
    again with pin(); more than max_redirects (0: any redirect) -> url_redirect_refused. The body
    is streamed and cut: more than max_bytes (Content-Length is checked up front) ->
    url_too_large. A non-2xx final status -> url_http_status (the detail names the status).
    Connect errors -> url_unreachable, timeouts -> url_timeout. timeout_s is a TOTAL deadline
    for the whole fetch (connects, reads, all hops), enforced while streaming too.
    """
    sent = _get_headers(headers)
    current, hop = url, 0
    with _Deadline(timeout_s) as deadline:
        while True:
            target, ip = _pin_hop(current, allowlist, hop)
            deadline.remaining()  # resolution is outside the watchdog's reach: check what it took
            with _exchange("GET", target, ip, sent, None, deadline) as response:
                following = _redirect_target(response, target)
                if following is None:
                    return _final(response, target, ip, max_bytes, deadline)
            if hop >= max_redirects:
                raise _too_many_redirects(max_redirects)
            if not _same_origin(target, httpx.URL(following)):
                sent = httpx.Headers([(k, v) for k, v in sent.multi_items() if k not in _ORIGIN_BOUND_HEADERS])
            current, hop = following, hop + 1


def _final(response: httpx.Response, target: httpx.URL, ip: str, max_bytes: int, deadline: _Deadline) -> Fetched:
    if not response.is_success:
        raise EgressRefused("url_http_status", f"the URL answered with HTTP status {response.status_code}")
    body = _read_body(response, max_bytes, deadline, truncate=False)
    return Fetched(response.status_code, _headers(response), body, str(target), ip)


def post(
    url: str,
    *,
    content: bytes,
    headers: Mapping[str, str],
    timeout_s: float,
    allowlist: Sequence[str] = (),
    max_response_bytes: int = 2048,
) -> Fetched:
    """POST for webhooks: see `upload`."""
    return upload(
        "POST",
        url,
        content=content,
        headers=headers,
        timeout_s=timeout_s,
        allowlist=allowlist,
        max_response_bytes=max_response_bytes,
    )


def upload(
    method: str,
    url: str,
    *,
    content: bytes,
    headers: Mapping[str, str],
    timeout_s: float,
    allowlist: Sequence[str] = (),
    max_response_bytes: int = 2048,
) -> Fetched:
    """POST (webhooks) or PUT (DAM push): pinned, NO redirects followed (a 3xx comes back as a Fetched
    with its status, not raised: re-sending a body elsewhere is the receiver's job, not ours), with at
    most max_response_bytes of the body. Raises EgressRefused only for a refused URL, an unreachable
    host or the timeout (a total deadline, as in fetch).
    """
    if method not in ("POST", "PUT"):
        raise ValueError(f"method must be POST or PUT, not {method!r}")
    with _Deadline(timeout_s) as deadline:
        target, ip = pin(url, allowlist)
        with _exchange(method, target, ip, headers, content, deadline) as response:
            body = _read_body(response, max_response_bytes, deadline, truncate=True)
            return Fetched(response.status_code, _headers(response), body, str(target), ip)
