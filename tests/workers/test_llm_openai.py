"""OpenAIBackend against a real loopback HTTP server that answers like an OpenAI-compatible endpoint."""

from __future__ import annotations

import base64
import socket
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from tests.factories import FakeOpenAI, Reply, chat_completion
from workers.models.llm_api import ImagePart, LLMError, Message, complete_json, estimate_cost
from workers.models.llm_openai import OpenAIBackend, OpenAIConfig, retry_after

PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)  # a 1x1 PNG


def api_error(message: str, kind: str = "invalid_request_error", code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


class Sleeps(list):
    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def backend_for(server: FakeOpenAI, sleeps: Sleeps | None = None, **overrides: Any) -> OpenAIBackend:
    config = OpenAIConfig(**{"base_url": server.base_url, "api_key": "sk-test-123", "max_attempts": 3, **overrides})
    return OpenAIBackend(config, sleep=sleeps if sleeps is not None else Sleeps())


SCHEMA = {"type": "object", "properties": {"headline": {"type": "string"}}, "required": ["headline"]}
ASK = [Message("system", "You write ad headlines."), Message("user", "A headline for a red running shoe.")]


def test_text_completion_request_and_parsed_answer(server: FakeOpenAI) -> None:
    server.script(Reply(body=chat_completion('{"headline": "Run red."}', prompt_tokens=31, completion_tokens=9)))
    completion = backend_for(server).complete(ASK, json_schema=SCHEMA, max_tokens=200, temperature=0.5)

    [request] = server.requests
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == "Bearer sk-test-123"
    assert request.body == {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": "You write ad headlines."},
            {"role": "user", "content": "A headline for a red running shoe."},
        ],
        "max_tokens": 200,
        "temperature": 0.5,
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "answer", "schema": SCHEMA, "strict": False},
        },
    }
    assert completion.text == '{"headline": "Run red."}'
    assert completion.model == "gpt-4o-mini-2024-07-18"
    assert (completion.usage.tokens_in, completion.usage.tokens_out) == (31, 9)
    assert completion.latency_ms > 0 and completion.attempts == 1


def test_no_schema_no_key_sends_neither_response_format_nor_authorization(server: FakeOpenAI) -> None:
    server.script(Reply(body=chat_completion("Run red.")))
    backend_for(server, api_key=None).complete(ASK)
    [request] = server.requests
    assert "response_format" not in request.body and "authorization" not in request.headers


def test_image_message_becomes_content_parts_with_data_url(server: FakeOpenAI) -> None:
    server.script(Reply(body=chat_completion("A red shoe on white.")))
    jpeg = b"\xff\xd8\xff\xe0jpeg"
    message = Message("user", "Describe the product.", (ImagePart(PNG), ImagePart(jpeg, "image/jpeg")))
    backend_for(server).complete([message])

    [request] = server.requests
    assert request.body["messages"] == [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe the product."},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(PNG).decode()}},
                {
                    "type": "image_url",
                    "image_url": {"url": "data:image/jpeg;base64," + base64.b64encode(jpeg).decode()},
                },
            ],
        }
    ]


def test_images_refused_without_vision_before_any_request(server: FakeOpenAI) -> None:
    server.script(Reply(body=chat_completion("never sent")))
    with pytest.raises(LLMError) as caught:
        backend_for(server, vision=False).complete([Message("user", "Describe.", (ImagePart(PNG),))])
    assert caught.value.code == "llm_bad_request" and "does not accept images" in caught.value.detail
    assert server.requests == []


def test_429_with_retry_after_then_success(server: FakeOpenAI) -> None:
    sleeps = Sleeps()
    server.script(
        Reply(
            429,
            api_error("Rate limit reached for gpt-4o-mini", "requests", "rate_limit_exceeded"),
            {"Retry-After": "1"},
        ),
        Reply(body=chat_completion("ok")),
    )
    completion = backend_for(server, sleeps).complete(ASK)
    assert completion.text == "ok" and completion.attempts == 2
    assert sleeps == [1.0] and len(server.requests) == 2


def test_503_every_time_gives_up_after_max_attempts(server: FakeOpenAI) -> None:
    sleeps = Sleeps()
    server.script(Reply(503, api_error("The server is overloaded", "server_error")))
    with pytest.raises(LLMError) as caught:
        backend_for(server, sleeps, max_attempts=3).complete(ASK)
    assert caught.value.code == "llm_unavailable" and "overloaded" in caught.value.detail
    assert len(server.requests) == 3 and len(sleeps) == 2


def test_slow_server_is_a_timeout(server: FakeOpenAI) -> None:
    server.script(Reply(body=chat_completion("too late"), delay_s=1.0))
    started = time.monotonic()
    with pytest.raises(LLMError) as caught:
        backend_for(server, timeout_s=0.3, max_attempts=1).complete(ASK)
    assert caught.value.code == "llm_timeout" and caught.value.retryable
    assert time.monotonic() - started < 0.9


def test_unreachable_port_is_unavailable_and_names_only_the_host() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago and has nobody listening
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sleeps = Sleeps()
    backend = OpenAIBackend(OpenAIConfig(f"http://127.0.0.1:{port}/v1", max_attempts=2), sleep=sleeps)
    with pytest.raises(LLMError) as caught:
        backend.complete(ASK)
    assert caught.value.code == "llm_unavailable"
    assert caught.value.detail == f"cannot reach http://127.0.0.1:{port}"
    assert len(sleeps) == 1  # retried once


def test_401_is_auth_without_retry(server: FakeOpenAI) -> None:
    server.script(Reply(401, api_error("Incorrect API key provided: sk-test-***", code="invalid_api_key")))
    with pytest.raises(LLMError) as caught:
        backend_for(server).complete(ASK)
    assert caught.value.code == "llm_auth" and len(server.requests) == 1


def test_other_400_is_bad_request_with_server_message(server: FakeOpenAI) -> None:
    server.script(Reply(400, api_error("This model's maximum context length is 128000 tokens. " + "x" * 400)))
    with pytest.raises(LLMError) as caught:
        backend_for(server).complete(ASK, json_schema=SCHEMA)
    assert caught.value.code == "llm_bad_request" and len(server.requests) == 1
    assert caught.value.detail.startswith("This model's maximum context length") and len(caught.value.detail) == 300


def test_rejected_json_schema_falls_back_to_json_object_and_remembers(server: FakeOpenAI) -> None:
    server.script(
        Reply(
            400,
            {
                "object": "error",
                "message": "response_format json_schema is not supported",
                "type": "BadRequestError",
                "code": 400,
            },
        ),
        Reply(body=chat_completion('{"headline": "a"}')),
        Reply(body=chat_completion('{"headline": "b"}')),
    )
    backend = backend_for(server)
    assert backend.complete(ASK, json_schema=SCHEMA).text == '{"headline": "a"}'
    assert backend.json_mode == "json_object"
    assert backend.complete(ASK, json_schema=SCHEMA).text == '{"headline": "b"}'
    formats = [r.body.get("response_format", {}).get("type") for r in server.requests]
    assert formats == ["json_schema", "json_object", "json_object"]


def test_json_object_also_rejected_falls_back_to_none(server: FakeOpenAI) -> None:
    server.script(
        Reply(400, {"error": "response_format is not supported"}),
        Reply(400, {"error": "response_format is not supported"}),
        Reply(body=chat_completion('{"headline": "a"}')),
    )
    backend = backend_for(server)
    backend.complete(ASK, json_schema=SCHEMA)
    formats = [r.body.get("response_format", {}).get("type") for r in server.requests]
    assert formats == ["json_schema", "json_object", None] and backend.json_mode == "none"


def test_content_as_parts_is_joined_and_missing_model_falls_back(server: FakeOpenAI) -> None:
    body = chat_completion([{"type": "text", "text": "Run "}, {"type": "text", "text": "red."}])
    del body["model"]
    server.script(Reply(body=body))
    completion = backend_for(server).complete(ASK)
    assert completion.text == "Run red." and completion.model == "gpt-4o-mini"


@pytest.mark.parametrize("content, finish_reason", [(None, "stop"), ("", "length"), ("partial", "content_filter")])
def test_empty_or_filtered_answer_is_bad_request(server: FakeOpenAI, content: Any, finish_reason: str) -> None:
    server.script(Reply(body=chat_completion(content, finish_reason=finish_reason)))
    with pytest.raises(LLMError) as caught:
        backend_for(server).complete(ASK)
    assert caught.value.code == "llm_bad_request" and len(server.requests) == 1


def test_retry_after_as_http_date() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=5), usegmt=True)
    seconds = retry_after(httpx.Response(429, headers={"Retry-After": when}))
    assert seconds is not None and 3.5 < seconds <= 5.0
    assert retry_after(httpx.Response(429, headers={"Retry-After": "soon"})) is None
    assert retry_after(httpx.Response(429)) is None


class Products(BaseModel):
    products: list[str]


PRODUCT_ASK = [Message("user", "List the products in this brief as JSON.")]


def test_complete_json_reads_a_fenced_answer(server: FakeOpenAI) -> None:
    server.script(Reply(body=chat_completion('```json\n{"products": ["shoe", "sock"]}\n```')))
    parsed, completions = complete_json(backend_for(server), PRODUCT_ASK, Products)
    assert parsed == Products(products=["shoe", "sock"]) and len(completions) == 1
    assert server.requests[0].body["response_format"]["json_schema"]["schema"] == Products.model_json_schema()


def test_complete_json_repairs_a_malformed_answer_once(server: FakeOpenAI) -> None:
    server.script(
        Reply(body=chat_completion("Sure! here it is: {products: [shoe]")),
        Reply(body=chat_completion('{"products": ["shoe"]}')),
    )
    parsed, completions = complete_json(backend_for(server), PRODUCT_ASK, Products)
    assert parsed == Products(products=["shoe"]) and len(completions) == 2
    second = server.requests[1].body
    assert second["temperature"] == 0.0
    assert second["messages"][1] == {"role": "assistant", "content": "Sure! here it is: {products: [shoe]"}
    assert second["messages"][2]["role"] == "user"
    assert second["messages"][2]["content"].startswith("That answer was not valid")


def test_complete_json_gives_up_after_two_malformed_answers(server: FakeOpenAI) -> None:
    server.script(Reply(body=chat_completion("Sure! here it is: {products: [shoe]")))
    with pytest.raises(LLMError) as caught:
        complete_json(backend_for(server), PRODUCT_ASK, Products)
    assert caught.value.code == "llm_malformed_json" and len(server.requests) == 2


def test_estimate_cost_for_gpt_4o_mini_usage(server: FakeOpenAI) -> None:
    server.script(Reply(body=chat_completion("ok", prompt_tokens=1200, completion_tokens=300)))
    completion = backend_for(server).complete(ASK)
    cost = estimate_cost("gpt-4o-mini", completion.usage)
    assert cost is not None and cost > 0
