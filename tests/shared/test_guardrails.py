"""Input guardrails: blocked-term folding against evasion, and each hosted backend over real HTTP against a local
server speaking its wire format (OpenAI moderations JSON; Bedrock ApplyGuardrail, Comprehend DetectToxicContent and
Rekognition DetectModerationLabels through boto3, so botocore signs, sends and parses for real)."""

from __future__ import annotations

import base64
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import pytest

from shared import guardrails
from shared.config import Settings
from tests.factories import FakeOpenAI, Reply

TENANT_TERMS = ["Schnapps", "red bull*", "可口可乐"]


@pytest.mark.parametrize(
    ("text", "term"),
    [
        ("Buy C0CA1NE now", "cocaine"),  # leetspeak and case
        ("Ｃｏｃａｉｎｅ on a beach", "cocaine"),  # fullwidth letters
        ("соcaine", "cocaine"),  # Cyrillic с and о
        ("co\u200bcaine", "cocaine"),  # a zero-width space inside
        ("a bottle of schnäpps", "Schnapps"),  # accents
        ("SCHNAPPS!", "Schnapps"),  # trailing punctuation is not a letter
        ("S c h n a p p s at sunset", "Schnapps"),  # spaced out
        ("k.i.l.l y.o.u.r.s.e.l.f", "kill yourself"),  # dotted, across two words
        ("RED BULLS on the shelf", "red bull*"),  # prefix term
        ("we drink 可口可乐 daily", "可口可乐"),  # a script without spaces matches anywhere
        ("Anleitung: Enthauptung", "enthauptung"),  # German
        ("una decapitación", "decapitacion"),  # Spanish, accent folded
    ],
)
def test_blocked_terms_survive_evasion(text: str, term: str) -> None:
    found = guardrails.blocked_term(text, guardrails.terms_for(Settings(), TENANT_TERMS))
    assert found is not None and found.text == term


@pytest.mark.parametrize(
    "text",
    [
        "the running shoe on an urban street at sunset",
        "a classy glass of sparkling water",  # "ass" inside words is no word
        "heroine of the day",  # whole words: heroin is not heroine
        "Schnappschuss in Berlin",  # a German snapshot, not the tenant's Schnapps
        "red bicycle",
    ],
)
def test_ordinary_copy_passes(text: str) -> None:
    assert guardrails.blocked_term(text, guardrails.terms_for(Settings(), TENANT_TERMS)) is None


def test_operator_terms_and_default_list_switch() -> None:
    plain = Settings(guardrails_default_terms=False, guardrails_blocked_terms="vape, e-cigarette")
    terms = guardrails.terms_for(plain, [])
    assert guardrails.blocked_term("cocaine", terms) is None  # the built-in list is off
    hit = guardrails.blocked_term("new VAPE flavours", terms)
    assert hit is not None and hit.category == "blocked_term"


def test_screen_text_names_field_and_category_and_reports_blocklist_only() -> None:
    with pytest.raises(guardrails.InputRefused) as refused:
        guardrails.screen_text({"title": "Bottle", "description": "crystal meth lab"}, Settings())
    assert refused.value.finding == guardrails.Finding("description", "illegal_drugs", "blocklist", "crystal meth")
    assert guardrails.screen_text({"brief": "a shoe"}, Settings()) == "blocklist"
    assert guardrails.screen_image(b"png", Settings()) == guardrails.NO_IMAGE_BACKEND


# ------------------------------------------------------------------------------------------ hosted backends


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    import threading

    fake = FakeOpenAI()
    thread = threading.Thread(target=fake.httpd.serve_forever, daemon=True)
    thread.start()
    yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


def _moderation(*flags: dict[str, bool]) -> dict[str, Any]:
    return {
        "id": "modr-1",
        "model": "omni-moderation-latest",
        "results": [{"flagged": any(f.values()), "categories": f, "category_scores": {}} for f in flags],
    }


def _openai(server: FakeOpenAI, **overrides: Any) -> Settings:
    return Settings(
        guardrails_text_backend="openai",
        moderation_openai_url=server.base_url,
        moderation_openai_api_key="sk-test",
        egress_allowlist=["127.0.0.0/8"],
        guardrails_timeout_seconds=1.0,
        **overrides,
    )


def test_openai_moderation_refuses_the_flagged_field(server: FakeOpenAI) -> None:
    server.script(Reply(body=_moderation({"violence": False}, {"violence": True, "hate": False})))
    with pytest.raises(guardrails.InputRefused) as refused:
        guardrails.screen_text({"brief": "a shoe", "safe_zones[0].label": "some text"}, _openai(server))
    assert refused.value.finding == guardrails.Finding("safe_zones[0].label", "violence", "openai-moderation")
    sent = server.requests[-1]
    assert sent.path == "/v1/moderations" and sent.headers["authorization"] == "Bearer sk-test"
    assert sent.body == {"model": "omni-moderation-latest", "input": ["a shoe", "some text"]}

    server.script(Reply(body=_moderation({"violence": False})))
    assert guardrails.screen_text({"brief": "a shoe"}, _openai(server)) == "blocklist + openai-moderation"


def test_blocked_terms_are_checked_before_the_hosted_call(server: FakeOpenAI) -> None:
    server.script(Reply(body=_moderation({"violence": False})))
    with pytest.raises(guardrails.InputRefused):
        guardrails.screen_text({"brief": "c0caine"}, _openai(server))
    assert server.requests == []


@pytest.mark.parametrize(
    "reply", [Reply(status=500, body={"error": "boom"}), Reply(body="not json"), Reply(delay_s=2.0, body={})]
)
def test_a_failing_backend_fails_closed_by_default_and_open_when_asked(server: FakeOpenAI, reply: Reply) -> None:
    server.script(reply)
    with pytest.raises(guardrails.ModerationUnavailable) as failed:
        guardrails.screen_text({"brief": "a shoe"}, _openai(server))
    assert failed.value.backend == "openai-moderation"
    record = guardrails.screen_text({"brief": "a shoe"}, _openai(server, guardrails_text_on_error="open"))
    assert record.startswith("blocklist; not screened by openai-moderation: unavailable (")


def test_bedrock_apply_guardrail_over_http(server: FakeOpenAI, aws_env: None) -> None:
    intervened = {
        "usage": {},
        "action": "GUARDRAIL_INTERVENED",
        "outputs": [{"text": "Sorry."}],
        "assessments": [
            {
                "contentPolicy": {"filters": [{"type": "VIOLENCE", "confidence": "HIGH", "action": "BLOCKED"}]},
                "topicPolicy": {"topics": [{"name": "Gambling", "type": "DENY", "action": "BLOCKED"}]},
            }
        ],
    }
    server.script(Reply(body={"usage": {}, "action": "NONE", "outputs": [], "assessments": []}), Reply(body=intervened))
    settings = Settings(
        guardrails_text_backend="bedrock",
        bedrock_endpoint_url=server.base_url.removesuffix("/v1"),
        bedrock_guardrail_id="gr-123",
        bedrock_guardrail_version="2",
    )
    with pytest.raises(guardrails.InputRefused) as refused:
        guardrails.screen_text({"name": "Acme", "guidelines[0].text": "bet it all"}, settings)
    assert refused.value.finding == guardrails.Finding("guidelines[0].text", "topic:gambling", "bedrock-guardrails")
    first, second = server.requests
    assert (
        first.path == "/guardrail/gr-123/version/2/apply"
        and "aws4-hmac-sha256" in first.headers["authorization"].lower()
    )
    assert first.body == {"source": "INPUT", "content": [{"text": {"text": "Acme"}}]}
    assert second.body["content"] == [{"text": {"text": "bet it all"}}]


def test_comprehend_toxicity_over_http(server: FakeOpenAI, aws_env: None) -> None:
    server.script(
        Reply(
            body={
                "ResultList": [
                    {"Labels": [{"Name": "PROFANITY", "Score": 0.1}], "Toxicity": 0.1},
                    {
                        "Labels": [{"Name": "HATE_SPEECH", "Score": 0.9}, {"Name": "INSULT", "Score": 0.3}],
                        "Toxicity": 0.9,
                    },
                ]
            }
        )
    )
    settings = Settings(guardrails_text_backend="comprehend", moderation_aws_endpoint_url=server.base_url)
    with pytest.raises(guardrails.InputRefused) as refused:
        guardrails.screen_text({"title": "Bottle", "description": "something hateful"}, settings)
    assert refused.value.finding == guardrails.Finding("description", "hate_speech", "comprehend")
    sent = server.requests[-1]
    assert sent.headers["x-amz-target"] == "Comprehend_20171127.DetectToxicContent"
    assert sent.body == {"TextSegments": [{"Text": "Bottle"}, {"Text": "something hateful"}], "LanguageCode": "en"}


def test_comprehend_segments_long_text_within_its_limits() -> None:
    pieces = guardrails._segments("é" * 1500)  # noqa: SLF001 - the segmenting rule itself
    assert [len(p.encode()) for p in pieces] == [1000, 1000, 1000]


def test_rekognition_moderation_over_http(server: FakeOpenAI, aws_env: None) -> None:
    labels = {
        "ModerationLabels": [
            {"Confidence": 97.1, "Name": "Graphic Violence", "ParentName": "Violence", "TaxonomyLevel": 2},
            {"Confidence": 97.1, "Name": "Violence", "ParentName": "", "TaxonomyLevel": 1},
        ],
        "ModerationModelVersion": "7.0",
    }
    server.script(Reply(body={"ModerationLabels": [], "ModerationModelVersion": "7.0"}), Reply(body=labels))
    settings = Settings(guardrails_image_backend="rekognition", moderation_aws_endpoint_url=server.base_url)
    assert guardrails.screen_image(b"\x89PNG fine", settings) == "rekognition"
    with pytest.raises(guardrails.InputRefused) as refused:
        guardrails.screen_image(b"\x89PNG gory", settings)
    assert refused.value.finding == guardrails.Finding("image", "violence", "rekognition")
    sent = server.requests[-1]
    assert sent.headers["x-amz-target"] == "RekognitionService.DetectModerationLabels"
    assert base64.b64decode(sent.body["Image"]["Bytes"]) == b"\x89PNG gory" and sent.body["MinConfidence"] == 60.0


def test_rekognition_unreachable_fails_closed_or_open(aws_env: None) -> None:
    dead = {"guardrails_image_backend": "rekognition", "moderation_aws_endpoint_url": "http://127.0.0.1:9"}
    with pytest.raises(guardrails.ModerationUnavailable):
        guardrails.screen_image(b"png", Settings(**dead))
    record = guardrails.screen_image(b"png", Settings(**dead, guardrails_image_on_error="open"))
    assert record.startswith("not screened: rekognition unavailable (")


# ------------------------------------------------------------------------------------------ the index


def _reference(text: str, terms: Sequence[guardrails.Term]) -> tuple[guardrails.Term | None, str]:
    """The screen as documented, term by term in listed order over both word streams: what the index must find,
    and how it matched (so the test can tell that every way was tried)."""
    tokens = guardrails.words(text)
    streams = {"": tokens, "joined ": guardrails._joined_letters(tokens)}  # noqa: SLF001 - the spaced-letters rule
    for term in terms:
        if term.anywhere is not None:
            if term.anywhere in "".join(tokens):
                return term, "anywhere"
            continue
        n, *head, last = len(term.tokens), *term.tokens
        for name, stream in streams.items():
            if n > 1 and term.squashed in stream:
                return term, name + "squashed"
            for i in range(len(stream) - n + 1):
                *words, word = stream[i : i + n]
                if words == head and (word == last or (term.prefix and word.startswith(last))):
                    return term, f"{name}{'prefix' if word != last else 'whole'} {'words' if n > 1 else 'word'}"
    return None, "none"


_SYLLABLES = ["ka", "ro", "mi", "ne", "su", "k", "i", "x"]
_CJK = ["可口", "可乐", "東京", "ขาย"]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 3)))


def _random_term(rng: random.Random) -> str:
    if rng.random() < 0.1:
        return rng.choice(_CJK) + rng.choice(["", "可"])
    text = " ".join(_word(rng) for _ in range(rng.choice([1, 1, 2, 3])))
    return text + "*" if rng.random() < 0.3 else text


def _random_text(rng: random.Random, terms: Sequence[guardrails.Term]) -> str:
    """Words from the terms themselves (whole, longer, cut short, squashed, spaced out letter by letter, in
    capitals or leetspeak) among random ones, so that near misses are as common as matches."""
    pieces: list[str] = []
    for _ in range(rng.randint(0, 10)):
        term, roll = rng.choice(terms), rng.random()
        if roll < 0.3:
            pieces.append(_word(rng))
        elif roll < 0.45:  # some of its words spaced out
            pieces.append(" ".join(w if rng.random() < 0.7 else rng.choice([" ", "."]).join(w) for w in term.tokens))
        elif roll < 0.55:
            pieces.append(term.squashed + rng.choice(["", "s", "ka"]))
        elif roll < 0.65:
            pieces.append(term.tokens[-1][: rng.randint(1, len(term.tokens[-1]))])
        elif roll < 0.8:
            pieces.append(rng.choice([" ", ".", "-"]).join(term.squashed))
        elif roll < 0.9:
            pieces.append(rng.choice(_CJK) + rng.choice(["", term.squashed]))
        else:
            pieces.append(rng.choice(term.tokens).upper().replace("I", "1").replace("O", "0"))
    return "".join(piece + rng.choice([" ", " ", ", ", ".", "-", ""]) for piece in pieces)


def test_the_index_finds_what_a_term_by_term_scan_finds() -> None:
    """blocked_term walks a text once against terms indexed by word (whole words, squashed multi-word terms, word
    prefixes, substrings for scripts without spaces): over random term lists and texts made of near misses it must
    name the same term as the term-by-term scan, the first listed one, built-in list on and off."""
    rng = random.Random(29)
    how: Counter[str] = Counter()
    for round_ in range(200):
        tenant = [_random_term(rng) for _ in range(rng.randint(1, 25))]
        settings = Settings(guardrails_default_terms=round_ % 4 == 0, guardrails_blocked_terms=[_random_term(rng)])
        terms = guardrails.terms_for(settings, tenant)
        for _ in range(50):
            text = _random_text(rng, terms)
            expected, matched = _reference(text, terms)
            assert guardrails.blocked_term(text, terms) is expected, (text, tenant)
            how[matched] += 1
    kinds = ("squashed", "whole word", "prefix word", "whole words", "prefix words")
    ways = {"anywhere"} | {f"{stream}{kind}" for stream in ("", "joined ") for kind in kinds}
    assert ways <= set(how) and how["none"] > 1000, how  # every way to match was tried, and many near misses


def test_the_first_listed_term_wins_not_the_first_in_the_text() -> None:
    terms = guardrails.terms_for(Settings(guardrails_default_terms=False), ["sunset", "urban*", "running shoe"])
    found = guardrails.blocked_term("the running shoe on an urban street at sunset", terms)
    assert found is not None and found.text == "sunset"
    unindexed = list(reversed(terms))  # any sequence of terms works, indexed on the way
    found = guardrails.blocked_term("the running shoe on an urban street at sunset", unindexed)
    assert found is not None and found.text == "running shoe"


def test_terms_are_parsed_and_indexed_once_per_list() -> None:
    settings = Settings()
    assert guardrails.terms_for(settings, ["acme rival", "forbid*"]) is guardrails.terms_for(
        Settings(), ("acme rival", "forbid*")
    )
    assert len(guardrails.terms_for(settings, ["acme rival", "forbid*"])) == len(guardrails.terms_for(settings, ())) + 2


def test_ascii_text_folds_as_the_full_unicode_path_does() -> None:
    """ASCII text skips Unicode normalisation; one non-ASCII character at the end sends the same text the long way."""
    rng = random.Random(5)
    for _ in range(5000):
        text = "".join(chr(rng.randrange(128)) for _ in range(rng.randint(0, 16)))
        assert guardrails.fold(text) + " \u00b7" == guardrails.fold(text + " \u00b7"), repr(text)
