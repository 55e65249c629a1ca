"""What a pool process loads when it starts (ONBRAND_WARM_MODELS), so that no task of a campaign pays a model
load or a heavy first import: for every stage routed to one of the worker's queues, its module, the heavy
libraries it imports only inside functions, and the models it uses with the current settings.

Each step names what it loads and is timed; a step that fails is logged and skipped (the task that needs it
fails loudly later, with the stage's own error), never the worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import get_args

from shared.config import LlmStage, Settings
from shared.model_specs import aesthetic_spec, fidelity_spec, generate_spec, segment_spec
from shared.stages import STAGES

log = logging.getLogger("onbrand")

# The language steps that ask a local LLM for text: all but scale and the guideline check, which fall back to
# classical code with a text-only model.
LOCAL_LLM_STAGES: tuple[LlmStage, ...] = tuple(s for s in get_args(LlmStage) if s not in ("scale", "guideline"))
OCR_QUEUES = frozenset({"qc", "scoring"})  # qc: the text-artefact check and creatives; deliver reads creatives back


@dataclass(frozen=True)
class Step:
    name: str
    run: Callable[[], object]


@dataclass(frozen=True)
class Done:
    name: str
    seconds: float
    ok: bool


def steps(queues: set[str], settings: Settings) -> list[Step]:
    """Everything the stages on `queues` would load on first use, models last (imports make them cheaper)."""
    found = [Step("database connection", _database), Step("engine statements", _engine_statements)]
    found.append(Step("metric series", lambda: metric_series(queues)))
    found.append(Step("GPU pool read", lambda: _gpu_pool(settings)))
    found += [Step(f"{s.name} stage module", _stage_module(s.name)) for s in STAGES if s.queue in queues]
    if any(s.queue in queues for s in STAGES if s.name in FINALIZED):
        found.append(Step("rank and deliver finishes", _finishes))
    if "qc" in queues:
        found.append(Step("MS-SSIM (torch)", _msssim))
    if "llm" in queues and any(settings.for_stage(s).llm_backend == "local" for s in LOCAL_LLM_STAGES):
        found.append(Step("local LLM", lambda: _llm(settings)))
    if "llm" in queues and settings.generator == "sd-inpaint":
        found.append(Step("prompt tokenizer", lambda: _prompt_tokenizer(settings)))
    if "retrieval" in queues:
        found += _retrieval(settings)
    if queues & OCR_QUEUES:
        found.append(Step("OCR reader", _ocr))
    return found + _pixel_models(queues, settings)


def run(steps_: list[Step]) -> list[Done]:
    done = []
    for step in steps_:
        started, ok = time.perf_counter(), True
        try:
            step.run()
        except Exception:  # a broken model must fail the task that needs it, loudly, not the worker
            ok = False
            log.exception("warm-up: %s failed", step.name)
        done.append(Done(step.name, time.perf_counter() - started, ok))
    return done


def _database() -> None:
    """A pooled connection, so that the first claim does not open one."""
    from sqlalchemy import text

    from shared.db.session import session_scope

    with session_scope() as session:
        session.execute(text("SELECT 1"))


def _engine_statements() -> None:
    """The claim's, finish's and dispatcher's statements compiled, so that the first tasks do not compile them."""
    from workers.engine import warm

    warm.statements()


# The stages whose function hands the engine a finalize (its finish runs stage code: workers.engine.warm.finishes)
FINALIZED = frozenset({"rank", "deliver"})
TASK_OUTCOMES = ("success", "failure", "retry")  # Celery's states, as workers.observability labels them


def metric_series(queues: set[str]) -> None:
    """The metric series a task of these queues observes, created at 0. A series' first use in a pool process writes
    a value per bucket into the process's file (multiprocess mode): ~75 of them in its first campaign, ~25 ms under
    the profiler, inside the stage tasks' CPU (the engine phases, the queue wait, the GPU dispatcher's wait)."""
    from shared import metrics
    from shared.queue import GPU_STAGES, TASK_QUEUES
    from workers.engine.runner import STAGE_OUTCOMES

    for row in STAGES:
        if row.queue not in queues:
            continue
        metrics.STAGE_CPU.labels(row.name)
        for outcome in STAGE_OUTCOMES:
            metrics.STAGE_DURATION.labels(row.name, outcome)
        for phase in metrics.ENGINE_PHASES:
            metrics.ENGINE_CPU.labels(row.name, phase)
            metrics.ENGINE_DURATION.labels(row.name, phase)
    for task, queue in TASK_QUEUES.items():
        if queue in queues:
            metrics.TASK_CPU.labels(task)
            metrics.TASK_QUEUE_WAIT.labels(task)
            for outcome in TASK_OUTCOMES:
                metrics.TASK_DURATION.labels(task, outcome)
    for name in GPU_STAGES:  # any finish may run the dispatcher
        metrics.GPU_DISPATCH_WAIT.labels(name)


def _gpu_pool(settings: Settings) -> None:
    """The dispatcher's read of the GPU pool (Redis), which any finish may run: its client and connection made, and
    redis-py's one-time work on a process's first connection (its version read from the package metadata: ~4 ms of
    CPU under the profiler, in the first finish that dispatched)."""
    from workers.engine import gpu_pool

    gpu_pool.capacity(settings)


def _finishes() -> None:
    from workers.engine import warm

    warm.finishes()


def _stage_module(name: str) -> Callable[[], object]:
    def load() -> object:
        from workers.engine.runner import stage_function  # the runner's own resolution: the task finds it loaded

        return stage_function(name)

    return load


def _msssim() -> None:
    """One MS-SSIM call: torch's import and its first kernel run (QC's fidelity check runs it per candidate)."""
    import numpy as np

    from workers.models import msssim

    grey = np.zeros((192, 192), np.float32)  # each side > 160 px: its 5 scales
    msssim.ms_ssim(grey, grey)


def _llm(settings: Settings) -> None:
    """The weights, then two greedy tokens: torch's first forward pass costs a campaign's decompose ~1 s more."""
    from workers.models import llm_local

    llm_local.load(settings)
    llm_local.fill("Answer in JSON.", "Say ok.", '{"answer": "', 2, settings=settings)


def _prompt_tokenizer(settings: Settings) -> None:
    from workers.models import prompt_tokenizer

    prompt_tokenizer.load(generate_spec(settings).source)


def _retrieval(settings: Settings) -> list[Step]:
    from workers.models import text_embedder

    found = [Step("text embedder", lambda: text_embedder.load(settings))]
    if settings.image_embedding_model:
        from workers.models import clip_embedder

        found.append(Step("image-text embedder (CLIP)", lambda: clip_embedder.load(settings)))
    return found


def _ocr() -> None:
    """The reader and one reading: rapidocr creates its onnxruntime sessions on first use, not when it is built."""
    import numpy as np
    from PIL import Image, ImageDraw

    from workers.models import ocr

    card = Image.new("RGB", (240, 64), "white")
    ImageDraw.Draw(card).text((12, 20), "Warm up 42", fill="black")
    reader = ocr.load()
    reader.read(np.asarray(card))
    reader.characters()


def _pixel_models(queues: set[str], settings: Settings) -> list[Step]:
    """Segmenter, generator, DINOv2 and the aesthetic scorer of the GPU (and scoring) queues; every task then reuses
    them (the adapters cache per process)."""
    from workers.models import registry

    wanted = {
        "segment": segment_spec(settings),
        "generate": generate_spec(settings),
        "qc": fidelity_spec(settings),
        "scoring": aesthetic_spec(settings),
    }
    return [
        Step(f"{spec.stage} model ({spec.adapter})", lambda spec=spec: registry.load(spec))  # type: ignore[misc]
        for queue, spec in wanted.items()
        if queue in queues and spec is not None
    ]
