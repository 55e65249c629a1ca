"""ChatBackend for any OpenAI-compatible chat completions endpoint (OpenAI, vLLM, Ollama).

One POST to {base_url}/chat/completions per attempt, with plain httpx. Servers differ in what they
accept for structured output, so the backend starts with `json_schema`, and on a 400 that blames
`response_format` steps down to `json_object` and then to none, remembering the step on the
instance so later calls do not pay for the failed request again. Every failure becomes an
`LLMError` with one of the shared codes, and retries go through `llm_api.with_retries` so this
backend backs off exactly like the others.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import httpx

from workers.models.llm_api import Completion, LLMError, Message, Usage, with_retries

log = logging.getLogger(__name__)

JsonMode = Literal["json_schema", "json_object", "none"]
# The order a server that rejects structured output is walked down, one step per rejection.
_DOWNGRADE: dict[str, JsonMode] = {"json_schema": "json_object", "json_object": "none"}
_UNAVAILABLE_STATUSES = frozenset({500, 502, 503, 504})
_MAX_DETAIL = 300


@dataclass(frozen=True)
class OpenAIConfig:
    base_url: str  # e.g. "https://api.openai.com/v1" or "http://vllm:8000/v1"
    model: str = "gpt-4o-mini"
    api_key: str | None = None
    timeout_s: float = 60.0
    max_attempts: int = 4
    vision: bool = True
    json_mode: JsonMode = "json_schema"
    temperature: float = 0.2  # the stages' default sampling temperature


class OpenAIBackend:
    """Satisfies llm_api.ChatBackend."""

    name = "openai"

    @property
    def temperature(self) -> float:
        return self.config.temperature

    def __init__(
        self, config: OpenAIConfig, client: httpx.Client | None = None, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.config = config
        self.model = config.model
        self.vision = config.vision
        self.json_mode: JsonMode = config.json_mode  # may step down at run time, see _downgrade
        self._sleep = sleep
        self._owns_client = client is None
        # trust_env=False: proxy variables meant for the internet must not reroute an in-cluster vLLM.
        self._client = client or httpx.Client(trust_env=False, timeout=config.timeout_s)
        self._url = config.base_url.rstrip("/") + "/chat/completions"
        self._where = _public_location(config.base_url)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()

    def complete(
        self,
        messages: Sequence[Message],
        *,
        json_schema: dict | None = None,
        max_tokens: int = 1024,
        temperature: float = 0.2,
    ) -> Completion:
        if not self.vision and any(m.images for m in messages):
            # Refuse before any request: a text-only model would either 400 or silently ignore the image.
            raise LLMError(
                "llm_bad_request",
                f"{self.name} model {self.model} does not accept images (vision is off for this backend)",
            )
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [_message_json(m) for m in messages],
            "max_tokens": max_tokens,
            "temperature": temperature,
        }
        return with_retries(
            lambda: self._attempt(body, json_schema), max_attempts=self.config.max_attempts, sleep=self._sleep
        )

    def _attempt(self, body: dict[str, Any], json_schema: dict | None) -> Completion:
        """One logical attempt; a response_format rejection re-sends at once (not a transient fault)."""
        while True:
            mode = self.json_mode if json_schema is not None else "none"
            started = time.perf_counter()
            response = self._post({**body, **_response_format(mode, json_schema)})
            latency_ms = (time.perf_counter() - started) * 1000
            if response.status_code < 400:
                return self._completion(response, latency_ms)
            error = self._error(response)
            if mode == "none" or not _rejects_response_format(response.status_code, error.detail):
                raise error
            self._downgrade(mode, error.detail)

    def _post(self, body: dict[str, Any]) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        try:
            return self._client.post(self._url, json=body, headers=headers, timeout=self.config.timeout_s)
        except httpx.TimeoutException:
            raise LLMError("llm_timeout", f"{self._where} did not answer within {self.config.timeout_s:g}s") from None
        except httpx.TransportError:
            # Only the host in the message: the exception text can carry resolver and socket internals.
            raise LLMError("llm_unavailable", f"cannot reach {self._where}") from None

    def _downgrade(self, mode: JsonMode, detail: str) -> None:
        self.json_mode = _DOWNGRADE[mode]
        log.warning(
            "%s at %s rejected response_format %s (%s); using %s from now on",
            self.model,
            self._where,
            mode,
            detail[:120],
            self.json_mode,
        )

    def _error(self, response: httpx.Response) -> LLMError:
        status, detail = response.status_code, _error_message(response)
        if status in (401, 403):
            return LLMError("llm_auth", f"{self._where} refused the credentials (HTTP {status}): {detail}")
        if status == 429:
            return LLMError(
                "llm_throttled", f"{self._where} is throttling (HTTP 429): {detail}", retry_after=retry_after(response)
            )
        if status in _UNAVAILABLE_STATUSES:
            return LLMError(
                "llm_unavailable", f"{self._where} failed (HTTP {status}): {detail}", retry_after=retry_after(response)
            )
        if 400 <= status < 500:
            return LLMError("llm_bad_request", detail)
        return LLMError("llm_unavailable", f"{self._where} failed (HTTP {status}): {detail}")

    def _completion(self, response: httpx.Response, latency_ms: float) -> Completion:
        try:
            data = response.json()
            choice = data["choices"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            # A 200 that is not a chat completion is a proxy or server fault, worth another try.
            raise LLMError(
                "llm_unavailable",
                f"{self._where} answered something that is not a chat completion: {response.text[:_MAX_DETAIL]!r}",
            ) from None
        model = data.get("model") or self.model
        if choice.get("finish_reason") == "content_filter":
            raise LLMError("llm_bad_request", f"{model} withheld its answer (finish_reason content_filter)")
        text = _content_text((choice.get("message") or {}).get("content"))
        if not text.strip():
            raise LLMError(
                "llm_bad_request", f"{model} returned an empty answer (finish_reason {choice.get('finish_reason')!r})"
            )
        usage = data.get("usage") or {}
        return Completion(
            text=text,
            model=model,
            latency_ms=latency_ms,
            usage=Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)),
        )


def _message_json(message: Message) -> dict[str, Any]:
    if not message.images:
        return {"role": message.role, "content": message.text}
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.text}]
    for image in message.images:
        encoded = base64.b64encode(image.data).decode("ascii")
        parts.append({"type": "image_url", "image_url": {"url": f"data:{image.media_type};base64,{encoded}"}})
    return {"role": message.role, "content": parts}


def _response_format(mode: JsonMode, json_schema: dict | None) -> dict[str, Any]:
    if json_schema is None or mode == "none":
        return {}
    if mode == "json_object":
        return {"response_format": {"type": "json_object"}}
    # strict=False: pydantic schemas use features (defaults, optional fields) strict mode rejects.
    return {
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": json_schema, "strict": False},
        }
    }


def _rejects_response_format(status: int, detail: str) -> bool:
    lowered = detail.lower()
    return status == 400 and ("response_format" in lowered or "json_schema" in lowered)


def _content_text(content: object) -> str:
    """message.content is a string, or (some servers) a list of typed parts of which we keep the text."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""


def _error_message(response: httpx.Response) -> str:
    """The server's own words: OpenAI {"error": {"message"}}, vLLM {"message"}, Ollama {"error": "..."}."""
    try:
        data = response.json()
    except ValueError:
        data = None
    message: object = None
    if isinstance(data, dict):
        error = data.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        message = message or data.get("message") or data.get("detail")
    text = str(message) if message else (response.text or response.reason_phrase)
    return text.strip()[:_MAX_DETAIL]


def retry_after(response: httpx.Response) -> float | None:
    """Retry-After as seconds: either a number of seconds or an HTTP date (RFC 9110)."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _public_location(base_url: str) -> str:
    """scheme://host[:port] of the endpoint, without credentials or path, for error messages."""
    url = httpx.URL(base_url)
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}"
