"""Backend plumbing shared by the language stages (decompose, caption, scale, revise, guideline).

Which backends exist and the settings check, the hosted-model turn (a prompt template
asked as chat turns and answered as a pydantic schema), the one re-ask every stage allows,
and the {field: reason} form every answer check reports in (the re-ask quotes it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from workers.language.prompts import PromptTemplate

if TYPE_CHECKING:
    from shared.config import Settings

HOSTED_BACKENDS = ("openai", "bedrock")
BACKENDS = ("local", "rules", *HOSTED_BACKENDS)

R = TypeVar("R")
B = TypeVar("B", bound=BaseModel)


def check_settings(settings: Settings | None) -> Settings:
    """The process settings when none are given; ValueError for an unknown llm_backend."""
    if settings is None:
        from shared.config import get_settings

        return get_settings()
    backend = getattr(settings, "llm_backend", None)
    if backend not in BACKENDS:
        raise ValueError(f"settings.llm_backend must be one of {BACKENDS}, got {backend!r}")
    return settings


def hosted_answer(
    backend: Any,
    template: PromptTemplate,
    schema: type[B],
    calls: list[dict[str, Any]],
    errors: dict[str, str],
    images: tuple[Any, ...] = (),
    **values: str,
) -> B:
    """The template as chat turns (the failed checks appended on a re-ask, images on the user turn),
    answered as schema."""
    from workers.models import llm_hosted
    from workers.models.llm_api import Message

    user = template.render_user("; ".join(errors.values()) or None, **values)
    messages = llm_hosted.few_shot(template.system, template.examples, user)
    messages[-1] = Message("user", user, tuple(images))
    return llm_hosted.ask(
        backend,
        messages,
        schema,
        calls,
        "repair" if errors else "first",
        temperature=getattr(backend, "temperature", 0.2),
    )


def with_one_reask(
    produce: Callable[[dict[str, str]], R], check: Callable[[R], dict[str, str]]
) -> tuple[R, dict[str, str] | None]:
    """Produce and check; re-ask once with the failed checks. (value, None) when it passes, else
    (last value, the first try's errors) so the caller can fall back and say why."""
    value = produce({})
    errors = check(value)
    if not errors:
        return value, None
    value = produce(errors)
    return value, (errors if check(value) else None)


def errors_by_field(
    model: type[BaseModel], data: dict[str, Any], context: dict[str, Any], whole: str
) -> dict[str, str]:
    """The first validation error per top-level field ({} when valid); `whole` names model-level errors."""
    try:
        model.model_validate(data, context=context)
    except ValidationError as exc:
        out: dict[str, str] = {}
        for e in exc.errors():
            out.setdefault(str(e["loc"][0]) if e["loc"] else whole, _error_text(e))
        return out
    return {}


def _error_text(error: Any) -> str:
    msg = str(error.get("msg", "")).removeprefix("Value error, ")
    loc = ".".join(str(x) for x in error.get("loc", ()))
    return msg if '"' in msg or not loc else f"{loc}: {msg}"
