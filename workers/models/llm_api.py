"""One interface for the hosted LLM backends (Bedrock Converse, OpenAI-compatible chat).

Messages in (text, optionally images), text out; `complete_json` adds what every stage needs on
top of any backend: JSON extraction, validation against a pydantic schema, one repair round with
the validation error, then a clear failure. Retries with backoff are shared here so both backends
treat throttling and transient errors the same way. No heavy imports: backends bring their own
clients (boto3, httpx).
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

from pydantic import BaseModel, ValidationError

Role = Literal["system", "user", "assistant"]
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
ERROR_CODES = (
    "llm_timeout",
    "llm_throttled",
    "llm_unavailable",
    "llm_auth",
    "llm_bad_request",
    "llm_malformed_json",
    "llm_misconfigured",
)
RETRYABLE = frozenset({"llm_timeout", "llm_throttled", "llm_unavailable"})
T = TypeVar("T", bound=BaseModel)

# USD per 1000 tokens (input, output); an estimate for the call log, not an invoice.
PRICES_PER_1K: dict[str, tuple[float, float]] = {
    "amazon.nova-pro-v1:0": (0.0008, 0.0032),
    "amazon.nova-lite-v1:0": (0.00006, 0.00024),
    "gpt-4o": (0.0025, 0.01),
    "gpt-4o-mini": (0.00015, 0.0006),
}


@dataclass(frozen=True)
class ImagePart:
    data: bytes
    media_type: str = "image/png"

    def __post_init__(self) -> None:
        if self.media_type not in IMAGE_TYPES:
            raise ValueError(f"media_type must be one of {IMAGE_TYPES}, got {self.media_type!r}")
        if not self.data:
            raise ValueError("data must not be empty")


@dataclass(frozen=True)
class Message:
    role: Role
    text: str
    images: tuple[ImagePart, ...] = ()

    def __post_init__(self) -> None:
        if self.role not in ("system", "user", "assistant"):
            raise ValueError(f"role must be system, user or assistant, got {self.role!r}")
        if self.images and self.role != "user":
            raise ValueError("images are only allowed in user messages")


@dataclass(frozen=True)
class Usage:
    tokens_in: int = 0
    tokens_out: int = 0


@dataclass(frozen=True)
class Completion:
    text: str
    model: str
    usage: Usage = field(default_factory=Usage)
    latency_ms: float = 0.0
    attempts: int = 1


class LLMError(Exception):
    """A backend call that did not produce a usable answer; `code` is one of ERROR_CODES."""

    def __init__(self, code: str, detail: str, retry_after: float | None = None) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"unknown LLM error code {code!r}")
        super().__init__(f"{code}: {detail}")
        self.code, self.detail, self.retry_after = code, detail, retry_after

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE


class ChatBackend(Protocol):
    name: str  # "bedrock" | "openai" | ...
    vision: bool  # accepts ImagePart in messages

    @property
    def model(self) -> str: ...  # read-only: Bedrock derives it from its config

    def complete(
        self,
        messages: Sequence[Message],
        *,
        json_schema: dict | None = None,
        max_tokens: int = 1024,
        temperature: float = 0.2,
    ) -> Completion: ...


def estimate_cost(model: str, usage: Usage) -> float | None:
    """USD estimate; dated snapshots ("gpt-4o-mini-2024-07-18") use their family's price."""
    family = max((k for k in PRICES_PER_1K if model == k or model.startswith(k + "-")), key=len, default=None)
    if family is None:
        return None
    price = PRICES_PER_1K[family]
    return round(usage.tokens_in / 1000 * price[0] + usage.tokens_out / 1000 * price[1], 6)


def with_retries(
    call: Callable[[], Completion],
    *,
    max_attempts: int = 4,
    base_delay_s: float = 1.0,
    max_delay_s: float = 30.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Completion:
    """Run call; retry retryable LLMErrors with exponential backoff and full jitter (Retry-After wins)."""
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
    for attempt in range(1, max_attempts + 1):
        try:
            result = call()
        except LLMError as exc:
            if not exc.retryable or attempt == max_attempts:
                raise
            delay = exc.retry_after if exc.retry_after is not None else random.uniform(0, base_delay_s * 2**attempt)
            sleep(min(max(delay, 0.0), max_delay_s) if math.isfinite(delay) else max_delay_s)
            continue
        return Completion(result.text, result.model, result.usage, result.latency_ms, attempt)
    raise AssertionError("unreachable")  # the loop returns or raises


_FENCE = re.compile(r"^```(?:json)?\s*|\s*```$", re.IGNORECASE)


def extract_json(text: str) -> object:
    """The JSON value in a model's answer: bare, in a ``` fence, or the first {...} in prose."""
    stripped = _FENCE.sub("", text.strip())
    try:
        return json.loads(stripped)
    except ValueError:
        pass
    start, end = stripped.find("{"), stripped.rfind("}")
    if start == -1 or end <= start:
        raise ValueError("no JSON object in the answer")
    return json.loads(stripped[start : end + 1])


def _parse(text: str, schema: type[T]) -> T:
    try:
        return schema.model_validate(extract_json(text))
    except ValidationError as exc:
        raise ValueError(f"does not match the schema: {exc.errors(include_url=False)[:3]}") from None


def complete_json(
    backend: ChatBackend,
    messages: Sequence[Message],
    schema: type[T],
    *,
    max_tokens: int = 1024,
    temperature: float = 0.2,
) -> tuple[T, list[Completion]]:
    """A validated schema instance and every completion it took (one, or two after a repair)."""
    json_schema = schema.model_json_schema()
    first = backend.complete(messages, json_schema=json_schema, max_tokens=max_tokens, temperature=temperature)
    try:
        return _parse(first.text, schema), [first]
    except ValueError as exc:
        problem = str(exc)
    repair = [
        *messages,
        Message("assistant", first.text),
        Message(
            "user",
            f"That answer was not valid: {problem}. Reply with only the corrected JSON object "
            f"matching this schema: {json.dumps(json_schema)}",
        ),
    ]
    second = backend.complete(repair, json_schema=json_schema, max_tokens=max_tokens, temperature=0.0)
    try:
        return _parse(second.text, schema), [first, second]
    except ValueError as exc:
        raise LLMError(
            "llm_malformed_json", f"{backend.name} ({backend.model}) answered invalid JSON twice: {exc}"
        ) from None
