"""Early rejection of webhook URLs that point into our own network.

Only literal hosts are checked here (localhost, loopback/private/link-local IPs): a name
can resolve differently at delivery time, so the webhook sender must check the resolved
address again. This just turns an obvious mistake or probe into a 422 at creation.
"""
from __future__ import annotations

import ipaddress
from typing import Annotated

from pydantic import HttpUrl, UrlConstraints

from services.gateway.errors import validation_problem
from shared.config import Settings

# http(s) only; 2000 is the width of the url columns.
WebhookUrl = Annotated[HttpUrl, UrlConstraints(max_length=2000)]


def _internal(host: str) -> bool:
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return not address.is_global


def check_target(url: HttpUrl, field: str, settings: Settings) -> None:
    if settings.webhook_allow_loopback or not _internal(url.host or ""):
        return
    raise validation_problem([{"loc": ("body", field), "msg": "Webhook URL must not target a loopback or "
                               "private address", "type": "value_error"}])
