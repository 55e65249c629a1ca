"""The hosted LLM backend a deployment configured (ONBRAND_LLM_BACKEND=openai|bedrock), and the
call record every stage keeps for each completion (backend, model, latency, tokens, cost)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel

from shared.config import Settings
from workers.models.llm_api import ChatBackend, Completion, ImagePart, Message, complete_json, estimate_cost

HOSTED = ("openai", "bedrock")
T = TypeVar("T", bound=BaseModel)


def backend_for(settings: Settings) -> ChatBackend:
    if settings.llm_backend == "openai":
        from workers.models.llm_openai import OpenAIBackend, OpenAIConfig

        return OpenAIBackend(
            OpenAIConfig(
                base_url=settings.openai_base_url,
                model=settings.openai_model,
                api_key=settings.openai_api_key or None,
                vision=settings.openai_vision,
                temperature=settings.llm_temperature,
                timeout_s=settings.llm_timeout_seconds,
                max_attempts=settings.llm_max_attempts,
            )
        )
    if settings.llm_backend == "bedrock":
        from workers.models.llm_bedrock import BedrockBackend, BedrockConfig

        return BedrockBackend(
            BedrockConfig(
                model_id=settings.bedrock_model_id,
                region=settings.bedrock_region,
                endpoint_url=settings.bedrock_endpoint_url or None,
                top_p=settings.bedrock_top_p,
                temperature=settings.llm_temperature,
                timeout_s=settings.llm_timeout_seconds,
                max_attempts=settings.llm_max_attempts,
            )
        )
    raise ValueError(f"llm_backend must be one of {HOSTED} for a hosted backend, got {settings.llm_backend!r}")


def no_vision_reason(settings: Settings, instead: str) -> str | None:
    """Why this stage's backend cannot look at images (None when it can); `instead` says what runs."""
    backend = settings.llm_backend
    if backend in ("local", "rules"):
        return f"the {backend} backend cannot see images; {instead}"
    if backend == "openai" and not settings.openai_vision:
        return f"the openai model is text-only (ONBRAND_OPENAI_VISION=false); {instead}"
    return None


def image_part(image: Any, max_side: int = 768) -> ImagePart:
    """A PIL image as a message part, downscaled (vision models tile large images; cost grows with
    pixels): JPEG for opaque images, PNG when there is transparency to keep (a product cut-out)."""
    import io

    img = image.copy()
    img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    if img.mode in ("RGBA", "LA"):
        img.save(buf, format="PNG")
        return ImagePart(buf.getvalue(), "image/png")
    img.convert("RGB").save(buf, format="JPEG", quality=85)
    return ImagePart(buf.getvalue(), "image/jpeg")


def call_record(backend: ChatBackend, completion: Completion, attempt: str) -> dict[str, Any]:
    return {
        "backend": backend.name,
        "model": completion.model,
        "attempt": attempt,
        "latency_ms": round(completion.latency_ms, 1),
        "tokens_in": completion.usage.tokens_in,
        "tokens_out": completion.usage.tokens_out,
        "tries": completion.attempts,
        "cost_usd": estimate_cost(completion.model, completion.usage),
    }


def few_shot(system: str, examples: Sequence[tuple[str, str]], user: str) -> list[Message]:
    """A versioned prompt template as chat messages: system, example turns, the user turn."""
    messages = [Message("system", system)]
    for example_user, example_answer in examples:
        messages += [Message("user", example_user), Message("assistant", example_answer)]
    return [*messages, Message("user", user)]


def ask(
    backend: ChatBackend,
    messages: list[Message],
    schema: type[T],
    calls: list[dict[str, Any]],
    attempt: str,
    max_tokens: int = 512,
    temperature: float = 0.2,
) -> T:
    """complete_json, with every completion (a JSON repair included) appended to calls."""
    answer, completions = complete_json(backend, messages, schema, max_tokens=max_tokens, temperature=temperature)
    calls += [
        call_record(backend, c, attempt if i == 0 else f"{attempt}-json-repair") for i, c in enumerate(completions)
    ]
    return answer
