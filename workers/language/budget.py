"""The text encoder's budget: how many tokens of a prompt the configured generator will read.

SD's CLIP text encoder reads 77 positions (BOS + 75 tokens + EOS) and silently drops the rest; the
1024-character cap (``text.MAX_CAPTION_CHARS``) comes from Nova Canvas and bounds every backend. When
an SD model is configured, its own CLIP tokenizer counts (loaded alone, lazily, from the model path);
when its tokenizer is not on disk, :func:`estimate_clip_tokens` stands in: an upper bound of CLIP's BPE
count for English text, so a prompt it passes fits CLIP. The embedded compositor reads no prompt at
all, so only the character cap applies there (:func:`character_budget`): trimming a caption for an
encoder that does not exist would only drop what the marketer and the revise loop read.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from workers.language.text import MAX_CAPTION_CHARS

if TYPE_CHECKING:
    from shared.config import Settings

CLIP_CONTENT_TOKENS = 75  # 77 positions less BOS and EOS
ESTIMATE = "estimate:clip-bpe-upper-bound"
CHARACTERS = "characters:no-text-encoder"  # the compositor: the character cap is the only limit
# CLIP's own pre-tokenizer (lower-cased text): contractions, letter runs, single digits, punctuation runs.
_PRETOKEN_RE = re.compile(r"'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+")

# Words CLIP's BPE keeps whole (one token each), checked one by one against its vocabulary: the
# caption's template and vocabulary words, so the estimate does not trim an ordinary caption for them.
_SINGLE_TOKEN_WORDS = frozenset(
    "a above across ad advert aerial aesthetic against along ambient amid amidst among an and angle any are "
    "around at atmosphere atop autumn background bag be beach bed behind below bench beneath beside black blue "
    "board bottle bright by cafe camera candlelight cinematic city clean closeup cloth coffee cool counter court "
    "cup dark dawn daylight depth desk during dusk elegant evening feel feeling floor focus for forest framing "
    "garden glass glow glowing golden grass gray green grey her high highlights his home hour illuminated "
    "illumination image in inside into is its just kitchen lake lamp landscape lens light lighting lights lit "
    "low luminous macro marble midday midnight minimal modern mood moods moonlight morning mountain mug my "
    "natural near neon night noon ocean of office on onto or our outside over overhead park perspective phone "
    "photo photography picture plus podium portrait product radiant rain realistic red restaurant rim river road "
    "rock room sand sea shadow shadows sheet shelf shoe shoes shot sidewalk sky sneaker snow soft some spring "
    "stone street studio style summer sun sunlight sunrise sunset surface table that the their these this those "
    "through to tone tray twilight under underneath upon urban very vibe vibes vibrant view wall warm watch "
    "water white wide window winter with within wooden your".split()
)


@dataclass(frozen=True)
class TokenBudget:
    """Counts a prompt's content tokens and says how many the encoder reads."""

    tokenizer: str  # what counts: the model's tokenizer source, or ESTIMATE
    limit: int  # content tokens the encoder reads (BOS/EOS excluded)
    count: Callable[[str], int]
    fallback_reason: str | None = None  # why the estimate counts although a tokenizer was configured

    def fits(self, text: str) -> bool:
        return self.count(text) <= self.limit


def estimate_clip_tokens(text: str) -> int:
    """An upper bound of CLIP's BPE token count (no BOS/EOS) for English text, without its vocabulary.

    Per CLIP pre-token: a contraction, a digit or a word of ``_SINGLE_TOKEN_WORDS`` is one token; an
    ASCII letter run of L letters counts L // 2 + 1; a non-ASCII run or punctuation counts its UTF-8
    bytes (BPE never makes a token smaller than a byte: a strict bound). The letter rule was measured
    against CLIP ViT-L/14's BPE (49 408 tokens, the vocabulary of SD 1.x/2/XL) on 6 855 distinct words
    from English docs, identifiers and acronyms included ("tqdmupto", "gguf", "lhnwrk"), and on 824
    lines of this repository's Markdown: it never undercounted; it counts about twice what CLIP reads
    on such lines, the price of never cutting a prompt short of what the encoder will read.
    """
    total = 0
    for piece in _PRETOKEN_RE.findall(text.lower()):
        if piece in _SINGLE_TOKEN_WORDS:
            total += 1
        elif piece.isalpha() and piece.isascii():
            total += len(piece) // 2 + 1
        elif piece[0] == "'" or piece.isdigit():
            total += 1
        else:
            total += len(piece.encode("utf-8"))
    return total


def estimate_budget(reason: str | None = None) -> TokenBudget:
    return TokenBudget(ESTIMATE, CLIP_CONTENT_TOKENS, estimate_clip_tokens, reason)


def character_budget() -> TokenBudget:
    """No text encoder reads the prompt: characters count, against the cap every backend shares."""
    return TokenBudget(CHARACTERS, MAX_CAPTION_CHARS, len)


def budget_for(settings: Settings) -> TokenBudget:
    """The configured generator's budget: its CLIP tokenizer for sd-inpaint (the estimate when that is not
    on disk); characters for the compositor, which reads no prompt."""
    if settings.generator != "sd-inpaint":
        return character_budget()
    from shared.model_specs import generate_spec
    from workers.models import prompt_tokenizer

    source = generate_spec(settings).source
    try:
        loaded = prompt_tokenizer.load(source)
    except (OSError, ValueError, ImportError) as exc:  # not on this worker's disk: count conservatively
        return estimate_budget(f"tokenizer of {source} not loadable ({type(exc).__name__}); used the estimate")
    return TokenBudget(f"clip-bpe:{source}", loaded.content_tokens, loaded.count)
