"""Language stage: rules decomposer, validation, captions, local LLM adapter, text embedder.

Tests marked `slow` load SmolLM2 (~20 s on 2 cores); they assert structure and
constraints, never a canned model string.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

from shared.config import Settings
from workers.language.caption import caption
from workers.language.decompose import decompose, field_errors
from workers.language.prompts import load_prompt
from workers.language.text import MAX_CAPTION_CHARS, cap_at_boundary, is_grounded
from workers.models import llm_local

NEGATION = re.compile(r"\b(no|not|without|never|none|nothing|nor|neither)\b(?!-)", re.I)
INSTRUCTION_START = re.compile(r"^\s*(please|generate|create|draw|make|render|an image of|a photo of)\b", re.I)
DEFAULTS = ("blurry", "distorted product", "extra objects", "text", "watermark")


@pytest.fixture()
def rules() -> Settings:
    return Settings(llm_backend="rules")


@pytest.fixture()
def local() -> Settings:
    return Settings(llm_backend="local")


def assert_caption_ok(out: dict[str, Any]) -> None:
    """The constraints every caption must meet, whatever produced it."""
    text = out["caption"]
    assert 0 < len(text) <= MAX_CAPTION_CHARS
    assert not NEGATION.search(text), text
    assert not INSTRUCTION_START.search(text), text
    assert all(term in out["negative_prompt"] for term in DEFAULTS)
    assert out["backend"] in ("local", "rules")
    assert isinstance(out["calls"], list)


# ----------------------------------------------------------------------------- rules decomposer


def test_rules_single_product(rules: Settings) -> None:
    d = decompose("the shoe on an urban street at sunset", rules)
    assert (d["products"], d["backgrounds"], d["themes"]) == (["shoe"], ["urban street"], ["sunset"])
    assert d["mood"] is None
    assert (d["backend"], d["model"], d["fallback_reason"], d["calls"]) == ("rules", "rules-v1", None, [])
    assert d["validation_error"] is None


def test_rules_two_products(rules: Settings) -> None:
    d = decompose("a handbag and sunglasses on a dining table", rules)
    assert d["products"] == ["handbag", "sunglasses"]
    assert d["backgrounds"] == ["dining table"]
    assert d["themes"] == []


@pytest.mark.parametrize(
    ("brief", "mood", "products"),
    [
        ("a perfume bottle on a silk sheet, romantic and dreamy mood", "romantic and dreamy", ["perfume bottle"]),
        ("a mug of coffee on a wooden desk with a calm vibe", "calm", ["mug of coffee"]),
        ("a phone next to a laptop, mood: playful", "playful", ["phone"]),
    ],
)
def test_rules_mood(rules: Settings, brief: str, mood: str, products: list[str]) -> None:
    d = decompose(brief, rules)
    assert d["mood"] == mood
    assert d["products"] == products
    assert d["backgrounds"] and all("mood" not in b and "vibe" not in b for b in d["backgrounds"])


def test_rules_strip_instructions_and_negations(rules: Settings) -> None:
    d = decompose("Generate an image of our watch on a marble counter in soft morning light, no people", rules)
    assert d["products"] == ["watch"]
    assert d["backgrounds"] == ["marble counter"]
    assert d["themes"] == ["soft morning light"]
    assert d["negatives"] == ["people"]


def test_rules_comma_list_brief(rules: Settings) -> None:
    d = decompose("a shoe, urban street, sunset", rules)
    assert (d["products"], d["backgrounds"], d["themes"]) == (["shoe"], ["urban street"], ["sunset"])


def test_decompose_input_checks(rules: Settings) -> None:
    with pytest.raises(ValueError, match="brief"):
        decompose("   ", rules)
    with pytest.raises(TypeError, match="brief"):
        decompose(42, rules)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="brief"):
        decompose("shoe " * 1000, rules)
    with pytest.raises(ValueError, match="llm_backend"):
        decompose("a shoe", Settings.model_construct(llm_backend="cloud"))


# ----------------------------------------------------------------------------- validation


def test_validation_names_the_field() -> None:
    brief = "the shoe on an urban street at sunset"
    good = {"products": ["shoe"], "backgrounds": ["urban street"], "themes": ["sunset"]}
    assert field_errors(good, brief) == {}
    errors = field_errors(
        {"products": ["shoe on an urban street"], "backgrounds": ["brick wall"], "themes": ["golden hour"]}, brief
    )
    assert set(errors) == {"products", "backgrounds", "themes"}
    assert "place or time" in errors["products"]
    assert "not in the brief" in errors["backgrounds"] and "not in the brief" in errors["themes"]
    assert "products" in field_errors({"products": [], "backgrounds": ["street"]}, brief)


def test_validation_rejects_whole_brief_and_long_items() -> None:
    brief = "red sneakers near a pool"
    errors = field_errors({"products": ["red sneakers near a pool"], "backgrounds": ["pool"]}, brief)
    assert "whole brief" in errors["products"]
    long = "red " * 9 + "sneakers"
    assert "words" in field_errors({"products": [long], "backgrounds": ["pool"]}, brief)["products"]


# ----------------------------------------------------------------------------- captions (template)


def test_template_caption_topology(rules: Settings) -> None:
    d = decompose("the shoe on an urban street at sunset", rules)
    out = caption(d, "running shoe", None, rules)
    assert out["caption"] == "a running shoe on an urban street at sunset, product photography"
    assert (out["backend"], out["fallback_reason"], out["prompt_version"]) == ("rules", None, None)
    assert_caption_ok(out)


def test_caption_moves_negations_and_strips_instructions(rules: Settings) -> None:
    d = decompose("a perfume bottle on a silk sheet, romantic mood, without people", rules)
    out = caption(d, "Generate an image of a perfume bottle without box", "a silk sheet, no wrinkles", rules)
    assert_caption_ok(out)
    assert out["caption"].startswith("a perfume bottle on a silk sheet")
    for moved in ("people", "box", "wrinkles"):
        assert moved in out["negative_prompt"]


def test_caption_length_cap_at_boundary(rules: Settings) -> None:
    d = decompose("a watch on a marble counter", rules)
    long_bg = ", ".join(f"polished marble counter detail number {i}" for i in range(60))
    out = caption(d, None, long_bg, rules)
    assert_caption_ok(out)
    full = "a watch on " + long_bg
    assert full.startswith(out["caption"])
    assert full[len(out["caption"])] == ","  # cut exactly at a comma boundary


def test_cap_at_boundary_prefers_sentence_or_comma() -> None:
    text = "alpha beta, gamma delta. epsilon zeta eta"
    assert cap_at_boundary(text, 30) == "alpha beta, gamma delta"
    assert cap_at_boundary("a" * 50, 10) == "a" * 10
    assert cap_at_boundary("short", 10) == "short"
    with pytest.raises(ValueError, match="limit"):
        cap_at_boundary("x", 0)


def test_caption_input_checks(rules: Settings) -> None:
    with pytest.raises(TypeError, match="decomposition"):
        caption("a shoe", None, None, rules)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="products"):
        caption({"products": "shoe"}, None, None, rules)
    with pytest.raises(TypeError, match="product_title"):
        caption({"products": ["shoe"]}, 7, None, rules)  # type: ignore[arg-type]


def test_prompt_templates_are_versioned() -> None:
    t = load_prompt("decompose", "v1")
    assert t.id == "decompose.v1" and t.examples and "$brief" in t.user
    assert load_prompt("caption").id == "caption.v1"
    with pytest.raises(ValueError, match="version"):
        load_prompt("caption", "latest")
    with pytest.raises(FileNotFoundError):
        load_prompt("caption", "v99")


# ----------------------------------------------------------------------------- local backend, stubbed model


def fake_generate_fields(answers: list[dict[str, Any]]) -> Any:
    """Stand-in for llm_local.generate_fields that replays answers (fixed fields win)."""
    queue = list(answers)

    def fake(system: str, user: str, fields: Any, *args: Any, **kwargs: Any) -> llm_local.FieldsResult:
        answer = queue.pop(0)
        values = {f.name: (f.fixed if f.fixed is not None else answer.get(f.name, "")) for f in fields}
        call = {"model": "fake", "latency_s": 0.01, "tokens_in": 10, "tokens_out": 3, "field": "x"}
        return llm_local.FieldsResult(values=values, calls=[call])

    return fake


def test_local_decompose_valid_is_used(monkeypatch: pytest.MonkeyPatch, local: Settings) -> None:
    answer = {"products": ["shoe"], "backgrounds": ["urban street"], "themes": ["sunset"], "mood": ""}
    monkeypatch.setattr(llm_local, "generate_fields", fake_generate_fields([answer]))
    d = decompose("the shoe on an urban street at sunset", local)
    assert (d["backend"], d["fallback_reason"], d["prompt_version"]) == ("local", None, "decompose.v1")
    assert d["products"] == ["shoe"] and len(d["calls"]) == 1


def test_local_decompose_repair_then_fallback(monkeypatch: pytest.MonkeyPatch, local: Settings) -> None:
    bad = {"products": ["shoe"], "backgrounds": ["brick wall"], "themes": ["sunset"], "mood": "nightmare"}
    worse = {"backgrounds": ["shoe"]}
    monkeypatch.setattr(llm_local, "generate_fields", fake_generate_fields([bad, worse]))
    d = decompose("the shoe on an urban street at sunset", local)
    assert d["backend"] == "rules" and d["products"] == ["shoe"]
    assert "brick wall" in d["fallback_reason"] and "repair" in d["fallback_reason"]
    assert [c["attempt"] for c in d["calls"]] == ["first", "repair"]


def test_local_decompose_repair_succeeds(monkeypatch: pytest.MonkeyPatch, local: Settings) -> None:
    bad = {"products": ["handbag", "sunglasses"], "backgrounds": ["dining table"], "themes": ["dining table"]}
    fixed = {"themes": []}
    monkeypatch.setattr(llm_local, "generate_fields", fake_generate_fields([bad, fixed]))
    d = decompose("a handbag and sunglasses on a dining table", local)
    assert d["backend"] == "local" and d["themes"] == [] and d["backgrounds"] == ["dining table"]


def test_local_decompose_missing_model_falls_back(tmp_path: Any) -> None:
    settings = Settings(llm_backend="local", llm_gguf_path=tmp_path / "missing.gguf")
    d = decompose("the shoe on an urban street at sunset", settings)
    assert d["backend"] == "rules" and "unavailable" in d["fallback_reason"]


def test_local_caption_sanitises_model_clauses(
    monkeypatch: pytest.MonkeyPatch, local: Settings, rules: Settings
) -> None:
    answer = {
        "lighting": "warm golden light without harsh shadows",
        "style": "Create a photo of lifestyle product photography",
    }
    monkeypatch.setattr(llm_local, "generate_fields", fake_generate_fields([answer]))
    d = decompose("the shoe on an urban street at sunset", rules)
    out = caption(d, "running shoe", None, local)
    assert_caption_ok(out)
    assert out["backend"] == "local" and out["fallback_reason"] is None
    assert out["caption"] == (
        "a running shoe on an urban street at sunset, warm golden light, lifestyle product photography"
    )
    assert "harsh shadows" in out["negative_prompt"]


def test_local_caption_invalid_falls_back(monkeypatch: pytest.MonkeyPatch, local: Settings, rules: Settings) -> None:
    answers = [{"lighting": "make it pop", "style": "x"}, {"lighting": "use a shoe", "style": "x"}]
    monkeypatch.setattr(llm_local, "generate_fields", fake_generate_fields(answers))
    d = decompose("the shoe on an urban street at sunset", rules)
    out = caption(d, None, None, local)
    assert_caption_ok(out)
    assert out["backend"] == "rules" and "lighting" in out["fallback_reason"]
    assert out["caption"] == "a shoe on an urban street at sunset, product photography"


# ----------------------------------------------------------------------------- llm_local helpers (no model)


def test_scan_value_and_sanitize() -> None:
    assert llm_local.scan_value('urban street"]') == ("urban street", "quote", False)
    assert llm_local.scan_value('shoe", "') == ("shoe", "quote", True)
    assert llm_local.scan_value('shoe"') is None  # the delimiter after the quote is still unknown
    assert llm_local.scan_value("a\nb") == ("a", "newline", False)
    assert llm_local.sanitize('  "warm\t golden\x07 light"  ') == "warm golden light"
    assert llm_local.sanitize("men's  shoe") == "men's shoe"


def test_llm_input_checks() -> None:
    with pytest.raises(ValueError, match="max_new_tokens"):
        llm_local.fill("s", "u", '{"a": "', 0)
    with pytest.raises(ValueError, match="user"):
        llm_local.fill("s", " ", '{"a": "', 4)
    with pytest.raises(ValueError, match="name"):
        llm_local.FieldSpec("bad name")
    with pytest.raises(ValueError, match="fields"):
        llm_local.generate_fields("s", "u", [])


# ----------------------------------------------------------------------------- real models


@pytest.mark.slow
def test_local_llm_really_runs(local: Settings) -> None:
    lm = llm_local.load(local)
    assert lm.model_id == "SmolLM2-135M-Instruct.Q4_1"
    brief = "a leather handbag on a dining table at sunset"
    d = decompose(brief, local)
    assert d["calls"] and all(c["tokens_in"] > 0 and c["latency_s"] > 0 for c in d["calls"])
    assert all(c["model"] == lm.model_id for c in d["calls"])
    if d["backend"] == "local":
        assert d["fallback_reason"] is None and d["validation_error"] is None
        assert all(is_grounded(p, brief) for p in d["products"])
    else:  # the fallback must say what the model got wrong
        assert d["fallback_reason"] and "model output invalid" in d["fallback_reason"]
    assert d["products"] and d["backgrounds"]
    out = caption(d, None, None, local)
    assert_caption_ok(out)
    assert out["calls"] and out["prompt_version"] == "caption.v1"
    assert (out["backend"] == "local") == (out["fallback_reason"] is None)


def test_text_embedder() -> None:
    from workers.models import text_embedder

    vecs = text_embedder.embed(["red running shoe", "sneaker for running", "kitchen table"])
    assert len(vecs) == 3 and all(len(v) == 384 for v in vecs)
    assert all(math.isclose(sum(x * x for x in v), 1.0, abs_tol=1e-4) for v in vecs)
    shoe, sneaker, table = vecs
    dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True))  # noqa: E731
    assert dot(shoe, sneaker) > dot(shoe, table)
    assert text_embedder.embed([]) == []
    assert "MiniLM" in text_embedder.model_id()
    with pytest.raises(TypeError, match="texts"):
        text_embedder.embed("a shoe")  # type: ignore[arg-type]
