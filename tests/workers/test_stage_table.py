"""The stage table (shared/stages.py) is the only place a stage is defined: one row per stage, each row's
function is its module's run(), every stage module has a row, and no other module lists stage names."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest
from celery import Celery

from shared import queue, stages
from shared.stages import STAGES, FanOut, Stage
from workers.engine.runner import stage_function

ROOT = Path(__file__).resolve().parents[2]
NAMES = {s.name for s in STAGES}


def test_each_stage_has_exactly_one_row_and_every_successor_is_a_stage() -> None:
    assert len(NAMES) == len(STAGES)
    stages.check_table()
    duplicated = (*STAGES, Stage("qc", "qc", "workers.pipeline.qc:run", next="rank"))
    with pytest.raises(ValueError, match="more than one row"):
        stages.check_table(duplicated)
    dangling = (Stage("decompose", "llm", "workers.pipeline.decompose:run", next="nowhere"),)
    with pytest.raises(ValueError, match="nowhere"):
        stages.check_table(dangling)


def test_routing_tasks_and_functions_derive_from_the_table(worker_app: Celery) -> None:
    for row in STAGES:
        assert queue.TASK_QUEUES[row.task] == row.queue
        assert worker_app.tasks[row.task].name == row.task
        fn = stage_function(row.name)
        assert fn.__module__ == f"workers.pipeline.{row.name}" and fn.__name__ == "run"
        assert list(inspect.signature(fn).parameters) == ["ctx"]  # every stage: the same signature
    assert stages.PIPELINE == tuple(s.name for s in STAGES)
    assert {s.name for s in STAGES if s.fan_out is FanOut.BATCHES} == {"generate", "qc"}


def test_every_stage_module_has_a_row() -> None:
    # shared helpers, and parts of one stage kept apart: brief (decompose), overlay (qc), credentials (deliver)
    support = {"__init__", "common", "outputs", "brief", "overlay", "credentials"}
    modules = {p.stem for p in (ROOT / "workers" / "pipeline").glob("*.py")} - support
    assert modules == NAMES


def _stage_tables(tree: ast.AST) -> list[int]:
    """Lines of literal collections (tuple, list, set, dict keys) naming three or more stages."""
    found = []
    for node in ast.walk(tree):
        items = node.keys if isinstance(node, ast.Dict) else getattr(node, "elts", None)
        if not isinstance(node, ast.Tuple | ast.List | ast.Set | ast.Dict) or items is None:
            continue
        named = {i.value for i in items if isinstance(i, ast.Constant) and i.value in NAMES}
        if len(named) >= 3:
            found.append(node.lineno)
    return found


# Collections of the same strings that are not stage lists: three GPU queues share their stage's name.
NOT_STAGE_LISTS = {
    "shared/queue.py": "GPU_QUEUES: queue names",
    "workers/warmup.py": "models warmed per queue name",
    "shared/config.py": "LlmStage: the steps with language-model settings (guideline included)",
}


def test_no_module_but_the_table_lists_stages() -> None:
    offenders = {}
    for package in ("shared", "services", "workers"):
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            lines = _stage_tables(ast.parse(path.read_text()))
            if lines and rel != "shared/stages.py":
                offenders[rel] = len(lines)
    assert offenders == dict.fromkeys(NOT_STAGE_LISTS, 1)
    # The scan sees a table when there is one (it is not looking at nothing).
    assert _stage_tables(ast.parse('NEXT = {"plan": 1, "generate": 2, "qc": 3}'))
    assert _stage_tables(ast.parse(Path(stages.__file__).read_text())) == []  # rows are calls, not names
