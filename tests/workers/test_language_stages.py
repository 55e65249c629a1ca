"""scale, guideline check and revise: the classical paths (local / rules backends), the hosted
vision and text paths against an OpenAI-compatible server with recorded answers, and the
local revise on the real SmolLM2 (marked slow)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from PIL import Image

from shared.config import Settings
from tests.factories import FakeOpenAI, Reply, chat_completion
from workers.checks import guideline
from workers.imaging import composition, compositor
from workers.language import revise, scale
from workers.language.text import MAX_CAPTION_CHARS, has_negation, is_instruction_like

CAPTION = "a red running shoe on an urban street at sunset, warm golden light, lifestyle product photography"
PARTS = {"products": ["red running shoe"], "backgrounds": ["urban street"], "themes": ["sunset"]}


def hosted(fake: FakeOpenAI, **overrides: Any) -> Settings:
    return Settings(
        llm_backend="openai", openai_base_url=fake.base_url, openai_api_key="sk-test", llm_max_attempts=1, **overrides
    )


def answer(payload: dict[str, Any]) -> Reply:
    return Reply(body=chat_completion(json.dumps(payload)))


@pytest.fixture(scope="module")
def composite() -> dict[str, Image.Image]:
    """A real candidate: a textured product composited on the brand backdrop, as generate makes it."""
    rgba = np.zeros((160, 240, 4), np.uint8)
    yy, xx = np.mgrid[:160, :240]
    rgba[..., 0] = 60 + 150 * ((xx // 20) % 2)  # coarse stripes: structure that survives downscaling
    rgba[..., 1] = 40 + yy
    rgba[..., 2] = 200 - xx // 2
    rgba[..., 3] = np.where(((yy - 80) / 78) ** 2 + ((xx - 120) / 118) ** 2 <= 1, 255, 0)
    cutout = Image.fromarray(rgba, "RGBA")
    layout = composition.plan([(512, 512)], cutout.size, rotations=(0,), cutout=cutout).layouts[7]
    layer = composition.place(cutout, layout)
    image = compositor.compose(layer, compositor.backdrop((512, 512), ["#E4572E"]))
    return {"candidate": image, "layer": layer, "product": cutout}


# ----------------------------------------------------------------------------- scale


def test_classical_scale_from_the_size_table() -> None:
    share, why = scale.classical_share(["camel wool jacket"], ["wooden bench"], 0.45)
    assert share == pytest.approx(0.533, abs=0.001) and "0.8 m" in why and "1.5 m" in why
    share, why = scale.classical_share(["gold watch"], ["marble counter"], 0.45)
    assert share == scale.MIN_SHARE and "held to" in why  # a watch is tiny, but it is the hero
    assert scale.classical_share(["flux capacitor"], [], 0.45)[0] == 0.45


def test_local_backend_scales_classically_and_says_why(composite: dict[str, Image.Image]) -> None:
    result = scale.scale(CAPTION, PARTS, composite["product"], composite["candidate"], Settings(llm_backend="local"))
    assert result["method"] == "classical" and "cannot see images" in result["fallback_reason"]
    assert scale.MIN_SHARE <= result["share"] <= scale.MAX_SHARE and result["calls"] == []


def test_hosted_scale_sends_both_images_and_clamps(server: FakeOpenAI, composite: dict[str, Image.Image]) -> None:
    server.script(answer({"share": 0.85, "reason": "A jacket should fill the frame."}))
    result = scale.scale(CAPTION, PARTS, composite["product"], composite["candidate"], hosted(server))
    assert result["method"] == "vision" and result["share"] == scale.MAX_SHARE and result["clamped"] is True
    content = server.requests[0].body["messages"][-1]["content"]
    assert [p["type"] for p in content] == ["text", "image_url", "image_url"]
    assert content[1]["image_url"]["url"].startswith("data:image/jpeg;base64,")  # the opaque canvas
    assert content[2]["image_url"]["url"].startswith("data:image/png;base64,")  # the cut-out keeps its alpha
    assert result["prompt_version"] == "scale.v1" and result["calls"][0]["backend"] == "openai"


def test_text_only_hosted_model_scales_classically(composite: dict[str, Image.Image]) -> None:
    settings = Settings(llm_backend="openai", openai_vision=False)
    result = scale.scale(CAPTION, PARTS, composite["product"], composite["candidate"], settings)
    assert result["method"] == "classical" and "text-only" in result["fallback_reason"]


def test_scale_names_bad_arguments(composite: dict[str, Image.Image]) -> None:
    with pytest.raises(ValueError, match="caption"):
        scale.scale("  ", PARTS, composite["product"], composite["candidate"], Settings(llm_backend="rules"))
    with pytest.raises(ValueError, match="canvas"):
        scale.scale(CAPTION, PARTS, composite["product"], None, Settings(llm_backend="rules"))  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- guideline check

BRAND = [{"text": "Show the brand's red on the product.", "flexible": True, "weight": 2.0}]


def test_local_guideline_check_is_classical_and_honest(composite: dict[str, Image.Image]) -> None:
    result = guideline.check(
        composite["candidate"],
        composite["layer"],
        composite["product"],
        CAPTION,
        BRAND,
        "strict",
        Settings(llm_backend="local"),
    )
    by_id = {v["guideline"]: v for v in result["verdicts"]}
    assert list(by_id) == [*guideline.BASELINE, "brand_1"]
    assert by_id["floating_product"]["status"] == "pass" and by_id["distorted_product"]["status"] == "pass"
    assert by_id["extra_objects"]["status"] == "unchecked" and by_id["brand_1"]["status"] == "unchecked"
    assert by_id["text_artefacts"]["status"] == "pass" and by_id["text_artefacts"]["method"] == "ocr"
    assert result["passed"] and result["unchecked"] == ["extra_objects", "brand_1"]
    assert result["router"]["unmapped"][0]["guideline"] == "brand_1" and not result["router"]["mapped"]
    assert "cannot see images" in result["fallback_reason"] and result["method"] == "classical"


def test_hosted_guideline_verdicts_and_policies(server: FakeOpenAI, composite: dict[str, Image.Image]) -> None:
    verdicts = [{"id": k, "passed": True, "reason": "fine"} for k in guideline.BASELINE]
    verdicts.append({"id": "brand_1", "passed": False, "reason": "The product shows no brand red.\nIt is grey."})
    server.script(answer({"verdicts": verdicts}))
    args = (composite["candidate"], composite["layer"], composite["product"], CAPTION, BRAND)
    strict = guideline.check(*args, "strict", hosted(server))
    assert strict["method"] == "vision" and not strict["passed"] and strict["failed"] == ["brand_1"]
    assert strict["verdicts"][-1]["reason"] == "The product shows no brand red. It is grey"  # one line
    assert guideline.check(*args, "flexible", hosted(server))["passed"]  # the brand rule is flexible
    weighted = guideline.check(*args, "weighted", hosted(server))
    assert weighted["weighted_share"] == pytest.approx(5 / 7, abs=0.001) and not weighted["passed"]
    sent = server.requests[0].body["messages"][-1]["content"]
    assert "brand_1: Show the brand's red on the product" in sent[0]["text"] and len(sent) == 3


def test_incomplete_hosted_answers_are_re_asked_then_filled_honestly(
    server: FakeOpenAI,
    composite: dict[str, Image.Image],
) -> None:
    server.script(answer({"verdicts": [{"id": "duplicated_product", "passed": True, "reason": "one shoe"}]}))
    result = guideline.check(
        composite["candidate"], composite["layer"], composite["product"], CAPTION, BRAND, "strict", hosted(server)
    )
    re_ask = server.requests[1].body["messages"][-1]["content"][0]["text"]
    assert len(server.requests) == 2 and "no verdict for" in re_ask
    by_id = {v["guideline"]: v for v in result["verdicts"]}
    assert by_id["duplicated_product"]["method"] == "vision" and by_id["floating_product"]["method"] == "classical"
    assert by_id["brand_1"]["status"] == "unchecked" and "incompletely twice" in result["fallback_reason"]


def test_guideline_check_names_bad_arguments(composite: dict[str, Image.Image]) -> None:
    with pytest.raises(ValueError, match="policy"):
        guideline.check(
            composite["candidate"],
            composite["layer"],
            composite["product"],
            CAPTION,
            [],
            "lenient",
            Settings(llm_backend="rules"),
        )


# ----------------------------------------------------------------------------- revise

CURRENT = {"caption": CAPTION, "negative_prompt": "blurry, text", "parts": {"subject": "a red running shoe"}}
FAILURES = [
    {"guideline": "floating_product", "count": 4, "reason": "the shoe floats above the street"},
    {"guideline": "brand_1", "count": 2, "reason": "no brand red"},
]


def test_rules_revision_adds_the_fixing_clause_and_negatives() -> None:
    result = revise.revise(CURRENT, FAILURES, Settings(llm_backend="rules"), ["Nike"])
    assert result["caption"] == CAPTION + ", resting firmly on the surface with a soft contact shadow"
    assert "floating product" in result["negative_prompt"] and "Nike" in result["negative_prompt"]
    assert result["previous_caption"] == CAPTION and result["backend"] == "rules"


def test_failure_summary_counts_and_orders() -> None:
    failed = [{"guideline": "a", "reason": "x"}, {"guideline": "b", "reason": "y"}, {"guideline": "b", "reason": "z"}]
    assert revise.failure_summary(failed) == [
        {"guideline": "b", "count": 2, "reason": "y"},
        {"guideline": "a", "count": 1, "reason": "x"},
    ]


def test_hosted_revision_is_guarded(server: FakeOpenAI) -> None:
    server.script(
        answer(
            {
                "caption": "Generate a red running shoe by Nike on an urban street, no people, "
                "with a soft contact shadow",
                "negative_terms": ["floating shoe"],
                "change": "grounded it",
            }
        )
    )
    result = revise.revise(CURRENT, FAILURES, hosted(server), ["Nike"])
    text = result["caption"]
    assert text.startswith("a red running shoe") and "Nike" not in text and not has_negation(text)
    assert {"people", "floating shoe", "Nike"} <= set(result["negative_prompt"].split(", "))
    assert result["guards"]["forbidden_removed"] == ["Nike"] and result["prompt_version"] == "revise.v1"


def test_hosted_revision_that_drops_the_product_falls_back(server: FakeOpenAI) -> None:
    server.script(answer({"caption": "a sneaker on a street with a contact shadow", "negative_terms": []}))
    result = revise.revise(CURRENT, FAILURES, hosted(server))
    assert len(server.requests) == 2 and "dropped the product words" in result["fallback_reason"]
    assert result["backend"] == "rules" and result["caption"].startswith(CAPTION)


@pytest.mark.slow
def test_local_revision_on_smollm2_keeps_the_caption_usable() -> None:
    result = revise.revise(CURRENT, FAILURES, Settings(llm_backend="local"))
    assert result["calls"] and all(c["tokens_out"] > 0 for c in result["calls"])  # the model really ran
    assert result["caption"].startswith(CAPTION) and len(result["caption"]) <= MAX_CAPTION_CHARS
    assert not has_negation(result["caption"]) and not is_instruction_like(result["caption"])
    assert result["backend"] in ("local", "rules")  # rules only with the reason the clause was refused
    assert (result["backend"] == "local") == (result["fallback_reason"] is None)
