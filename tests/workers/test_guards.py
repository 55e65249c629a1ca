"""The deterministic guards every language backend's output goes through."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workers.language import guards

EVAL = json.loads((Path(__file__).parents[1] / "data" / "briefs_eval.json").read_text(encoding="utf-8"))["briefs"]


def test_english_check_on_the_labelled_briefs() -> None:
    """Every labelled brief: its own language is told apart, its English translation passes. Two bare
    nouns ("Taza, cocina") carry no function word and pass: the check is for sentences, said in its doc."""
    for brief in EVAL:
        english = brief.get("english") or brief["brief"]
        assert guards.is_english(english), english
        if brief["lang"] != "en" and len(brief["brief"].split()) > 2:
            assert not guards.is_english(brief["brief"]), brief["brief"]


@pytest.mark.parametrize("text", ["红色跑鞋在城市街道上", "красные кроссовки на улице", "a Nike Air Max on a table"])
def test_english_check_on_scripts_and_brand_names(text: str) -> None:
    assert guards.is_english(text) is text.startswith("a ")


def test_forbidden_terms_are_removed_whole_and_commas_tidied() -> None:
    text, removed = guards.remove_terms("a shoe, Adidas-style, on a street, adidas's look, cheap", ["adidas", "cheap"])
    assert text == "a shoe, on a street, look" and removed == ["adidas", "cheap"]
    assert guards.remove_terms("badidas shoe", ["adidas"]) == ("badidas shoe", [])  # whole words only


def test_guard_prompt_moves_negations_strips_instructions_and_cuts() -> None:
    got = guards.guard_prompt("Generate an image of a bag on a table, no people, " + "warm light, " * 200, ["Gucci"])
    assert got.text.startswith("a bag on a table") and "no " not in got.text and got.negatives == ["people"]
    assert got.cut and len(got.text) <= guards.MAX_PROMPT_CHARS and not got.text.endswith(",")
    assert got.report()["english"] is True


def test_bad_arguments_name_themselves() -> None:
    with pytest.raises(TypeError, match="forbidden_terms"):
        guards.remove_terms("a shoe", "Nike")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="text"):
        guards.guard_prompt(None)  # type: ignore[arg-type]
