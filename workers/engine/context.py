"""What a stage function gets and gives: its context, its typed outputs, and the one error it may raise."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.db.models import Base, Campaign

Task = tuple[str, str, int, int]  # (task name, campaign or row id, round, item)
O = TypeVar("O", bound="StageOutput")


class StageError(Exception):
    """A stage cannot do its job for this campaign (bad input, nothing to work with). Not retried."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


class StageOutput(BaseModel):
    """What a stage publishes for the stages after it: stored under its stage name in campaign.state."""

    model_config = ConfigDict(extra="forbid")
    stage: ClassVar[str]


@dataclass
class StageContext:
    campaign: Campaign  # a detached snapshot taken at claim time
    stage: str
    round: int
    item: int
    settings: Settings
    state_patch: dict[str, Any] = field(default_factory=dict)  # merged into campaign.state at finish
    rows: list[Base] = field(default_factory=list)  # merged (upsert by primary key) at finish
    batches: int | None = None  # set by a stage whose successors fan out per batch (plan)
    # Runs inside the finish transaction (campaign row locked): for terminal state changes.
    finalize: Callable[[Session, Campaign], list[Task]] | None = None

    @property
    def tenant_id(self) -> uuid.UUID:
        return self.campaign.tenant_id

    def publish(self, output: StageOutput) -> None:
        self.state_patch[output.stage] = output.model_dump(mode="json")

    def output(self, kind: type[O]) -> O:
        """An earlier stage's output, validated; a missing one fails the stage (it cannot run without it)."""
        value = (self.campaign.state or {}).get(kind.stage)
        if value is None:
            raise StageError("missing_state", f"stage {self.stage} needs the output of {kind.stage}, which is missing")
        return kind.model_validate(value)


StageFn = Callable[[StageContext], dict[str, Any]]


def now() -> datetime:
    return datetime.now(UTC)
