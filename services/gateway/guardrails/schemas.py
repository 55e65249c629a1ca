"""Input guardrails in the API: which screens ran on a resource, and the tenant's blocked terms."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

BlockedTerm = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=r"^[^\x00]*$")
]


class Screening(BaseModel):
    text: str = Field(
        description="What screened the text: `blocklist` (blocked terms only), `blocklist + <backend>`, or why a "
        "configured backend did not (failing open)."
    )
    images: str = Field(
        description="What screened the image(s): a backend name, or `not screened: ...` with the reason."
    )


class BlockedTerms(BaseModel):
    model_config = ConfigDict(extra="forbid")

    blocked_terms: list[BlockedTerm] = Field(
        max_length=1000,
        description="Refused in this tenant's briefs, brand names and guidelines and asset metadata: whole words, "
        "case, accents and leetspeak folded; a trailing `*` matches word prefixes.",
    )


class GuardrailsRead(BlockedTerms):
    global_terms: int = Field(description="How many global blocked terms (built-in and the operator's) apply too.")
    text_backend: str = Field(description="Hosted text moderation after the blocked terms (`none`: blocklist only).")
    image_backend: str = Field(description="Hosted image moderation of uploads (`none`: images are not screened).")
    on_error: dict[str, str] = Field(description="What a failing backend means, per kind: `closed` (503) or `open`.")
