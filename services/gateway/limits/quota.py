"""The tenant's quotas at campaign creation, as problem responses (the creation itself: campaigns/insert.py)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from services.gateway.errors import ProblemError
from shared import limits


@contextmanager
def refusals() -> Iterator[None]:
    """A commit the quotas refused, as its problem: over the concurrent limit 429 concurrent_campaigns_limit (it
    frees up as campaigns finish); over an images quota 402 quota_exceeded with the period and its reset (it frees
    up only when the period ends). Nothing of the request was written."""
    try:
        yield
    except psycopg.Error as exc:  # the creation's commit (shared.db.aio.write)
        refused = limits.refusal(exc)
        if refused is None:
            raise
        if refused.code == "concurrent_campaigns_limit":
            raise ProblemError(
                429, refused.code, "Too many running campaigns", refused.detail, extra=refused.extra
            ) from exc
        raise ProblemError(402, refused.code, "Quota exceeded", refused.detail, extra=refused.extra) from exc
