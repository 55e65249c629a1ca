"""Prompts within the generator's text-encoder budget: SD's CLIP reads 77 positions (75 tokens + BOS/EOS).

The configured SD model's own tokenizer counts when it is there (a tiny CLIP BPE tokenizer written from a
vocabulary here, as the SD tests do); otherwise the documented estimate, which must never count fewer
tokens than CLIP's BPE does for English.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import Settings
from tests.tiny_tokenizer import write_clip_tokenizer
from workers.language import budget, guards
from workers.language.caption import caption
from workers.language.revise import within_budget
from workers.models import prompt_tokenizer

# Content tokens (no BOS/EOS) of CLIP ViT-L/14's BPE (the SD 1.x/2/XL vocabulary, 49 408 tokens), measured
# with transformers' CLIPTokenizer on the real vocabulary; the estimate must never be below them.
MEASURED_CLIP_TOKENS = {
    "a running shoe on an urban street at sunset, warm golden light, eye-level shot, energetic mood, "
    "product photography": 24,
    "a ceramic mug with a hole in its handle on a marble kitchen counter, soft morning light": 18,
    "bioluminescent jellyfish lamp beside a terrarium, chiaroscuro lighting, 35mm photograph": 22,
    "the sneaker's sole, 4.5 inch, 1,000 pairs!!": 17,
    "a stainless-steel water bottle on wet gravel after rain, overcast daylight, shallow depth of field": 19,
    "Nike Air Max 90 on a basketball court at dusk, neon rim light, low-angle shot, cinematic mood": 23,
    "tqdmupto gguf lhnwrk kubectl": 16,  # identifiers CLIP splits hardest
    "a café au lait on a crème brûlée tray": 16,
}
# A few BPE merges: the tiny tokenizer keeps these whole and splits everything else into characters.
MERGES = [("s", "h"), ("sh", "o"), ("sho", "e</w>"), ("o", "n</w>"), ("t", "h"), ("th", "e</w>")]
BRIEF = {
    "brief": "the running shoe on an urban street at sunset",
    "products": ["running shoe"],
    "backgrounds": ["urban street"],
    "themes": ["sunset"],
    "mood": "energetic",
    "negatives": ["people"],
}


@pytest.fixture
def sd_model(tmp_path: Path) -> Path:
    """An SD model folder holding only its tokenizer/ (all the caption stage loads of it)."""
    (tmp_path / "sd" / "tokenizer").mkdir(parents=True)
    write_clip_tokenizer(tmp_path / "sd" / "tokenizer", MERGES)
    return tmp_path / "sd"


def tokenizer_of(model: Path) -> prompt_tokenizer.PromptTokenizer:
    from transformers import CLIPTokenizer

    loaded = CLIPTokenizer.from_pretrained(str(model / "tokenizer"))
    return prompt_tokenizer.PromptTokenizer(str(model), 77, loaded)


@pytest.mark.parametrize("text", list(MEASURED_CLIP_TOKENS))
def test_estimate_never_undercounts_clip(text: str) -> None:
    estimate, real = budget.estimate_clip_tokens(text), MEASURED_CLIP_TOKENS[text]
    assert real <= estimate <= 3 * real


def test_estimate_counts_bytes_where_bpe_can_split_to_bytes() -> None:
    assert budget.estimate_clip_tokens("") == 0
    assert budget.estimate_clip_tokens("the") == 1  # a whole-word token of CLIP's vocabulary
    assert budget.estimate_clip_tokens("zz") == 2 and budget.estimate_clip_tokens("1024") == 4  # digits one by one
    assert budget.estimate_clip_tokens("日本") == 6  # three UTF-8 bytes each


def test_sd_model_tokenizer_counts(sd_model: Path) -> None:
    got = budget.budget_for(Settings(generator="sd-inpaint", sd_model=str(sd_model)))
    assert got.tokenizer == f"clip-bpe:{sd_model}" and got.limit == 75 and got.fallback_reason is None
    reference = tokenizer_of(sd_model)
    for text in ("a shoe on the street", "the shoe", "sunset, warm light"):
        assert got.count(text) == reference.count(text)
    assert got.count("the shoe") == 2 and got.count("sunset") == 6  # merged words whole, the rest by letter


def test_without_sd_or_its_tokenizer_the_estimate_counts(tmp_path: Path) -> None:
    compositor = budget.budget_for(Settings())  # reads no prompt: only the shared character cap
    assert compositor.tokenizer == budget.CHARACTERS and compositor.limit == 1024
    assert compositor.count("a shoe, low angle close-up shot") == 31
    missing = budget.budget_for(Settings(generator="sd-inpaint", sd_model=str(tmp_path / "absent")))
    assert missing.tokenizer == budget.ESTIMATE and missing.limit == 75
    assert missing.fallback_reason is not None and "not loadable" in missing.fallback_reason


def test_caption_fits_the_sd_tokenizer_dropping_the_least_important_clause_first(sd_model: Path) -> None:
    settings = Settings(llm_backend="rules", generator="sd-inpaint", sd_model=str(sd_model))
    result = caption(BRIEF, "Aero running shoe", "busy downtown avenue with glass towers", settings)
    reference = tokenizer_of(sd_model)
    report = result["guards"]
    assert report["tokenizer"] == f"clip-bpe:{sd_model}" and report["token_limit"] == 75
    assert report["tokens"] == reference.count(result["caption"]) <= 75
    # "product photography" (the template style) goes before the brief's own mood; the subject stays first
    assert report["dropped_for_tokens"] == ["product photography"] and report["cut"]
    assert result["caption"].startswith("an Aero running shoe") and result["caption"].endswith("energetic mood")
    assert report["negative_tokens"] == reference.count(result["negative_prompt"]) <= 75
    assert "people" in result["negative_prompt"] or "people" in report["negative_dropped"]


def test_compositor_caption_is_untouched_and_counted_in_characters() -> None:
    result = caption(BRIEF, "Aero running shoe", None, Settings(llm_backend="rules"))
    report = result["guards"]
    assert report["tokenizer"] == budget.CHARACTERS and report["dropped_for_tokens"] == [] and not report["cut"]
    assert report["tokens"] == len(result["caption"]) <= 1024
    assert result["caption"].endswith("product photography")


def test_one_clause_too_long_is_cut_at_a_word_boundary() -> None:
    words = " ".join(f"word{i}" for i in range(60))
    got = guards.fit_tokens([f"a shoe on {words}", "soft light"], budget.estimate_budget())
    assert got.dropped == ["soft light"] and got.cut and got.tokens <= 75
    assert f"a shoe on {words}".startswith(got.text) and not got.text.endswith(" ")


def test_importance_must_name_every_clause_once() -> None:
    with pytest.raises(ValueError, match="importance"):
        guards.fit_tokens(["a", "b"], budget.estimate_budget(), [0, 0])


def test_a_revision_keeps_its_new_clause(sd_model: Path) -> None:
    """Revise adds its fix as the last clause: over the budget, the middle clauses go first."""
    sd = budget.budget_for(Settings(generator="sd-inpaint", sd_model=str(sd_model)))
    current = {
        "caption": "a shoe on a street, warm golden light at dusk, wide-angle low eye-level shot, "
        "a single product in the frame",
        "negative_prompt": "blurry, text",
        "guards": {"cut": False},
    }
    assert sd.count(current["caption"]) > 75
    result = within_budget(current, sd)
    assert result["caption"] == "a shoe on a street, warm golden light at dusk, a single product in the frame"
    assert result["guards"]["dropped_for_tokens"] == ["wide-angle low eye-level shot"] and result["guards"]["cut"]
    assert result["guards"]["tokens"] <= 75 and result["negative_prompt"] == "blurry, text"
