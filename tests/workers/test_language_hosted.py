"""decompose and caption on a hosted backend (an OpenAI-compatible server answering recorded,
realistic responses): translation, the field checks and their one re-ask, the rules fallback, and
a misconfigured backend failing the stage by name."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.config import Settings
from tests.factories import FakeOpenAI, Reply, chat_completion
from workers.language import caption as captioning
from workers.language.decompose import decompose
from workers.language.text import has_negation, is_instruction_like


def hosted(fake: FakeOpenAI, **overrides: Any) -> Settings:
    return Settings(
        llm_backend="openai", openai_base_url=fake.base_url, openai_api_key="sk-test", llm_max_attempts=2, **overrides
    )


def answer(payload: dict[str, Any]) -> Reply:
    return Reply(body=chat_completion(json.dumps(payload)))


def test_decompose_translates_and_checks_the_parts(server: FakeOpenAI) -> None:
    server.script(
        answer(
            {
                "english": "the red running shoe on an urban street at sunset in autumn, for young runners,"
                " energetic mood",
                "products": ["the red running shoe"],
                "backgrounds": ["urban street"],
                "themes": ["sunset"],
                "mood": "energetic",
                "season": "autumn",
                "audience": "runners from Mars",
            }
        )
    )
    result = decompose(
        "der rote Laufschuh auf einer Stadtstraße bei Sonnenuntergang im Herbst, für junge Läufer, energische Stimmung",
        hosted(server),
    )
    assert result["products"] == ["red running shoe"] and result["backgrounds"] == ["urban street"]
    assert result["themes"] == ["sunset"] and result["mood"] == "energetic" and result["season"] == "autumn"
    assert result["audience"] is None  # "from Mars" is not in the brief: dropped, not passed on
    assert result["english"].startswith("the red running shoe") and result["backend"] == "openai"
    assert result["prompt_version"] == "decompose.v3" and result["fallback_reason"] is None
    assert result["guards"] == {"english": True}
    call = result["calls"][0]
    assert call["backend"] == "openai" and call["tokens_in"] == 42 and call["cost_usd"] > 0
    sent = server.requests[0].body
    assert sent["messages"][0]["role"] == "system" and "english" in sent["messages"][0]["content"]
    assert sent["response_format"]["type"] == "json_schema"


def test_decompose_re_asks_with_the_failed_check_then_falls_back_to_rules(server: FakeOpenAI) -> None:
    made_up = answer(
        {"english": None, "products": ["shoe"], "backgrounds": ["mountain lake"], "themes": [], "mood": None}
    )
    server.script(made_up, made_up)
    result = decompose("a shoe on a wooden table", hosted(server))
    assert len(server.requests) == 2
    assert "wrong" in server.requests[1].body["messages"][-1]["content"]  # the repair turn names the error
    assert result["backend"] == "rules" and "openai output invalid twice" in result["fallback_reason"]
    assert result["products"] == ["shoe"] and [c["attempt"] for c in result["calls"]] == ["first", "repair"]


def test_caption_clauses_from_the_hosted_model(server: FakeOpenAI) -> None:
    server.script(
        answer(
            {
                "pose": "standing on its sole",
                "lighting": "warm golden hour light",
                "camera": "low angle shot",
                "style": "lifestyle product photography",
            }
        )
    )
    parts = {
        "products": ["red running shoe"],
        "backgrounds": ["urban street"],
        "themes": ["sunset"],
        "mood": None,
        "negatives": [],
        "season": "autumn",
    }
    result = captioning.caption(parts, "Stride running shoe", None, hosted(server))
    assert result["caption"] == (
        "a Stride running shoe on an urban street at sunset in autumn, standing on its sole, "
        "warm golden hour light, low angle shot, lifestyle product photography"
    )
    assert result["backend"] == "openai" and result["prompt_version"] == "caption.v2"
    assert not is_instruction_like(result["caption"]) and not has_negation(result["caption"])


def test_the_guards_hold_on_a_hosted_caption(server: FakeOpenAI) -> None:
    """An instruction, a negation and a competitor's name from the model never reach the positive prompt."""
    server.script(
        answer(
            {
                "pose": "standing upright without laces",
                "lighting": "soft light, no harsh shadows",
                "camera": "",
                "style": "Nike-style sports photo",
            }
        )
    )
    parts = {"products": ["running shoe"], "backgrounds": ["track"], "themes": [], "mood": None, "negatives": []}
    result = captioning.caption(parts, None, None, hosted(server), forbidden_terms=["Nike", "Adidas"])
    caption = result["caption"]
    assert "Nike" not in caption and not has_negation(caption) and not is_instruction_like(caption)
    assert result["backend"] == "openai" and "sports photo" in caption and "standing upright" in caption
    assert "Nike" in result["negative_prompt"] and "harsh shadows" in result["negative_prompt"]
    assert "laces" in result["negative_prompt"]
    assert result["guards"]["forbidden_removed"] == ["Nike"] and result["guards"]["english"] is True


def test_an_untranslated_hosted_answer_is_re_asked(server: FakeOpenAI) -> None:
    german = answer(
        {"english": None, "products": ["Laufschuh"], "backgrounds": ["einer Stadtstraße"], "themes": [], "mood": None}
    )
    server.script(
        german,
        answer(
            {
                "english": "a running shoe on a city street",
                "products": ["running shoe"],
                "backgrounds": ["city street"],
                "themes": [],
                "mood": None,
            }
        ),
    )
    result = decompose("ein Laufschuh auf einer Stadtstraße", hosted(server))
    assert "not English" in server.requests[1].body["messages"][-1]["content"]
    assert result["products"] == ["running shoe"] and result["backend"] == "openai"


def test_unreachable_backend_raises_a_named_error() -> None:
    from workers.models.llm_api import LLMError

    settings = Settings(
        llm_backend="openai", openai_base_url="http://127.0.0.1:9/v1", llm_max_attempts=1, llm_timeout_seconds=2
    )
    with pytest.raises(LLMError, match="llm_unavailable"):
        decompose("a shoe on a table", settings)


def test_a_misconfigured_backend_fails_the_stage_at_once(server: FakeOpenAI) -> None:
    from workers.engine.context import StageError
    from workers.pipeline import decompose as decompose_stage

    server.script(Reply(status=401, body={"error": {"message": "Incorrect API key provided", "type": "auth"}}))

    class Ctx:  # what decompose reads
        campaign = type("C", (), {"brief": "a shoe on a table", "state": {}})()
        settings = hosted(server)
        state_patch: dict[str, Any] = {}

    with pytest.raises(StageError) as failed:
        decompose_stage.run(Ctx())  # type: ignore[arg-type]
    assert failed.value.code == "llm_auth" and failed.value.message.startswith("decompose: ")
    assert len(server.requests) == 1  # not retried: it cannot succeed
