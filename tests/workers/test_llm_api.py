"""The backend-independent parts of the hosted LLM interface: messages, retries, JSON extraction."""

from __future__ import annotations

import pytest

from workers.models.llm_api import (
    Completion,
    ImagePart,
    LLMError,
    Message,
    Usage,
    estimate_cost,
    extract_json,
    with_retries,
)


def test_messages_check_their_arguments() -> None:
    with pytest.raises(ValueError, match="role"):
        Message("robot", "hi")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="images"):
        Message("system", "look", (ImagePart(b"\x89PNG"),))
    with pytest.raises(ValueError, match="media_type"):
        ImagePart(b"GIF89a", "image/gif")
    with pytest.raises(ValueError, match="data"):
        ImagePart(b"")


@pytest.mark.parametrize(
    "answer",
    [
        '{"products": ["shoe"]}',
        '```json\n{"products": ["shoe"]}\n```',
        'Sure! {"products": ["shoe"]} Hope it helps.',
    ],
)
def test_extract_json_finds_the_object(answer: str) -> None:
    assert extract_json(answer) == {"products": ["shoe"]}


def test_extract_json_refuses_prose() -> None:
    with pytest.raises(ValueError):
        extract_json("I cannot help with that.")


def _flaky(errors: list[LLMError]) -> tuple[list[int], object]:
    calls: list[int] = []

    def call() -> Completion:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return Completion("ok", "m", Usage(3, 4))

    return calls, call


def test_retries_throttling_then_succeeds_and_honours_retry_after() -> None:
    slept: list[float] = []
    calls, call = _flaky([LLMError("llm_throttled", "slow down", retry_after=2.5), LLMError("llm_timeout", "t")])
    result = with_retries(call, max_attempts=4, base_delay_s=0.01, sleep=slept.append)  # type: ignore[arg-type]
    assert result.text == "ok" and result.attempts == 3 and len(calls) == 3
    assert slept[0] == 2.5 and 0 <= slept[1] <= 0.08


def test_does_not_retry_what_cannot_succeed_and_stops_at_the_bound() -> None:
    calls, call = _flaky([LLMError("llm_auth", "bad key")])
    with pytest.raises(LLMError, match="llm_auth"):
        with_retries(call, max_attempts=4, sleep=lambda _: None)  # type: ignore[arg-type]
    assert len(calls) == 1
    calls, call = _flaky([LLMError("llm_unavailable", "down")] * 5)
    with pytest.raises(LLMError, match="llm_unavailable"):
        with_retries(call, max_attempts=3, sleep=lambda _: None)  # type: ignore[arg-type]
    assert len(calls) == 3
    with pytest.raises(ValueError, match="unknown"):
        LLMError("llm_oops", "x")


def test_cost_estimate() -> None:
    assert estimate_cost("amazon.nova-pro-v1:0", Usage(1000, 1000)) == pytest.approx(0.004)
    assert estimate_cost("some-local-model", Usage(10, 10)) is None


def test_dated_snapshots_use_their_family_price() -> None:
    assert estimate_cost("gpt-4o-mini-2024-07-18", Usage(1000, 0)) == pytest.approx(0.00015)
    assert estimate_cost("gpt-4o-2024-08-06", Usage(1000, 0)) == pytest.approx(0.0025)
