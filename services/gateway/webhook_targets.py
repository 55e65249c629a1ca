"""Early rejection of client-given URLs (webhooks, DAM push) that point into our own network.

Only literal hosts are checked here (localhost, loopback/private/link-local IPs, IPv6 forms
wrapping them): a name can resolve differently at delivery time, so the webhook sender checks
the resolved address again (shared.egress). This just turns an obvious mistake or probe into a
422 at creation. ONBRAND_EGRESS_ALLOWLIST lets development point webhooks at a local receiver.
"""

from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import HttpUrl, UrlConstraints

from services.gateway.errors import validation_problem
from shared.config import Settings
from shared.egress import permitted

# http(s) only; 2000 is the width of the url columns.
WebhookUrl = Annotated[HttpUrl, UrlConstraints(max_length=2000)]


def _literal_address(host: str) -> str | None:
    """The address a literal host names without DNS, or None for an ordinary host name."""
    if host == "localhost" or host.endswith(".localhost"):
        return "127.0.0.1"  # RFC 6761: resolvers answer loopback for these
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _refused(host: str, settings: Settings) -> bool:
    host = host.strip("[]").rstrip(".").lower()
    address = _literal_address(host)
    return address is not None and not permitted(host, address, settings.egress_allowlist)


def check_target(url: HttpUrl, loc: str | tuple[str | int, ...], settings: Settings, what: str = "Webhook URL") -> None:
    """422 naming the field (`loc` below "body") when the URL's literal host is ours to refuse."""
    if not _refused(url.host or "", settings):
        return
    path = (loc,) if isinstance(loc, str) else loc
    raise validation_problem(
        [
            {
                "loc": ("body", *path),
                "msg": f"{what} must not target a loopback or private address",
                "type": "value_error",
            }
        ]
    )
