"""HTML responses of the review page: Jinja2 templates (autoescaped), CSS and JS inlined under a
per-response nonce, and the security headers every page carries."""

from __future__ import annotations

import secrets
from functools import cache
from importlib import resources
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from starlette.responses import HTMLResponse

from services.gateway.review_page.page import who

_PACKAGE = "services.gateway.review_page"


@cache
def _env() -> Environment:
    env = Environment(
        loader=PackageLoader(_PACKAGE, "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["who"] = who
    return env


@cache
def static(name: str) -> str:
    """An inline asset (no CDN, no web font: the page works offline)."""
    return resources.files(_PACKAGE).joinpath("static", name).read_text(encoding="utf-8")


def security_headers(nonce: str, image_origins: set[str] | frozenset[str] = frozenset()) -> dict[str, str]:
    """CSP with a nonce for the one inline style and script; images from here and the object store.
    no-referrer and no-store: the URL carries the review token."""
    images = " ".join(["'self'", *sorted(image_origins)])
    csp = (
        f"default-src 'self'; img-src {images}; style-src 'nonce-{nonce}'; script-src 'nonce-{nonce}'; "
        "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    )
    return {
        "Content-Security-Policy": csp,
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }


def page(
    template: str, status: int, context: dict[str, Any], image_origins: set[str] | frozenset[str] = frozenset()
) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    body = (
        _env().get_template(template).render(**context, nonce=nonce, css=static("review.css"), js=static("review.js"))
    )
    return HTMLResponse(body, status_code=status, headers=security_headers(nonce, image_origins))


def error_page(status: int, title: str, message: str, code: str) -> HTMLResponse:
    """A clear page for what went wrong and what to do next (never a stack trace); `code` is the stable
    problem code, shown small for whoever the reviewer asks for help."""
    return page("error.html", status, {"status": status, "title": title, "message": message, "code": code})
