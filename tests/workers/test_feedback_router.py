"""The feedback router (workers/language/feedback.py): the EN/DE keyword table clause by clause, the
structured reasons' fixed mapping, what it refuses to guess, and the hosted path against an
OpenAI-compatible server (valid answer, invalid JSON repaired, schema violations rejected)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.config import Settings
from shared.review import Change, Reason
from tests.factories import FakeOpenAI, Reply, chat_completion
from workers.language import guards
from workers.language.feedback import (
    BRAND_COLOUR_CLAUSE,
    LIGHT_CLAUSE,
    NO_TEXT_CLAUSE,
    RouteContext,
    Routed,
    route,
)
from workers.models.llm_api import LLMError

SHOWN = "6f1c2a1e-9a7b-4c1e-8d2f-3b5a7c9e1f20"
CONTEXT = RouteContext(background_asset_ids=[SHOWN], sizes=[{"width": 1080, "height": 1080}], qc_policy="weighted")
RULES = Settings(llm_backend="rules")


def changed(routed: Routed) -> dict[str, Any]:
    """Only the fields the change sets, JSON-shaped (UUIDs as strings)."""
    return routed.change.model_dump(mode="json", exclude_defaults=True)


# text -> the change it routes to; every clause routed (nothing left not understood)
ROUTED: list[tuple[str, dict[str, Any]]] = [
    ("Make the product bigger.", {"scale_steps": 1}),
    ("much larger please", {"scale_steps": 2}),
    ("The shoe is too small", {"scale_steps": 1}),
    ("It's not big enough", {"scale_steps": 1}),
    ("a bit smaller", {"scale_steps": -1}),
    ("Das Produkt ist zu groß", {"scale_steps": -1}),
    ("deutlich größer bitte", {"scale_steps": 2}),
    ("Move it to the left", {"placement": "left"}),
    ("put it on the right side", {"placement": "right"}),
    ("Produkt nach rechts", {"placement": "right"}),
    ("bitte mittig platzieren", {"placement": "centre"}),
    ("no rotation", {"rotation": False}),
    ("keep the bottle upright", {"rotation": False}),
    ("Das Produkt ist schief", {"rotation": False}),
    ("another background please", {"exclude_background_ids": [SHOWN]}),
    ("Der Hintergrund gefällt mir nicht", {"exclude_background_ids": [SHOWN]}),
    ("put it on a sandy beach", {"background_query": "sandy beach"}),
    ("bei Nacht am Strand", {"background_query": "beach", "caption_add": ["at night"]}),
    ("at sunset", {"caption_add": ["at sunset"]}),
    ("the product looks like it is floating", {"caption_add": [LIGHT_CLAUSE]}),
    ("There is weird text on the box", {"caption_add": [NO_TEXT_CLAUSE], "qc": 1}),
    ("stricter QC", {"qc": 1}),
    ("die Prüfung ist zu streng", {"qc": -1}),
    ("we need it as 1080x1920", {"sizes": [{"width": 1080, "height": 1920}]}),
    ("also a 9:16 story", {"sizes": [{"width": 1080, "height": 1920}]}),
    ("remove the plant", {"caption_remove": ["plant"], "caption_add": ["no plant"]}),
    ("Größer und nach links", {"scale_steps": 1, "placement": "left"}),
]


@pytest.mark.parametrize(("text", "expected"), ROUTED, ids=[t for t, _ in ROUTED])
def test_the_keyword_table_routes_each_clause(text: str, expected: dict[str, Any]) -> None:
    routed = route(text, [], CONTEXT, RULES)
    assert changed(routed) == expected
    assert routed.not_understood == [] and routed.router == "rules" and routed.model == "rules-v1"
    assert len(routed.notes) == 1 and routed.notes[0].startswith(f'"{text.rstrip(".")}" → ')


# Negations, contradictions, vague wishes and a scale word about something else: never guessed.
NOT_UNDERSTOOD = [
    "not bigger",
    "don't make it smaller",
    "nicht größer",
    "bigger or smaller, you decide",
    "left or right",
    "make it pop",
    "the text should be bigger",
    "It looks right",
    "Das ist gerade nicht gut",
    "more vibes",
]


@pytest.mark.parametrize("text", NOT_UNDERSTOOD)
def test_ambiguous_sentences_are_not_understood(text: str) -> None:
    routed = route(text, [], CONTEXT, RULES)
    assert routed.change.is_empty(), changed(routed)
    assert routed.not_understood and all(s in text for s in routed.not_understood)
    assert routed.notes == []


def test_a_contradiction_across_sentences_drops_both_and_keeps_the_rest() -> None:
    routed = route("Make it bigger. Move it left! Actually, make it smaller. Thanks!", [], CONTEXT, RULES)
    assert changed(routed) == {"placement": "left"}
    assert routed.not_understood == ["Make it bigger", "make it smaller"]  # "Actually" and "Thanks" ask nothing
    assert any("contradicts another request (scale)" in n for n in routed.notes)


def test_courtesy_alone_routes_nothing_and_names_nothing() -> None:
    routed = route("Thanks! Danke.", [], CONTEXT, RULES)
    assert routed.change.is_empty() and routed.not_understood == []


REASONS: list[tuple[Reason, dict[str, Any]]] = [
    (Reason.PRODUCT, {"qc": 1}),
    (Reason.BACKGROUND, {"exclude_background_ids": [SHOWN]}),
    (Reason.LIGHTING, {"caption_add": [LIGHT_CLAUSE]}),
    (Reason.TEXT_ARTEFACTS, {"caption_add": [NO_TEXT_CLAUSE], "qc": 1}),
    (Reason.OFF_BRAND_COLOUR, {"caption_add": [BRAND_COLOUR_CLAUSE], "qc": 1}),
]


@pytest.mark.parametrize(("reason", "expected"), REASONS, ids=[r.value for r, _ in REASONS])
def test_structured_reasons_map_by_the_table(reason: Reason, expected: dict[str, Any]) -> None:
    routed = route("", [reason], CONTEXT, RULES)
    assert changed(routed) == expected and routed.not_understood == []
    assert routed.notes[0].startswith(f"reason:{reason.value} → ")


@pytest.mark.parametrize("reason", [Reason.COMPOSITION, Reason.SCALE, Reason.OTHER])
def test_reasons_that_need_a_direction_are_not_understood_without_one(reason: Reason) -> None:
    alone = route("", [reason.value], CONTEXT, RULES)
    assert alone.change.is_empty() and alone.not_understood == [f"reason:{reason.value}"]
    # "at night" routes (enough for "other") but gives neither a placement nor a scale direction
    wrong = route("at night", [reason], CONTEXT, RULES)
    assert changed(wrong) == {"caption_add": ["at night"]}
    assert wrong.not_understood == ([] if reason is Reason.OTHER else [f"reason:{reason.value}"])


def test_a_reason_with_its_direction_in_the_text() -> None:
    routed = route("smaller and on the left", [Reason.SCALE, Reason.COMPOSITION], CONTEXT, RULES)
    assert changed(routed) == {"scale_steps": -1, "placement": "left"} and routed.not_understood == []
    assert "reason:scale → as the text says" in routed.notes


def test_what_would_change_nothing_is_said_not_routed() -> None:
    strict = RouteContext(qc_policy="strict")  # and the results were on the brand backdrop
    routed = route("stricter QC please", [Reason.PRODUCT, Reason.BACKGROUND, Reason.TEXT_ARTEFACTS], strict, RULES)
    assert changed(routed) == {"caption_add": [NO_TEXT_CLAUSE]}  # the text clause stays, the QC step does not
    assert routed.not_understood == ["stricter QC please", "reason:product", "reason:background"]
    assert any("QC is already strict" in n for n in routed.notes)
    assert any("no retrieved background to exclude" in n for n in routed.notes)


def test_a_reason_contradicting_the_text_is_not_understood_with_it() -> None:
    routed = route("QC is too strict", [Reason.PRODUCT], CONTEXT, RULES)
    assert routed.change.is_empty() and routed.not_understood == ["QC is too strict", "reason:product"]


def test_negative_clauses_reach_the_negative_prompt_through_the_caption_guards() -> None:
    routed = route("no people, remove the text", [], CONTEXT, RULES)
    caption = ", ".join(["a red shoe on a table", *routed.change.caption_add])
    guarded = guards.guard_prompt(caption)
    assert guarded.text == "a red shoe on a table"
    assert set(guarded.negatives) == {"people", "text", "lettering", "watermarks"}


def test_the_change_it_routes_starts_the_right_stage() -> None:
    assert route("bigger", [], CONTEXT, RULES).change.entry_stage() == "plan"
    assert route("at night", [], CONTEXT, RULES).change.entry_stage() == "caption"
    assert route("on a beach", [], CONTEXT, RULES).change.entry_stage() == "retrieve"
    assert route("looser QC", [], CONTEXT, RULES).change.entry_stage() == "rank"


# ----------------------------------------------------------------------------- hosted


def hosted(fake: FakeOpenAI, **overrides: Any) -> Settings:
    return Settings(
        llm_backend="openai", openai_base_url=fake.base_url, openai_api_key="sk-test", llm_max_attempts=1, **overrides
    )


def answer(payload: Any) -> Reply:
    return Reply(body=chat_completion(payload if isinstance(payload, str) else json.dumps(payload)))


GOOD = {
    "change": {"scale_steps": 2, "placement": "right", "exclude_background_ids": [SHOWN]},
    "not_understood": ["Make it pop!"],
    "notes": ["product two steps larger, on the right, another background"],
}
TEXT = "Viel größer, rechts, und ein anderer Hintergrund. Make it pop!"


def test_hosted_routes_the_text_and_the_table_maps_the_reasons(server: FakeOpenAI) -> None:
    server.script(answer(GOOD))
    routed = route(TEXT, [Reason.LIGHTING], CONTEXT, hosted(server))
    assert changed(routed) == {**GOOD["change"], "caption_add": [LIGHT_CLAUSE]}
    assert routed.not_understood == ["Make it pop!"] and routed.router == "openai"
    assert routed.prompt_version == "feedback_route.v1" and routed.fallback_reason is None
    assert [c["attempt"] for c in routed.calls] == ["first"] and routed.calls[0]["tokens_in"] == 42
    sent = server.requests[0].body
    assert TEXT in sent["messages"][-1]["content"] and SHOWN in sent["messages"][-1]["content"]
    assert sent["response_format"]["type"] == "json_schema"


def test_hosted_invalid_json_is_repaired_once(server: FakeOpenAI) -> None:
    server.script(answer('{"change": {"scale_steps": 2,'), answer(GOOD))
    routed = route(TEXT, [], CONTEXT, hosted(server))
    assert changed(routed)["scale_steps"] == 2 and len(server.requests) == 2
    assert [c["attempt"] for c in routed.calls] == ["first", "first-json-repair"]


def test_hosted_output_outside_the_change_schema_is_rejected(server: FakeOpenAI) -> None:
    made_up = {"change": {"scale_steps": 9, "brightness": "+20%"}, "not_understood": [], "notes": []}
    server.script(answer(made_up))
    with pytest.raises(LLMError, match="llm_malformed_json"):
        route(TEXT, [], CONTEXT, hosted(server))
    assert len(server.requests) == 2  # the answer and its one repair
    with pytest.raises(ValueError):
        Change.model_validate(made_up["change"])


def test_hosted_answer_beyond_the_feedback_is_re_asked_then_the_table_routes(server: FakeOpenAI) -> None:
    invented = {
        "change": {"exclude_background_ids": ["11111111-2222-3333-4444-555555555555"]},
        "not_understood": ["something the reviewer never wrote"],
        "notes": [],
    }
    server.script(answer(invented))
    routed = route("bigger, on a beach", [], CONTEXT, hosted(server))
    assert len(server.requests) == 2
    repair = server.requests[1].body["messages"][-1]["content"]
    assert "only name the backgrounds shown" in repair and "not a sentence of the feedback" in repair
    assert routed.router == "rules" and "openai answer invalid twice" in (routed.fallback_reason or "")
    assert changed(routed) == {"scale_steps": 1, "background_query": "beach"}
    assert [c["attempt"] for c in routed.calls] == ["first", "repair"]


def test_the_feedback_stage_backend_is_chosen_per_stage(server: FakeOpenAI) -> None:
    server.script(answer(GOOD))
    by_rules = route("bigger", [], CONTEXT, hosted(server, llm_stage_backends={"feedback": "rules"}))
    assert by_rules.router == "rules" and server.requests == []
    overridden = Settings(
        llm_backend="rules",
        llm_stage_backends={"feedback": "openai"},
        openai_base_url=server.base_url,
        llm_max_attempts=1,
    )
    assert route(TEXT, [], CONTEXT, overridden).router == "openai" and len(server.requests) == 1
    assert route("", [Reason.LIGHTING], CONTEXT, overridden).router == "rules"  # no text: no model call
    assert len(server.requests) == 1
