"""The pipeline's stages in one declarative table.

Everything else is derived from it: Celery routing (``shared.queue``), the worker's task per stage
and the function it runs (``workers.tasks``), the runner's successors and fan-out
(``workers.engine.flow``), and the stage list of the campaign resource and its progress. Adding a
stage is one module under ``workers/pipeline/`` (exposing ``run(ctx)``) plus one row here.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum


class FanOut(StrEnum):
    """How many items (tasks) a stage runs per round; the successor starts when all have succeeded."""

    ONE = "one"
    BATCHES = "batches"  # one item per generate batch of the round's plan


@dataclass(frozen=True)
class Stage:
    name: str
    queue: str
    function: str  # "module:attribute" of the stage function, resolved by the worker (shared never imports workers)
    next: str | None  # the successor once every item succeeded; None: the stage ends the campaign itself
    fan_out: FanOut = FanOut.ONE
    # Too few results after this stage: run `retry` again (same caption, product smaller) up to the
    # campaign's max_retry_attempts, then `revise` up to max_prompt_revisions, then `next` with what passed.
    retry: str | None = None
    revise: str | None = None

    @property
    def task(self) -> str:
        return f"onbrand.{self.name}"


STAGES: tuple[Stage, ...] = (
    Stage("decompose", "llm", "workers.pipeline.decompose:run", next="retrieve"),
    Stage("retrieve", "retrieval", "workers.pipeline.retrieve:run", next="caption"),
    Stage("caption", "llm", "workers.pipeline.caption:run", next="segment"),
    Stage("segment", "segment", "workers.pipeline.segment:run", next="scale"),
    # A hosted vision call or a table lookup: no GPU.
    Stage("scale", "llm", "workers.pipeline.scale:run", next="plan"),
    Stage("plan", "segment", "workers.pipeline.plan:run", next="generate"),
    Stage("generate", "generate", "workers.pipeline.generate:run", next="qc", fan_out=FanOut.BATCHES),
    Stage("qc", "qc", "workers.pipeline.qc:run", next="rank", fan_out=FanOut.BATCHES),
    Stage("rank", "scoring", "workers.pipeline.rank:run", next="deliver", retry="plan", revise="revise"),
    # A new caption may change the product's size on the canvas: scale again.
    Stage("revise", "llm", "workers.pipeline.revise:run", next="scale"),
    Stage("deliver", "scoring", "workers.pipeline.deliver:run", next=None),
)

BY_NAME: dict[str, Stage] = {stage.name: stage for stage in STAGES}
# Stage runs, the campaign resource's stage list and webhook events use these names, in this order.
PIPELINE: tuple[str, ...] = tuple(BY_NAME)
FIRST: Stage = STAGES[0]


def stage(name: str) -> Stage:
    try:
        return BY_NAME[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}") from None


def check_table(stages: tuple[Stage, ...] = STAGES) -> None:
    """Every successor names a stage of the table, and each name has exactly one row."""
    names = [s.name for s in stages]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"stages with more than one row: {duplicated}")
    for row in stages:
        for field in ("next", "retry", "revise"):
            target = getattr(row, field)
            if target is not None and target not in names:
                raise ValueError(f"stage {row.name!r}: {field}={target!r} is not a stage")


def main_path(stages: tuple[Stage, ...] = STAGES) -> tuple[str, ...]:
    """The stages every campaign runs: the first row and its `next` chain (the loop's revise is not on it)."""
    by_name, path = {s.name: s for s in stages}, [stages[0].name]
    while (following := by_name[path[-1]].next) in by_name and following not in path:
        path.append(following)
    return tuple(path)


MAIN_PATH: tuple[str, ...] = main_path()


def progress(finished: Collection[str], *, terminal: bool) -> float:
    """Share of this campaign's stages that have finished: 1.0 once it is terminal (what never ran never
    will), else over the main path plus any loop stage that has finished (revise counts once it ran), so a
    campaign that needs no revision reaches 1.0 and a revision never moves progress back."""
    if terminal:
        return 1.0
    done = set(finished) & set(PIPELINE)
    return round(len(done) / len(set(MAIN_PATH) | done), 4)


check_table()
