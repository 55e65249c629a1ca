"""CSRF for the review page's forms: a double-submit token bound to the review link.

GET sets a random `onbrand_csrf` cookie (HttpOnly, SameSite=Strict, scoped to /review/) and puts
HMAC(secret_key, cookie + link id) in every form. A POST must carry both and they must match: a foreign
site can make the browser send the cookie (SameSite aside) but can neither read it nor forge its HMAC.
The Origin header, when the browser sends one, must be this gateway's.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from shared.config import Settings

COOKIE = "onbrand_csrf"
COOKIE_PATH = "/review/"
FIELD = "csrf"
_COOKIE_SHAPE = re.compile(r"^[A-Za-z0-9_-]{32,64}$")


class CsrfError(Exception):
    """A write the page must refuse (403): why, in words for the reviewer."""


def cookie_value(request: Request) -> str:
    """The browser's CSRF cookie when it has a well-formed one, else a new random value."""
    current = request.cookies.get(COOKIE, "")
    return current if _COOKIE_SHAPE.match(current) else secrets.token_urlsafe(32)


def form_token(settings: Settings, cookie: str, link_id: uuid.UUID) -> str:
    message = f"review-csrf:{cookie}:{link_id.hex}".encode()
    return hmac.new(settings.secret_key.encode(), message, hashlib.sha256).hexdigest()


def set_cookie(response: Response, settings: Settings, cookie: str) -> None:
    secure = settings.public_url.startswith("https://")
    response.set_cookie(
        COOKIE, cookie, path=COOKIE_PATH, httponly=True, samesite="strict", secure=secure, max_age=7 * 24 * 3600
    )


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def check_origin(request: Request, settings: Settings) -> None:
    """Refuse a cross-site POST: Origin (sent by every current browser on POST) must be this gateway's,
    as the public URL names it or as the request reached it."""
    origin = request.headers.get("origin")
    if origin is None:
        return  # old browsers and non-browser clients: the token check below still applies
    allowed = {_origin(settings.public_url), _origin(str(request.base_url))}
    if origin.lower() not in allowed:
        raise CsrfError("This form was sent from another site, so it was refused.")


def check(request: Request, settings: Settings, link_id: uuid.UUID, token: str | None) -> None:
    """The form's token must be the HMAC of the browser's cookie and this link."""
    check_origin(request, settings)
    cookie = request.cookies.get(COOKIE, "")
    if not cookie or not _COOKIE_SHAPE.match(cookie) or not token:
        raise CsrfError("The form's security token is missing (cookies may be blocked). Reload the page and retry.")
    if not hmac.compare_digest(token, form_token(settings, cookie, link_id)):
        raise CsrfError("The form's security token does not match. Reload the page and retry.")
