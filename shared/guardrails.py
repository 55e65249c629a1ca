"""Input guardrails: screen briefs, brand text, asset metadata and uploaded images before anything is generated.

Text goes through blocked-term lists first (the built-in global list, the operator's global terms, the tenant's
own), then, when configured, a hosted moderation backend: an OpenAI-compatible `/moderations` endpoint (through the
egress guard), Bedrock Guardrails (ApplyGuardrail) or Comprehend (DetectToxicContent). Images go to Rekognition
DetectModerationLabels when configured. Every screen reports what it did and, as honestly, what it did not: the
record says "not screened: ..." rather than pretending a blocklist is moderation.

Blocked terms match whole words after a normalisation that undoes cheap evasions: Unicode compatibility forms
(fullwidth letters), case (casefold: ß = ss), accents (é = e), invisible characters, a few Cyrillic/Greek
look-alikes, leetspeak-lite (0=o, 1=l=i, 3=e, 4=a, 5=s, 7=t, @=a, $=s) and letters spaced out ("k i l l",
"k.i.l.l"). Whole words: "class" never matches "ass". A term ending in `*` matches word prefixes ("nazi*": nazis).
Terms in scripts written without spaces (CJK, Thai) match anywhere.
"""

from __future__ import annotations

import io
import json
import logging
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Protocol, overload

from shared import egress
from shared.config import Settings

log = logging.getLogger(__name__)

BLOCKLIST = "blocklist"
NO_IMAGE_BACKEND = "not screened: no moderation backend configured"
REKOGNITION_MAX_BYTES = 5 * 1024 * 1024  # DetectModerationLabels' limit for inline image bytes
COMPREHEND_SEGMENT_BYTES = 1000  # DetectToxicContent: at most 1 KB per segment, 10 segments per call
COMPREHEND_SEGMENTS = 10

# The built-in global list: conservative, clearly-not-advertising content, in English, German, French, Spanish,
# Italian and Portuguese (accents are folded, so they are written without). Operators add their own terms
# (guardrails_blocked_terms) or switch this off (guardrails_default_terms=false).
DEFAULT_TERMS: dict[str, tuple[str, ...]] = {
    "sexual_minors": (
        "child porn*",
        "child sexual abuse",
        "kinderporno*",
        "pedopornographie",
        "pornographie infantile",
        "pornografia infantil",
        "pedopornografia",
        "lolicon",
    ),
    "hate_extremism": ("heil hitler", "sieg heil", "white power", "white genocide", "ku klux klan"),
    "violence": (
        "beheading",
        "behead*",
        "mass shooting",
        "school shooting",
        "enthauptung",
        "decapitation",
        "decapitacion",
        "decapitazione",
        "decapitacao",
        "amoklauf",
    ),
    "self_harm": ("kill yourself", "how to commit suicide", "suicide method*", "selbstmord anleitung", "kys"),
    "illegal_drugs": (
        "cocaine",
        "kokain",
        "cocaina",
        "heroin",
        "heroina",
        "crystal meth",
        "methamphetamine*",
        "metanfetamina",
    ),
    "weapons": ("pipe bomb*", "bomb making", "ghost gun*", "rohrbombe"),
}

# ------------------------------------------------------------------------------------------ normalisation

# Folded the same way in terms and in text, so "ki11", "kill" and "KILL" meet; whole-word matching keeps the
# few new collisions ("lid" ~ "iid") harmless.
_FOLD = str.maketrans(
    {
        "0": "o",
        "1": "i",
        "l": "i",
        "3": "e",
        "4": "a",
        "@": "a",
        "5": "s",
        "$": "s",
        "7": "t",
        # Cyrillic and Greek letters that look Latin ("соcaine" with a Cyrillic с and о)
        "а": "a",
        "е": "e",
        "о": "o",
        "р": "p",
        "с": "c",
        "х": "x",
        "у": "y",
        "і": "i",
        "ѕ": "s",
        "к": "k",
        "м": "m",
        "т": "t",
        "в": "b",
        "н": "h",
        "α": "a",
        "ο": "o",
        "ε": "e",
        "ι": "i",
        "κ": "k",
        "ν": "v",
        "τ": "t",
        "ρ": "p",
    }
)
_WORD = re.compile(r"[^\W_]+")
_INNER_I = re.compile(r"[!|](?=\w)")  # "sh!t", "k|ll": an i inside a word; "SCHNAPPS!" keeps its "!" as punctuation
_NO_SPACES = re.compile(r"[\u0e00-\u0e7f\u3040-\u30ff\u3400-\u9fff\uac00-\ud7af\uf900-\ufaff]")


def fold(text: str) -> str:
    """Compatibility forms, case, accents, invisible characters, look-alikes and leetspeak-lite folded away."""
    if text.isascii():  # no compatibility forms, accents or invisible characters, and casefold is lower: 5x faster
        return _INNER_I.sub("i", text.lower()).translate(_FOLD)
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(c for c in unicodedata.normalize("NFKD", text) if unicodedata.category(c) not in ("Mn", "Cf"))
    return _INNER_I.sub("i", text).translate(_FOLD)


def words(text: str) -> list[str]:
    return _WORD.findall(fold(text))


def _joined_letters(tokens: Sequence[str]) -> list[str]:
    """Runs of three or more one-letter words joined into one: "k i l l" and "k.i.l.l" become "kill"."""
    out: list[str] = []
    run: list[str] = []
    for token in [*tokens, ""]:
        if len(token) == 1:
            run.append(token)
            continue
        out.extend(["".join(run)] if len(run) >= 3 else run)
        run = []
        if token:
            out.append(token)
    return out


@dataclass(frozen=True)
class Term:
    text: str  # as listed (shown in a refusal)
    category: str
    tokens: tuple[str, ...]
    prefix: bool  # the last token matches word prefixes
    squashed: str  # the tokens written together: matches a spaced-out run ("k.i.l.l y.o.u" -> "kiiiyou...")
    anywhere: str | None  # scripts without spaces: the folded term, matched as a substring

    @classmethod
    def parse(cls, text: str, category: str) -> Term | None:
        raw = text.strip()
        prefix = raw.endswith("*")
        tokens = tuple(words(raw.rstrip("*")))
        if not tokens:
            return None
        anywhere = "".join(tokens) if _NO_SPACES.search(raw) else None
        return cls(raw, category, tokens, prefix, "".join(tokens), anywhere)

    def starts_at(self, stream: Sequence[str], i: int) -> bool:
        """Whether the term's words stand in the stream from position i on (the last one as a prefix, for a prefix
        term)."""
        n = len(self.tokens)
        if i + n > len(stream):
            return False
        last = stream[i + n - 1]
        return tuple(stream[i : i + n - 1]) == self.tokens[:-1] and (
            last == self.tokens[-1] or (self.prefix and last.startswith(self.tokens[-1]))
        )


class Blocklist(Sequence[Term]):
    """Terms in the order listed, indexed by word once: a text's words are walked once, not once per term.

    A term matches a word stream when its words stand in it in order (the last one as a word prefix for a prefix
    term), or, for a term of several words, when one word is all of them written together. Terms in scripts
    without spaces match anywhere in the text's words written together."""

    def __init__(self, terms: Iterable[Term]) -> None:
        self.terms = tuple(terms)
        self._whole: dict[str, list[int]] = {}  # a word that is a match by itself: a one-word term, a squashed one
        self._heads: dict[str, list[int]] = {}  # a multi-word term's first word: the rest is checked in place
        self._prefixes: dict[str, list[int]] = {}  # one-word prefix terms: every word's prefixes looked up
        self._anywhere: list[tuple[int, str]] = []
        for k, term in enumerate(self.terms):
            if term.anywhere is not None:
                self._anywhere.append((k, term.anywhere))
            elif len(term.tokens) > 1:
                self._whole.setdefault(term.squashed, []).append(k)
                self._heads.setdefault(term.tokens[0], []).append(k)
            else:
                (self._prefixes if term.prefix else self._whole).setdefault(term.tokens[0], []).append(k)
        self._lengths = sorted({len(p) for p in self._prefixes})  # ascending: a word shorter ends the look-up

    @overload
    def __getitem__(self, index: int) -> Term: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Term]: ...

    def __getitem__(self, index: int | slice) -> Term | Sequence[Term]:
        return self.terms[index]

    def __len__(self) -> int:
        return len(self.terms)

    def first_in(self, text: str) -> Term | None:
        """The first listed term the text contains (whole words, after folding), or None."""
        tokens = words(text)
        hits: set[int] = set()
        self._collect(tokens, hits)
        if list(map(len, tokens)).count(1) >= 3:  # fewer one-letter words join into nothing: the same stream
            self._collect(_joined_letters(tokens), hits)
        if self._anywhere:
            squashed = "".join(tokens)
            hits.update(k for k, part in self._anywhere if part in squashed)
        return self.terms[min(hits)] if hits else None  # the earliest listed, not the earliest in the text

    def _collect(self, stream: Sequence[str], hits: set[int]) -> None:
        whole, heads, prefixes, lengths = self._whole, self._heads, self._prefixes, self._lengths
        for i, word in enumerate(stream):
            if word in whole:
                hits.update(whole[word])
            if word in heads:
                hits.update(k for k in heads[word] if self.terms[k].starts_at(stream, i))
            for n in lengths:
                if n > len(word):
                    break
                if word[:n] in prefixes:
                    hits.update(prefixes[word[:n]])


@lru_cache(maxsize=8)
def _global_terms(default: bool, extra: tuple[str, ...]) -> tuple[Term, ...]:
    listed = [(t, cat) for cat, terms in DEFAULT_TERMS.items() for t in terms] if default else []
    listed += [(t, "blocked_term") for t in extra]
    return tuple(term for text, cat in listed if (term := Term.parse(text, cat)) is not None)


# One per tenant term list in use (~20 KB with 20 terms of their own, so 5 MB at most): parsing and indexing ~60
# terms on every request cost 20x what screening a brief against them does.
@lru_cache(maxsize=256)
def _blocklist(default: bool, extra: tuple[str, ...], tenant: tuple[str, ...]) -> Blocklist:
    own = (t for text in tenant if (t := Term.parse(text, "tenant_blocked_term")) is not None)
    return Blocklist((*_global_terms(default, extra), *own))


def terms_for(settings: Settings, tenant_terms: Iterable[str]) -> Blocklist:
    """The global list (built-in and the operator's) and the tenant's own terms, indexed."""
    return _blocklist(settings.guardrails_default_terms, tuple(settings.guardrails_blocked_terms), tuple(tenant_terms))


def blocked_term(text: str, terms: Sequence[Term]) -> Term | None:
    """The first listed term the text contains (whole words, after folding), or None."""
    return (terms if isinstance(terms, Blocklist) else Blocklist(terms)).first_in(text)


# ------------------------------------------------------------------------------------------ outcomes


@dataclass(frozen=True)
class Finding:
    field: str  # e.g. "brief", "guidelines[1].text", "image"
    category: str  # e.g. "violence", "tenant_blocked_term", "hate", "explicit_nudity"
    source: str  # blocklist | openai-moderation | bedrock-guardrails | comprehend | rekognition
    term: str | None = None  # the listed blocked term (as listed, never the evasive spelling)


class InputRefused(Exception):
    def __init__(self, finding: Finding) -> None:
        super().__init__(f"{finding.field}: {finding.category} ({finding.source})")
        self.finding = finding


class ModerationUnavailable(Exception):
    """A hosted backend did not answer usably; `reason` is safe to show (no internal addresses)."""

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"{backend}: {reason}")
        self.backend, self.reason = backend, reason


class TextModerator(Protocol):
    name: str

    def categories(self, texts: Sequence[str]) -> list[list[str]]:
        """For each text, the categories it was flagged for (empty: fine)."""


class ImageModerator(Protocol):
    name: str

    def categories(self, image: bytes) -> list[str]: ...


# ------------------------------------------------------------------------------------------ OpenAI-compatible


class OpenAIModeration:
    """POST {base}/moderations {"model", "input": [texts]} -> {"results": [{"flagged", "categories": {...}}]}.

    Sent through the egress guard like every other outgoing request (private endpoints need the allowlist)."""

    name = "openai-moderation"

    def __init__(self, settings: Settings) -> None:
        self.url = (settings.moderation_openai_url or settings.openai_base_url).rstrip("/") + "/moderations"
        self.key = settings.moderation_openai_api_key or settings.openai_api_key
        self.model, self.timeout = settings.moderation_openai_model, settings.guardrails_timeout_seconds
        self.allowlist = settings.egress_allowlist

    def categories(self, texts: Sequence[str]) -> list[list[str]]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        body = json.dumps({"model": self.model, "input": list(texts)}).encode()
        try:
            answer = egress.post(
                self.url,
                content=body,
                headers=headers,
                timeout_s=self.timeout,
                allowlist=self.allowlist,
                max_response_bytes=4 * 1024 * 1024,
            )
        except egress.EgressRefused as exc:
            raise ModerationUnavailable(self.name, exc.code) from None
        if not 200 <= answer.status < 300:
            raise ModerationUnavailable(self.name, f"HTTP {answer.status}")
        return _openai_results(answer.body, len(texts))


def _openai_results(body: bytes, count: int) -> list[list[str]]:
    try:
        results = json.loads(body)["results"]
        if not isinstance(results, list) or len(results) != count:
            raise ValueError("one result per input expected")
        return [_openai_flags(r) for r in results]
    except (ValueError, KeyError, TypeError):
        raise ModerationUnavailable(OpenAIModeration.name, "unreadable answer") from None


def _openai_flags(result: Mapping[str, Any]) -> list[str]:
    flagged = [str(name) for name, on in (result.get("categories") or {}).items() if on is True]
    if result.get("flagged") is True and not flagged:
        return ["flagged"]
    return flagged if result.get("flagged") is not False else []


# ------------------------------------------------------------------------------------------ AWS


def _aws_client(service: str, region: str, endpoint_url: str, timeout: float) -> Any:
    # AWS endpoints are the operator's configuration, not a client's URL: boto3 reaches them with its own
    # HTTP stack (signing, credential chain); one retry, and the time limit per connect and read.
    import boto3
    from botocore.config import Config

    config = Config(connect_timeout=timeout, read_timeout=timeout, retries={"max_attempts": 2, "mode": "standard"})
    make: Any = boto3.client  # the service name is a variable: no typed overload applies
    return make(service, region_name=region, endpoint_url=endpoint_url or None, config=config)


def _aws_call(name: str, call: Any, **kwargs: Any) -> dict[str, Any]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        answer: dict[str, Any] = call(**kwargs)
        return answer
    except ClientError as exc:
        raise ModerationUnavailable(name, str(exc.response.get("Error", {}).get("Code") or "error")) from None
    except BotoCoreError as exc:
        raise ModerationUnavailable(name, type(exc).__name__) from None


def _label(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "flagged"


class BedrockGuardrail:
    """Bedrock Guardrails ApplyGuardrail (source INPUT), one call per text: its assessments name no input."""

    name = "bedrock-guardrails"

    def __init__(self, settings: Settings) -> None:
        self.client = _aws_client(
            "bedrock-runtime",
            settings.bedrock_region,
            settings.bedrock_endpoint_url,
            settings.guardrails_timeout_seconds,
        )
        self.guardrail, self.version = settings.bedrock_guardrail_id, settings.bedrock_guardrail_version

    def categories(self, texts: Sequence[str]) -> list[list[str]]:
        return [self._one(text) for text in texts]

    def _one(self, text: str) -> list[str]:
        answer = _aws_call(
            self.name,
            self.client.apply_guardrail,
            guardrailIdentifier=self.guardrail,
            guardrailVersion=self.version,
            source="INPUT",
            content=[{"text": {"text": text}}],
        )
        if answer.get("action") != "GUARDRAIL_INTERVENED":
            return []
        return sorted({c for a in answer.get("assessments") or [] for c in _assessment(a)}) or ["guardrail_intervened"]


def _blocked(items: Iterable[Mapping[str, Any]], key: str, prefix: str = "") -> list[str]:
    return [prefix + _label(str(i.get(key, ""))) for i in items if i.get("action", "BLOCKED") == "BLOCKED"]


def _assessment(a: Mapping[str, Any]) -> list[str]:
    """The blocking policies of one ApplyGuardrail assessment, as category names."""
    words_policy = a.get("wordPolicy") or {}
    pii = a.get("sensitiveInformationPolicy") or {}
    return [
        *_blocked((a.get("contentPolicy") or {}).get("filters") or [], "type"),
        *_blocked((a.get("topicPolicy") or {}).get("topics") or [], "name", "topic:"),
        *_blocked(words_policy.get("managedWordLists") or [], "type"),
        *["custom_word" for _ in _blocked(words_policy.get("customWords") or [], "match")],
        *_blocked(pii.get("piiEntities") or [], "type", "pii:"),
        *_blocked(pii.get("regexes") or [], "name", "pii:"),
    ]


class ComprehendToxicity:
    """Comprehend DetectToxicContent (English): a text is flagged when any of its 1 KB segments scores at or above
    the threshold; the categories are its labels at or above it."""

    name = "comprehend"

    def __init__(self, settings: Settings) -> None:
        self.client = _aws_client(
            "comprehend",
            settings.moderation_aws_region,
            settings.moderation_aws_endpoint_url,
            settings.guardrails_timeout_seconds,
        )
        self.threshold = settings.moderation_toxicity_threshold

    def categories(self, texts: Sequence[str]) -> list[list[str]]:
        segments = [(i, seg) for i, text in enumerate(texts) for seg in _segments(text)]
        found: list[set[str]] = [set() for _ in texts]
        for start in range(0, len(segments), COMPREHEND_SEGMENTS):
            batch = segments[start : start + COMPREHEND_SEGMENTS]
            answer = _aws_call(
                self.name,
                self.client.detect_toxic_content,
                TextSegments=[{"Text": seg} for _, seg in batch],
                LanguageCode="en",
            )
            results = answer.get("ResultList") or []
            if len(results) != len(batch):
                raise ModerationUnavailable(self.name, "unreadable answer")
            for (index, _), result in zip(batch, results, strict=True):
                found[index] |= set(self._flags(result))
        return [sorted(f) for f in found]

    def _flags(self, result: Mapping[str, Any]) -> list[str]:
        if float(result.get("Toxicity") or 0.0) < self.threshold:
            return []
        labels = [_label(str(lab["Name"])) for lab in result.get("Labels") or [] if lab["Score"] >= self.threshold]
        return labels or ["toxicity"]


def _segments(text: str) -> list[str]:
    """Pieces of at most COMPREHEND_SEGMENT_BYTES UTF-8 bytes, cut between characters."""
    out, piece = [], ""
    for char in text:
        if len((piece + char).encode()) > COMPREHEND_SEGMENT_BYTES:
            out.append(piece)
            piece = ""
        piece += char
    return [*out, piece] if piece.strip() or not out else out


class RekognitionModeration:
    """Rekognition DetectModerationLabels on the image bytes; categories are the top-level labels."""

    name = "rekognition"

    def __init__(self, settings: Settings) -> None:
        self.client = _aws_client(
            "rekognition",
            settings.moderation_aws_region,
            settings.moderation_aws_endpoint_url,
            settings.guardrails_timeout_seconds,
        )
        self.min_confidence = settings.moderation_min_confidence

    def categories(self, image: bytes) -> list[str]:
        answer = _aws_call(
            self.name,
            self.client.detect_moderation_labels,
            Image={"Bytes": _within_limit(image)},
            MinConfidence=self.min_confidence,
        )
        labels = answer.get("ModerationLabels") or []
        return sorted({_label(str(lab.get("ParentName") or lab.get("Name") or "")) for lab in labels})


def _within_limit(image: bytes) -> bytes:
    """The bytes, or a JPEG re-encoding at most 2048 px wide when they exceed Rekognition's 5 MB."""
    if len(image) <= REKOGNITION_MAX_BYTES:
        return image
    from PIL import Image

    with Image.open(io.BytesIO(image)) as opened:
        small = opened.convert("RGB")
    small.thumbnail((2048, 2048))
    out = io.BytesIO()
    small.save(out, "JPEG", quality=90)
    return out.getvalue()


# ------------------------------------------------------------------------------------------ screens


def text_moderator(settings: Settings) -> TextModerator | None:
    backends: dict[str, type[OpenAIModeration] | type[BedrockGuardrail] | type[ComprehendToxicity]] = {
        "openai": OpenAIModeration,
        "bedrock": BedrockGuardrail,
        "comprehend": ComprehendToxicity,
    }
    backend = backends.get(settings.guardrails_text_backend)
    return backend(settings) if backend else None


def image_moderator(settings: Settings) -> ImageModerator | None:
    return RekognitionModeration(settings) if settings.guardrails_image_backend == "rekognition" else None


def screen_text(
    fields: Mapping[str, str],
    settings: Settings,
    tenant_terms: Iterable[str] = (),
    moderator: TextModerator | None = None,
) -> str:
    """Refuse (InputRefused) the first field with a blocked term or a hosted flag; else say which screens ran.

    A hosted backend that fails raises ModerationUnavailable when guardrails_text_on_error is closed; open: the
    fields pass and the returned record says they were not screened by it.
    """
    texts = {name: value for name, value in fields.items() if value and value.strip()}
    terms = terms_for(settings, tenant_terms)
    for name, value in texts.items():
        if (term := blocked_term(value, terms)) is not None:
            raise InputRefused(Finding(name, term.category, BLOCKLIST, term.text))
    moderator = moderator or text_moderator(settings)
    if moderator is None:
        return BLOCKLIST
    if not texts:
        return f"{BLOCKLIST} + {moderator.name}"
    try:
        flags = moderator.categories(list(texts.values()))
    except ModerationUnavailable as exc:
        if settings.guardrails_text_on_error == "closed":
            raise
        log.warning("text moderation unavailable, failing open", extra={"backend": exc.backend, "reason": exc.reason})
        return f"{BLOCKLIST}; not screened by {exc.backend}: unavailable ({exc.reason}), failing open"
    for name, categories in zip(texts, flags, strict=True):
        if categories:
            raise InputRefused(Finding(name, categories[0], moderator.name))
    return f"{BLOCKLIST} + {moderator.name}"


def screen_image(image: bytes, settings: Settings, moderator: ImageModerator | None = None) -> str:
    """Refuse (InputRefused, field "image") a flagged image; else say whether and by what it was screened."""
    moderator = moderator or image_moderator(settings)
    if moderator is None:
        return NO_IMAGE_BACKEND
    try:
        categories = moderator.categories(image)
    except ModerationUnavailable as exc:
        if settings.guardrails_image_on_error == "closed":
            raise
        log.warning("image moderation unavailable, failing open", extra={"backend": exc.backend, "reason": exc.reason})
        return f"not screened: {exc.backend} unavailable ({exc.reason}), failing open"
    if categories:
        raise InputRefused(Finding("image", categories[0], moderator.name))
    return moderator.name
