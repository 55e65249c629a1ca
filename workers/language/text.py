"""Text toolkit of the language stages: word lists and small, deterministic string helpers.

Everything here is plain string work (no model, no NLP dependency) and imports no other
language module, so the guards, the rules decomposer and both stages can share it without
a cycle. Vocabularies used by more than one module are public; those only one module
needs live in that module.
"""

from __future__ import annotations

import re

# The diffusion text encoder's budget: captions are cut at a boundary below it.
MAX_CAPTION_CHARS = 1024

# ----------------------------------------------------------------------------- vocabularies

_DETERMINERS = frozenset("a an the our my your their his her its this that these those some any".split())
MULTI_PREPS = ("in front of", "on top of", "next to", "close to", "in the middle of")
PREPS = frozenset(
    "on in at by near under over against beside atop inside during beneath below above across "
    "along among behind underneath around upon onto into through amid amidst within outside".split()
)
MOOD_NOUNS = r"mood|moods|vibe|vibes|feel|feeling|atmosphere|tone|aesthetic|ambience|ambiance"
# Words that carry no content: a phrase is grounded or overlapping only through the others.
STOP = (
    _DETERMINERS
    | PREPS
    | frozenset(
        "and or of with for to is are be very just plus & ad advert image photo picture shot".split()
        + MOOD_NOUNS.split("|")
    )
)
_PARTICIPLES = frozenset(
    "placed standing sitting lying resting displayed set shown positioned floating perched laid "
    "arranged hanging leaning photographed captured is are sits stands lies rests".split()
)
SEASONS = r"spring|summer|autumn|fall|winter"
_NEGATION = r"no|not|without|never|none|nothing|nor|neither|avoid|avoiding|don't|doesn't|isn't|aren't"
# The same in the other languages a brief comes in (German, French, Spanish, Italian, Portuguese, Dutch):
# without a translating LLM, "ohne Menschen" must go to the negative prompt too, never to the positive one.
# Only words that are not also English ones ("ni", "pas" and "né" alone are too short or ambiguous).
FOREIGN_NEGATIONS = (
    "ohne|kein|keine|keinen|keinem|keiner|keines|nicht|niemals"  # de
    "|sans|aucun|aucune|pas de|pas d'|jamais"  # fr
    "|sin|ningún|ninguna|ninguno|nada de|nunca"  # es
    "|senza|nessun|nessuna|nessuno|niente"  # it ("non" also reads "non slip")
    "|sem|nenhum|nenhuma|não"  # pt
    "|zonder|geen|niet|nooit"  # nl
)
_NEGATION_RE = re.compile(rf"\b(?:{_NEGATION}|{FOREIGN_NEGATIONS})\b(?!-)", re.I)  # "no-show socks" is not one
_INSTRUCTION_VERBS = (
    "generate|create|draw|make|render|produce|design|show|paint|depict|illustrate|imagine|"
    "photograph|give|write|use|add|include|ensure|keep|place|put"
)
_LEAD_INSTRUCTION_RE = re.compile(
    # a verb is stripped only when an object follows ("show our sneaker"), so that
    # product names such as "Paint roller" or "make-up bag" survive
    rf"^\s*(?:please\s+)?(?:(?:{_INSTRUCTION_VERBS})\s+(?:me\s+|us\s+)?"
    r"(?=(?:a|an|the|some|our|my|your|this|these|image|photo|picture|\d)\b)"
    r"|(?:an?\s+|the\s+)?(?:image|photo|photograph|picture|illustration|rendering|render|shot|ad|"
    r"advert|advertisement|caption)\s+(?:of|for|showing|featuring|with)\b\s*)",
    re.I,
)


def prep_alternatives() -> str:
    """The prepositions as a regex alternation, longest first so "in front of" wins over "in"."""
    alternatives = sorted(list(MULTI_PREPS) + list(PREPS), key=len, reverse=True)
    return "|".join(re.escape(p) for p in alternatives)


# Any preposition as a whole word; group 1 is the preposition.
PREP_RE = re.compile(r"\b(" + prep_alternatives() + r")\b", re.I)

# ----------------------------------------------------------------------------- text helpers


def words(text: str) -> list[str]:
    """The words of `text`, keeping apostrophes, ampersands and hyphens inside them."""
    return re.findall(r"[\w'&-]+", text)


def stem(word: str) -> str:
    """Crude singular form so "shoes" grounds "shoe" (no NLP dependency)."""
    w = word.lower().removesuffix("'s")
    if len(w) > 4 and w.endswith("ies"):
        return w[:-3] + "y"
    if len(w) > 4 and w.endswith(("sses", "shes", "ches", "xes")):
        return w[:-2]
    if len(w) > 3 and w.endswith("s") and not w.endswith(("ss", "us", "is")):
        return w[:-1]
    return w


def content_stems(text: str) -> set[str]:
    """Stems of the words that are not STOP words."""
    return {stem(w) for w in words(text) if w.lower() not in STOP}


def is_grounded(phrase: str, brief: str, strict: bool = False) -> bool:
    """Lenient: the phrase shares a content word with the brief. Strict: every
    content word is in the brief ("rainbow window" is not grounded by "rainy window")."""
    mine, theirs = content_stems(phrase), content_stems(brief)
    found = {w for w in mine if any(_same_word(w, t) for t in theirs)}
    return bool(found) and (not strict or found == mine)


def _same_word(a: str, b: str) -> bool:
    """Equal stems, or a derived form: "sand"/"sandy", "wood"/"wooden" (not "night"/"nightmare")."""
    short, long = sorted((a, b), key=len)
    return a == b or (len(short) >= 4 and long.startswith(short) and len(long) - len(short) <= 3)


def collapse(text: str) -> str:
    """Runs of whitespace to one space, and no stray punctuation at either end."""
    return re.sub(r"\s+", " ", text).strip(" ,;:.-")


def dedupe(items: list[str]) -> list[str]:
    """The items in order, each case-insensitively once."""
    seen: set[str] = set()
    return [x for x in items if not (x.lower() in seen or seen.add(x.lower()))]  # type: ignore[func-returns-value]


def strip_determiners(phrase: str) -> str:
    """Drop leading/trailing articles, determiners and dangling participles."""
    ws = words(phrase)
    while ws and ws[0].lower() in _DETERMINERS | {"and"}:
        ws = ws[1:]
    while ws and ws[-1].lower() in _PARTICIPLES | _DETERMINERS | {"and"}:
        ws = ws[:-1]
    return " ".join(ws)


def strip_instructions(text: str) -> str:
    """Remove leading "generate/create/draw ... an image of" so text reads as a caption."""
    previous = None
    while previous != text:
        previous, text = text, _LEAD_INSTRUCTION_RE.sub("", text, count=1).strip()
    return text


def is_instruction_like(text: str) -> bool:
    """The text starts with "please" or an instruction verb ("Generate ...")."""
    first = words(text)[:1]
    return bool(first) and bool(re.fullmatch(rf"(?:please|{_INSTRUCTION_VERBS})", first[0], re.I))


def has_negation(text: str) -> bool:
    """A negation word ("no", "without", "don't"...) anywhere in the text."""
    return bool(_NEGATION_RE.search(text))


def split_negations(text: str) -> tuple[str, list[str]]:
    """Move negated phrases out of comma clauses: "soft light without harsh shadows"
    -> ("soft light", ["harsh shadows"])."""
    kept: list[str] = []
    negatives: list[str] = []
    for clause in re.split(r"\s*[,;]\s*", text):
        match = _NEGATION_RE.search(clause)
        if match is None:
            kept.append(clause)
            continue
        before, after = clause[: match.start()], clause[match.end() :]
        place = PREP_RE.search(after)  # "no case next to a laptop": the place is not negated
        negated, rest = (after[: place.start()], after[place.start() :]) if place else (after, "")
        negatives += [n for n in (strip_determiners(p) for p in re.split(r"\bor\b|\band\b", negated)) if n]
        kept.append(collapse(re.sub(r"\b(?:with|and|but|or)\s*$", "", before.strip()) + " " + rest))
    return ", ".join(c for c in kept if c), negatives


def cap_at_boundary(text: str, limit: int = MAX_CAPTION_CHARS) -> str:
    """Cut to at most `limit` characters at the last sentence/comma boundary
    (a word boundary when there is none in the second half)."""
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"limit must be a positive int, got {limit!r}")
    if len(text) <= limit:
        return text
    window = text[: limit + 1]
    # punctuation followed by a space: "4.5 inch" and "1,000" are not boundaries
    cut = max((m.start() for m in re.finditer(r"[.,;](?=\s|$)", window)), default=-1)
    if cut < limit // 2:
        cut = window.rfind(" ")
    return text[: cut if cut > 0 else limit].rstrip(" ,;.")


def with_article(phrase: str) -> str:
    """'a'/'an' before a singular noun phrase; plurals and mass nouns stay bare."""
    ws = words(phrase)
    if not ws or ws[0].lower() in _DETERMINERS or ws[0][0].isdigit():
        return phrase
    last = ws[-1].lower()
    if stem(last) != last or last.endswith("ware"):
        return phrase
    return ("an " if ws[0][0].lower() in "aeiou" else "a ") + phrase


def join_and(items: list[str]) -> str:
    """ "a", "b", "c" -> "a, b and c"."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]
