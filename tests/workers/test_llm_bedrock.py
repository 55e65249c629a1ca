"""Bedrock Converse backend against a real boto3 client whose wire is replaced by botocore's Stubber.

No test reaches AWS: Stubber answers before a request is signed or sent, and the one test without a
Stubber (missing credentials) fails at signing, before any connection.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.exceptions
import pytest
from botocore.stub import Stubber
from pydantic import BaseModel

from workers.models.llm_api import ImagePart, LLMError, Message, complete_json, estimate_cost
from workers.models.llm_bedrock import BedrockBackend, BedrockConfig

NOVA_PRO = "amazon.nova-pro-v1:0"
# Smallest valid PNG (1x1, transparent): real bytes, so the test exercises what a caller would send.
PNG_1PX = bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def converse_response(
    text: str, *, stop_reason: str = "end_turn", tokens_in: int = 412, tokens_out: int = 57, latency_ms: int = 812
) -> dict[str, Any]:
    """A Converse response as Bedrock returns it (recorded shape from amazon.nova-pro-v1:0)."""
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": stop_reason,
        "usage": {"inputTokens": tokens_in, "outputTokens": tokens_out, "totalTokens": tokens_in + tokens_out},
        "metrics": {"latencyMs": latency_ms},
    }


class Sleeps:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


class Headline(BaseModel):
    headline: str
    tone: str


@pytest.fixture
def client() -> Any:
    return boto3.client("bedrock-runtime", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="y")


@pytest.fixture
def stubber(client: Any) -> Iterator[Stubber]:
    with Stubber(client) as stub:
        yield stub
        stub.assert_no_pending_responses()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def backend(client: Any, stubber: Stubber, sleeps: Sleeps) -> BedrockBackend:
    return BedrockBackend(BedrockConfig(max_attempts=3), client=client, sleep=sleeps)


def test_text_completion_request_and_parsed_completion(client: Any, stubber: Stubber, sleeps: Sleeps) -> None:
    backend = BedrockBackend(BedrockConfig(top_p=0.9), client=client, sleep=sleeps)
    schema = {"type": "object", "properties": {"headline": {"type": "string"}}, "required": ["headline"]}
    stubber.add_response(
        "converse",
        converse_response('{"headline": "Summer, bottled."}'),
        expected_params={
            "modelId": NOVA_PRO,
            "system": [
                {
                    "text": "You write ad copy.\n\nAnswer with only a JSON object matching this JSON schema: "
                    + json.dumps(schema, separators=(",", ":"))
                }
            ],
            "messages": [{"role": "user", "content": [{"text": "A headline for lemonade."}]}],
            "inferenceConfig": {"maxTokens": 256, "temperature": 0.5, "topP": 0.9},
        },
    )

    messages = [Message("system", "You write ad copy."), Message("user", "A headline for lemonade.")]
    completion = backend.complete(messages, json_schema=schema, max_tokens=256, temperature=0.5)

    assert completion.text == '{"headline": "Summer, bottled."}'
    assert completion.model == NOVA_PRO == backend.model
    assert (completion.usage.tokens_in, completion.usage.tokens_out) == (412, 57)
    assert completion.latency_ms == 812.0
    assert completion.attempts == 1
    assert estimate_cost(completion.model, completion.usage) > 0
    assert sleeps.calls == []


def test_plain_request_has_no_system_and_no_top_p(backend: BedrockBackend, stubber: Stubber) -> None:
    stubber.add_response(
        "converse",
        converse_response("Hi."),
        expected_params={
            "modelId": NOVA_PRO,
            "messages": [{"role": "user", "content": [{"text": "Hello"}]}],
            "inferenceConfig": {"maxTokens": 1024, "temperature": 0.2},
        },
    )
    assert backend.complete([Message("user", "Hello")]).text == "Hi."


def test_image_message_sends_png_block_with_exact_bytes(backend: BedrockBackend, stubber: Stubber) -> None:
    stubber.add_response(
        "converse",
        converse_response("A red sneaker on white."),
        expected_params={
            "modelId": NOVA_PRO,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"image": {"format": "png", "source": {"bytes": PNG_1PX}}},
                        {"text": "Describe the product."},
                    ],
                }
            ],
            "inferenceConfig": {"maxTokens": 1024, "temperature": 0.2},
        },
    )
    completion = backend.complete([Message("user", "Describe the product.", images=(ImagePart(PNG_1PX),))])
    assert completion.text == "A red sneaker on white."


def test_roles_are_merged_into_one_system_block_and_one_user_turn(backend: BedrockBackend, stubber: Stubber) -> None:
    stubber.add_response(
        "converse",
        converse_response("ok"),
        expected_params={
            "modelId": NOVA_PRO,
            "system": [{"text": "Be brief."}],
            "messages": [{"role": "user", "content": [{"text": "Brand: Acme."}, {"text": "Product: anvil."}]}],
            "inferenceConfig": {"maxTokens": 1024, "temperature": 0.2},
        },
    )
    backend.complete(
        [Message("system", "Be brief."), Message("user", "Brand: Acme."), Message("user", "Product: anvil.")]
    )


def test_conversation_must_start_with_user(backend: BedrockBackend) -> None:
    with pytest.raises(LLMError) as info:
        backend.complete([Message("assistant", "Hello there")])
    assert info.value.code == "llm_bad_request"


def test_throttling_then_success_retries_once(backend: BedrockBackend, stubber: Stubber, sleeps: Sleeps) -> None:
    stubber.add_client_error("converse", "ThrottlingException", "Too many requests, please wait.", 429)
    stubber.add_response("converse", converse_response("done"))

    completion = backend.complete([Message("user", "go")])

    assert completion.text == "done"
    assert completion.attempts == 2
    assert len(sleeps.calls) == 1


def test_retry_after_header_sets_the_backoff(backend: BedrockBackend, stubber: Stubber, sleeps: Sleeps) -> None:
    stubber.add_client_error(
        "converse", "ServiceQuotaExceededException", "quota", 429, response_meta={"HTTPHeaders": {"retry-after": "3"}}
    )
    stubber.add_response("converse", converse_response("done"))
    backend.complete([Message("user", "go")])
    assert sleeps.calls == [3.0]


def test_model_not_ready_every_time_gives_up_after_max_attempts(client: Any, stubber: Stubber, sleeps: Sleeps) -> None:
    backend = BedrockBackend(BedrockConfig(max_attempts=4), client=client, sleep=sleeps)
    for _ in range(4):
        stubber.add_client_error("converse", "ModelNotReadyException", "Model is not ready.", 429)

    with pytest.raises(LLMError) as info:
        backend.complete([Message("user", "go")])

    assert info.value.code == "llm_unavailable"
    assert len(sleeps.calls) == 3  # between the 4 calls; the fixture checks all 4 stubbed errors were used


def test_access_denied_is_auth_and_not_retried(backend: BedrockBackend, stubber: Stubber, sleeps: Sleeps) -> None:
    stubber.add_client_error(
        "converse", "AccessDeniedException", "You don't have access to the model with the specified model ID.", 403
    )

    with pytest.raises(LLMError) as info:
        backend.complete([Message("user", "go")])

    assert info.value.code == "llm_auth"
    assert sleeps.calls == []  # one call only; a second would find no stubbed response


def test_validation_error_is_bad_request_with_truncated_message(backend: BedrockBackend, stubber: Stubber) -> None:
    stubber.add_client_error("converse", "ValidationException", "Malformed input request: " + "x" * 500, 400)
    with pytest.raises(LLMError) as info:
        backend.complete([Message("user", "go")])
    assert info.value.code == "llm_bad_request"
    assert "Malformed input request" in info.value.detail
    assert len(info.value.detail) <= 300


def test_missing_credentials_is_misconfigured_without_network(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sleeps: Sleeps
) -> None:
    for var in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
    ):
        monkeypatch.delenv(var, raising=False)
    for var in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        empty = tmp_path / var.lower()
        empty.write_text("")
        monkeypatch.setenv(var, str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    # A closed local port: should signing somehow pass, the call still fails fast instead of reaching AWS.
    backend = BedrockBackend(
        BedrockConfig(endpoint_url="http://127.0.0.1:9", timeout_s=2.0, max_attempts=2), sleep=sleeps
    )

    with pytest.raises(LLMError) as info:
        backend.complete([Message("user", "go")])

    assert info.value.code == "llm_misconfigured"
    assert "no AWS credentials" in info.value.detail
    assert sleeps.calls == []


def test_read_timeout_is_llm_timeout(client: Any, monkeypatch: pytest.MonkeyPatch, sleeps: Sleeps) -> None:
    def timed_out(**_: Any) -> None:
        raise botocore.exceptions.ReadTimeoutError(endpoint_url="x")

    monkeypatch.setattr(client, "converse", timed_out)
    backend = BedrockBackend(BedrockConfig(max_attempts=2), client=client, sleep=sleeps)

    with pytest.raises(LLMError) as info:
        backend.complete([Message("user", "go")])

    assert info.value.code == "llm_timeout"
    assert len(sleeps.calls) == 1  # timeouts are retryable


def test_content_filtered_is_bad_request(backend: BedrockBackend, stubber: Stubber, sleeps: Sleeps) -> None:
    stubber.add_response("converse", converse_response("", stop_reason="content_filtered"))
    with pytest.raises(LLMError) as info:
        backend.complete([Message("user", "something disallowed")])
    assert info.value.code == "llm_bad_request"
    assert sleeps.calls == []


def test_complete_json_parses_a_fenced_answer(backend: BedrockBackend, stubber: Stubber) -> None:
    stubber.add_response("converse", converse_response('```json\n{"headline": "Fresh.", "tone": "playful"}\n```'))
    value, completions = complete_json(backend, [Message("user", "A headline.")], Headline)
    assert value == Headline(headline="Fresh.", tone="playful")
    assert len(completions) == 1


def test_complete_json_repairs_once(backend: BedrockBackend, stubber: Stubber) -> None:
    stubber.add_response("converse", converse_response('{"headline": "Fresh."'))
    stubber.add_response("converse", converse_response('{"headline": "Fresh.", "tone": "calm"}'))
    value, completions = complete_json(backend, [Message("user", "A headline.")], Headline)
    assert value.tone == "calm"
    assert len(completions) == 2


def test_complete_json_repair_turns_alternate(backend: BedrockBackend, stubber: Stubber) -> None:
    schema_text = json.dumps(Headline.model_json_schema(), separators=(",", ":"))
    stubber.add_response("converse", converse_response("not json"))
    second = {
        "modelId": NOVA_PRO,
        "system": [{"text": "Answer with only a JSON object matching this JSON schema: " + schema_text}],
        "inferenceConfig": {"maxTokens": 1024, "temperature": 0.0},
    }
    stubber.add_response(
        "converse",
        converse_response('{"headline": "a", "tone": "b"}'),
        expected_params={**second, "messages": _RepairTurns()},
    )
    complete_json(backend, [Message("user", "A headline.")], Headline)


class _RepairTurns:
    """Matches user / assistant / user turns (the repair prompt's exact wording belongs to llm_api)."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, list) and [turn["role"] for turn in other] == ["user", "assistant", "user"]


def test_complete_json_malformed_twice_fails(backend: BedrockBackend, stubber: Stubber) -> None:
    stubber.add_response("converse", converse_response("Sure! Here is your headline: Fresh."))
    stubber.add_response("converse", converse_response('{"headline": "Fresh."}'))
    with pytest.raises(LLMError) as info:
        complete_json(backend, [Message("user", "A headline.")], Headline)
    assert info.value.code == "llm_malformed_json"
    assert "bedrock" in info.value.detail
