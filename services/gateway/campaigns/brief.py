"""A campaign created without a brief: the request's rule and the inferred brief as the resource shows it.

The brief is inferred by the decompose stage (workers/pipeline/brief.py) from the campaign's product
assets and the brand's best past campaigns by reviewer approval rate; it is written to
campaign.state["brief_inferred"], which the gateway sets to {"status": "pending"} at creation.
"""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, Field

from services.gateway.errors import ProblemError

STATE_KEY = "brief_inferred"  # the key workers/pipeline/brief.py writes (the gateway never imports workers)
BRIEF_OR_PRODUCT_REQUIRED = "brief_or_product_required"


def pending_state(brief: str | None) -> dict[str, Any]:
    """A new campaign's state: the inferred brief pending when there is no brief to read."""
    return {} if brief else {STATE_KEY: {"status": "pending"}}


def check_inferable(brief: str | None, product_asset_ids: list[uuid.UUID]) -> None:
    """Without a brief the products are all there is to infer it from (and nothing would be retrieved)."""
    if not brief and not product_asset_ids:
        raise ProblemError(
            422,
            BRIEF_OR_PRODUCT_REQUIRED,
            "Brief or product required",
            "A campaign without a brief infers it from its products: give a brief or at least one product_asset_ids.",
            extra={"field": "brief"},
        )


class CopySuggestions(BaseModel):
    headline: str
    cta: str
    shown_only: bool = Field(
        description="The campaign has its own copy: the suggestions are only shown, never used in its place."
    )


class BriefInferred(BaseModel):
    """What the pipeline ran on instead of a brief. A reviewer replaces it by sending feedback with a `brief`."""

    status: Literal["pending", "inferred"] = Field(description="pending until the decompose stage has run.")
    brief: str | None = Field(None, description="The brief the pipeline read, composed from the parts below.")
    products: list[str] = Field(default_factory=list, description="What the brief calls each product.")
    scene: str | None = None
    theme: str | None = None
    mood: str | None = None
    copy_suggestions: CopySuggestions | None = None
    sources: dict[str, Any] = Field(
        default_factory=dict,
        description="Where each part came from: product:<asset id>:<field>, past_campaign:<id> or default; "
        "products (the fields each name used), ranking (how past campaigns were scored: approval_rate, the "
        "reviewers' approved share of their decided results) and past_campaigns (the best, with their scores).",
    )
    backend: str | None = Field(None, description="local | openai | bedrock | rules: what inferred it.")
    model: str | None = None
    fallback_reason: str | None = Field(None, description="Why the rules composer stood in for the model.")
    prompt_version: str | None = None
