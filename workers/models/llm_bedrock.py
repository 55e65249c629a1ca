"""Amazon Bedrock backend for llm_api: the Converse API through boto3.

Converse is model-agnostic (Nova, Claude, Llama...) so one request shape serves every Bedrock chat model.
botocore's own retries are switched off: llm_api.with_retries is the only retry loop, so throttling and
transient errors back off the same way for every backend and `Completion.attempts` is truthful.
boto3/botocore are imported inside functions to keep importing this module cheap for processes that
never call Bedrock.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from workers.models.llm_api import Completion, LLMError, Message, Usage, with_retries

# Converse error codes -> llm_api error codes; anything unlisted falls back to the HTTP status.
_CLIENT_ERROR_CODES: dict[str, str] = {
    "ThrottlingException": "llm_throttled",
    "ServiceQuotaExceededException": "llm_throttled",
    "TooManyRequestsException": "llm_throttled",
    "ModelNotReadyException": "llm_unavailable",
    "ServiceUnavailableException": "llm_unavailable",
    "InternalServerException": "llm_unavailable",
    "ModelTimeoutException": "llm_unavailable",
    "AccessDeniedException": "llm_auth",
    "UnrecognizedClientException": "llm_auth",
    "ExpiredTokenException": "llm_auth",
    "ValidationException": "llm_bad_request",
    "ResourceNotFoundException": "llm_bad_request",
    "ModelErrorException": "llm_bad_request",
}
# Stop reasons that mean the answer was withheld, not merely cut short; retrying the same prompt won't help.
_BLOCKED_STOP_REASONS = frozenset({"content_filtered", "guardrail_intervened"})
_MAX_DETAIL = 300


@dataclass(frozen=True)
class BedrockConfig:
    model_id: str = "amazon.nova-pro-v1:0"
    region: str = "us-east-1"
    timeout_s: float = 60.0
    max_attempts: int = 4
    top_p: float | None = None
    endpoint_url: str | None = None  # for VPC endpoints / tests
    temperature: float = 0.2  # the stages' default sampling temperature


class BedrockBackend:
    """llm_api.ChatBackend over Bedrock Converse; safe to share between threads (boto3 clients are)."""

    name = "bedrock"
    vision = True

    def __init__(
        self, config: BedrockConfig, client: Any | None = None, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        self.config = config
        self._client = client
        self._client_lock = threading.Lock()
        self._sleep = sleep

    @property
    def model(self) -> str:
        return self.config.model_id

    @property
    def temperature(self) -> float:
        return self.config.temperature

    def complete(
        self,
        messages: Sequence[Message],
        *,
        json_schema: dict | None = None,
        max_tokens: int = 1024,
        temperature: float = 0.2,
    ) -> Completion:
        request = build_request(
            self.config, messages, json_schema=json_schema, max_tokens=max_tokens, temperature=temperature
        )
        return with_retries(lambda: self._call_once(request), max_attempts=self.config.max_attempts, sleep=self._sleep)

    def _call_once(self, request: dict[str, Any]) -> Completion:
        started = time.perf_counter()
        try:
            response = self._get_client().converse(**request)
        except Exception as exc:  # botocore's hierarchy is wide; _to_llm_error re-raises what it can't map
            raise _to_llm_error(exc) from exc
        measured_ms = (time.perf_counter() - started) * 1000
        return parse_response(response, model=self.config.model_id, measured_ms=measured_ms)

    def _get_client(self) -> Any:
        # Built on first use, not in __init__: constructing a backend must not need AWS config, and a
        # failure here (e.g. no region) then surfaces as an LLMError like any other call failure.
        with self._client_lock:
            if self._client is None:
                self._client = make_client(self.config)
            return self._client


def make_client(config: BedrockConfig) -> Any:
    import boto3
    from botocore.config import Config

    botocore_config = Config(
        read_timeout=config.timeout_s,
        connect_timeout=min(10.0, config.timeout_s),
        retries={"max_attempts": 1, "mode": "standard"},
    )
    # A private session: boto3's default session is not thread-safe to create clients from.
    session = boto3.session.Session()
    return session.client(
        "bedrock-runtime", region_name=config.region, endpoint_url=config.endpoint_url, config=botocore_config
    )


def build_request(
    config: BedrockConfig, messages: Sequence[Message], *, json_schema: dict | None, max_tokens: int, temperature: float
) -> dict[str, Any]:
    """Keyword arguments for client.converse()."""
    system_texts = [m.text for m in messages if m.role == "system" and m.text.strip()]
    if json_schema is not None:
        # Nova has no response_format; an instruction plus complete_json's repair round does the job.
        system_texts.append(
            "Answer with only a JSON object matching this JSON schema: "
            + json.dumps(json_schema, separators=(",", ":"))
        )
    inference: dict[str, Any] = {"maxTokens": max_tokens, "temperature": temperature}
    if config.top_p is not None:
        inference["topP"] = config.top_p
    request: dict[str, Any] = {
        "modelId": config.model_id,
        "messages": to_converse_messages(messages),
        "inferenceConfig": inference,
    }
    if system_texts:
        request["system"] = [{"text": "\n\n".join(system_texts)}]
    return request


def to_converse_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    """Non-system messages as Converse turns: same-role neighbours merged, since Converse requires the
    roles to alternate and to start with "user"."""
    turns: list[dict[str, Any]] = []
    for message in messages:
        if message.role == "system":
            continue
        content = _content_blocks(message)
        if not content:
            continue  # Converse rejects blank text blocks and empty turns
        if turns and turns[-1]["role"] == message.role:
            turns[-1]["content"].extend(content)
        else:
            turns.append({"role": message.role, "content": content})
    if not turns or turns[0]["role"] != "user":
        raise LLMError("llm_bad_request", "the conversation must start with a non-empty user message")
    return turns


def _content_blocks(message: Message) -> list[dict[str, Any]]:
    # Images before the text: the order Nova's prompting guide recommends for image understanding.
    blocks: list[dict[str, Any]] = [
        {"image": {"format": image.media_type.removeprefix("image/"), "source": {"bytes": image.data}}}
        for image in message.images
    ]
    if message.text.strip():
        blocks.append({"text": message.text})
    return blocks


def parse_response(response: dict[str, Any], *, model: str, measured_ms: float) -> Completion:
    stop_reason = response.get("stopReason", "")
    if stop_reason in _BLOCKED_STOP_REASONS:
        raise LLMError("llm_bad_request", f"bedrock {model} withheld the answer (stopReason={stop_reason})")
    content = response.get("output", {}).get("message", {}).get("content", [])
    text = "".join(block["text"] for block in content if "text" in block)
    usage = response.get("usage", {})
    # Bedrock's own latency excludes our network time; prefer it when reported, for comparable numbers.
    latency_ms = response.get("metrics", {}).get("latencyMs")
    return Completion(
        text=text,
        model=model,
        usage=Usage(tokens_in=int(usage.get("inputTokens", 0)), tokens_out=int(usage.get("outputTokens", 0))),
        latency_ms=float(latency_ms) if latency_ms is not None else measured_ms,
    )


def _to_llm_error(exc: Exception) -> LLMError:
    """Map a boto3/botocore failure to an LLMError; re-raise anything that is not one (a bug of ours)."""
    from botocore import exceptions as bce

    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, bce.ClientError):
        return _client_error(exc)
    if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError | bce.NoRegionError):
        return LLMError("llm_misconfigured", f"no AWS credentials: {exc}"[:_MAX_DETAIL])
    # Timeouts subclass the generic connection/HTTP errors, so they are checked first.
    if isinstance(exc, bce.ReadTimeoutError | bce.ConnectTimeoutError):
        return LLMError("llm_timeout", f"bedrock: {exc}"[:_MAX_DETAIL])
    if isinstance(exc, bce.EndpointConnectionError | bce.ConnectionError | bce.HTTPClientError):
        return LLMError("llm_unavailable", f"bedrock: {exc}"[:_MAX_DETAIL])
    if isinstance(exc, bce.ParamValidationError):
        return LLMError("llm_bad_request", f"bedrock: {exc}"[:_MAX_DETAIL])
    raise exc


def _client_error(exc: Any) -> LLMError:
    error = exc.response.get("Error", {})
    meta = exc.response.get("ResponseMetadata", {})
    code = _CLIENT_ERROR_CODES.get(error.get("Code", "")) or _code_for_status(meta.get("HTTPStatusCode", 0))
    detail = f"{error.get('Code', 'error')}: {error.get('Message', '')}"[:_MAX_DETAIL]
    return LLMError(code, detail, retry_after=_retry_after(meta.get("HTTPHeaders", {})))


def _code_for_status(status: int) -> str:
    if status == 429:
        return "llm_throttled"
    if status in (401, 403):
        return "llm_auth"
    if status >= 500:
        return "llm_unavailable"
    return "llm_bad_request"


def _retry_after(headers: dict[str, str]) -> float | None:
    # Only the delta-seconds form; Bedrock rarely sends the header, and jittered backoff covers the rest.
    try:
        return max(0.0, float(headers.get("retry-after", "")))
    except ValueError:
        return None
