"""workers.warmup: what a pool process loads at start, per queue, so that no campaign task pays a first load."""

from __future__ import annotations

from shared.config import Settings
from shared.stages import STAGES
from workers import warmup

CPU = {"llm", "retrieval", "scoring", "webhooks"}
GPU = {"segment", "generate", "qc"}


def names(queues: set[str], **settings: object) -> list[str]:
    return [step.name for step in warmup.steps(queues, Settings(**settings))]  # type: ignore[arg-type]


def test_every_stage_of_the_workers_queues_is_imported() -> None:
    for queues in (CPU, GPU):
        expected = {f"{s.name} stage module" for s in STAGES if s.queue in queues}
        assert expected and expected <= set(names(queues))
    assert "qc stage module" not in names(CPU) and "decompose stage module" not in names(GPU)


def test_the_llm_queue_loads_the_local_llm_decompose_uses() -> None:
    assert "local LLM" in names(CPU, llm_backend="local")
    assert "local LLM" in names(CPU, llm_backend="rules", llm_stage_backends={"decompose": "local"})
    # scale and the guideline check fall back to classical code with a text-only model: no LLM for them
    assert "local LLM" not in names(CPU, llm_backend="rules", llm_stage_backends={"scale": "local"})
    assert "local LLM" not in names(GPU, llm_backend="local")


def test_ocr_torch_and_pixel_models_where_their_stages_run() -> None:
    gpu, cpu = names(GPU), names(CPU)
    assert {"OCR reader", "MS-SSIM (torch)", "segment model (matting)", "generate model (compositor)"} <= set(gpu)
    assert {"OCR reader", "text embedder", "rank model (classical)"} <= set(cpu)  # deliver reads creatives back
    assert "MS-SSIM (torch)" not in cpu and "text embedder" not in gpu
    assert names(GPU)[0] == names(CPU)[0] == "database connection"
    assert "prompt tokenizer" in names(CPU, generator="sd-inpaint") and "prompt tokenizer" not in cpu


def test_a_failing_step_is_reported_and_the_rest_still_run() -> None:
    ran: list[str] = []

    def broken() -> None:
        raise OSError("weights missing")

    done = warmup.run(
        [warmup.Step("broken", broken), warmup.Step("fine", lambda: ran.append("fine"))],
    )
    assert [(d.name, d.ok) for d in done] == [("broken", False), ("fine", True)]
    assert ran == ["fine"] and all(d.seconds >= 0 for d in done)
