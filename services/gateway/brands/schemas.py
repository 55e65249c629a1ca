"""Brand request and response bodies."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

# Upper-cased on the way in so "#ff0000" and "#FF0000" are one colour everywhere downstream.
HexColor = Annotated[str, StringConstraints(pattern=r"^#[0-9A-Fa-f]{6}$"), AfterValidator(str.upper)]


Term = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100,
                                        pattern=r"^[^\x00-\x1f]+$")]


class Guideline(BaseModel):
    model_config = ConfigDict(extra="forbid")

    text: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=2000)]
    flexible: bool = Field(False, description="Flexible rules may fail QC under the flexible/weighted policies.")
    weight: float = Field(1.0, ge=0, le=100, allow_inf_nan=False, description="Weight under the weighted policy.")


class BrandCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    palette: list[HexColor] = Field(default_factory=list, max_length=64, description='["#RRGGBB", ...]')
    guidelines: list[Guideline] = Field(default_factory=list, max_length=100)
    forbidden_terms: list[Term] = Field(
        default_factory=list, max_length=200,
        description="Words never written into a positive prompt (competitors, claims); they go to the negative one.")


class BrandRead(BaseModel):
    id: uuid.UUID
    name: str
    palette: list[str]
    guidelines: list[Guideline]
    forbidden_terms: list[str]
    created_at: datetime
