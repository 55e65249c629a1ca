"""Brand request and response bodies."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StringConstraints,
    ValidationError,
    field_validator,
)

from shared.db.models import DamPushPolicy
from shared.qc import DEFAULT_UNCHECKED, UNCHECKED_DOC, QcThresholds, UncheckedPolicy

# Upper-cased on the way in so "#ff0000" and "#FF0000" are one colour everywhere downstream.
HexColor = Annotated[str, StringConstraints(pattern=r"^#[0-9A-Fa-f]{6}$"), AfterValidator(str.upper)]


Term = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=r"^[^\x00-\x1f]+$")
]


class Guideline(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
    flexible: bool = Field(
        default=False, strict=True, description="Flexible rules may fail QC under the flexible/weighted policies."
    )
    weight: float = Field(
        default=1.0, ge=0, le=100, allow_inf_nan=False, strict=True, description="Weight under the weighted policy."
    )


THRESHOLDS_DOC = "Overrides of the QC limits for this brand's campaigns (unset keys keep the defaults): " + ", ".join(
    f"{k} ({f.description})" for k, f in QcThresholds.model_fields.items()
)


DAM_PUSH_DOC = (
    "When results go to the brand's delivery targets: on_completion (every result, when the campaign completes) "
    "or on_approval (only approved results, once a reviewer has decided every result of the review round)."
)


def _overrides(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """Only known keys, each within its bounds, and the ranges still ranges once merged with the defaults."""
    if value is not None:
        try:
            QcThresholds(**value)
        except ValidationError as exc:  # one 422 naming each bad key and its bound
            problems = [f"{'.'.join(map(str, e['loc'])) or 'qc_thresholds'}: {e['msg']}" for e in exc.errors()]
            raise ValueError("; ".join(problems)) from None
    return value


class BrandCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    palette: list[HexColor] = Field(default_factory=list, max_length=64, description='["#RRGGBB", ...]')
    guidelines: list[Guideline] = Field(default_factory=list, max_length=100)
    forbidden_terms: list[Term] = Field(
        default_factory=list,
        max_length=200,
        description="Words never written into a positive prompt (competitors, claims); they go to the negative one.",
    )
    qc_thresholds: dict[str, StrictFloat] = Field(default_factory=dict, description=THRESHOLDS_DOC)
    unchecked: UncheckedPolicy = Field(default=DEFAULT_UNCHECKED, description=UNCHECKED_DOC)
    dam_push: DamPushPolicy = Field(default=DamPushPolicy.ON_COMPLETION, description=DAM_PUSH_DOC)

    _check_thresholds = field_validator("qc_thresholds")(_overrides)


class BrandUpdate(BaseModel):
    """PATCH: only the fields given change; qc_thresholds replaces the brand's overrides as a whole."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)] | None = None
    palette: list[HexColor] | None = Field(default=None, max_length=64)
    guidelines: list[Guideline] | None = Field(default=None, max_length=100)
    forbidden_terms: list[Term] | None = Field(default=None, max_length=200)
    qc_thresholds: dict[str, StrictFloat] | None = Field(default=None, description=THRESHOLDS_DOC)
    unchecked: UncheckedPolicy | None = Field(default=None, description=UNCHECKED_DOC)
    dam_push: DamPushPolicy | None = Field(default=None, description=DAM_PUSH_DOC)

    _check_thresholds = field_validator("qc_thresholds")(_overrides)


class BrandRead(BaseModel):
    id: uuid.UUID
    name: str
    palette: list[str]
    guidelines: list[Guideline]
    forbidden_terms: list[str]
    qc_thresholds: dict[str, float]
    unchecked: UncheckedPolicy = Field(description=UNCHECKED_DOC)
    dam_push: DamPushPolicy = Field(description=DAM_PUSH_DOC)
    created_at: datetime
