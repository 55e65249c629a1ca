"""Negations in the languages a brief may come in, and briefs nobody translated.

Without a translating LLM (the rules and local backends), a German "ohne Menschen" must still reach the
negative prompt, not the positive one, where the text encoder would read "Menschen"; and a caption made
from a brief that is not English is flagged as untranslated instead of passing silently.
"""

from __future__ import annotations

import re

import pytest

from shared.config import Settings
from workers.language.caption import caption
from workers.language.decompose import decompose
from workers.language.text import has_negation, split_negations

RULES = Settings(llm_backend="rules")
# (language, brief, the negated words that must leave the positive prompt)
BRIEFS = [
    ("de", "Ein Laufschuh auf einer Straße ohne Menschen", ["Menschen"]),
    ("de", "Eine Thermoskanne auf einem Holztisch, keine Personen, kein Text", ["Personen", "Text"]),
    ("fr", "Un sac à dos contre un mur de briques, sans personnes", ["personnes"]),
    ("fr", "Une montre sur un comptoir en marbre, pas de voitures, aucun logo", ["voitures", "logo"]),
    ("es", "Una botella de aceite sobre una mesa rústica, sin gente", ["gente"]),
    ("es", "Unas zapatillas en una cancha, ningún texto", ["texto"]),
    ("it", "Una borsa di pelle su un telo da spiaggia, senza persone", ["persone"]),
    ("it", "Degli occhiali da sole su un tavolo, nessun testo", ["testo"]),
    ("pt", "Um tênis de corrida numa pista de atletismo, sem pessoas", ["pessoas"]),
    ("pt", "Uma garrafa numa mesa, nenhuma pessoa", ["pessoa"]),
    ("nl", "Een keramische theepot op een vensterbank, zonder mensen", ["mensen"]),
    ("nl", "Een mok op een tafel, geen tekst", ["tekst"]),
]


def _has_word(text: str, word: str) -> bool:
    return re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.I) is not None


@pytest.mark.parametrize(("lang", "brief", "negated"), BRIEFS, ids=[f"{b[0]}-{i}" for i, b in enumerate(BRIEFS)])
def test_foreign_negations_go_to_the_negative_prompt(lang: str, brief: str, negated: list[str]) -> None:
    result = caption(decompose(brief, RULES), None, None, RULES)
    for word in negated:
        assert not _has_word(result["caption"], word), (lang, result["caption"])
        assert _has_word(result["negative_prompt"], word), (lang, result["negative_prompt"])
    # the negation word itself is gone too: nothing of "ohne Menschen" is left to read as "Menschen"
    assert not has_negation(result["caption"]), result["caption"]
    assert result["guards"]["untranslated"] is True and "not in English" in result["guards"]["translation"]


def test_split_negations_keeps_the_place_and_english_compounds() -> None:
    assert split_negations("eine Tasse ohne Henkel") == ("eine Tasse", ["Henkel"])
    assert split_negations("sans personnes") == ("", ["personnes"])
    assert split_negations("pas d'arbres") == ("", ["arbres"])
    # hyphenated English words and plain English are left alone
    assert split_negations("a sans-serif logo on a sinkhole") == ("a sans-serif logo on a sinkhole", [])
    assert split_negations("a non slip mat") == ("a non slip mat", [])


def test_an_english_brief_is_not_flagged() -> None:
    result = caption(decompose("the running shoe on an urban street at sunset, no people", RULES), None, None, RULES)
    assert result["guards"]["untranslated"] is False and result["guards"]["translation"] is None
    assert not _has_word(result["caption"], "people") and _has_word(result["negative_prompt"], "people")


def test_a_translated_brief_is_not_flagged() -> None:
    """A hosted backend translated the brief: decompose keeps the English next to the original."""
    decomposition = {
        "brief": "Ein Laufschuh auf einer Straße ohne Menschen",
        "english": "A running shoe on a street without people",
        "products": ["running shoe"],
        "backgrounds": ["street"],
        "themes": [],
        "negatives": ["people"],
    }
    result = caption(decomposition, None, None, RULES)
    assert result["guards"]["untranslated"] is False
    assert result["caption"] == "a running shoe on a street, product photography"
