"""The configured generator's text tokenizer, loaded alone: the caption guard counts what the text
encoder will read without loading the diffusion pipeline (the caption runs on the CPU llm worker).

SD 1.5/2 and SDXL pipelines keep their CLIP BPE tokenizer in the ``tokenizer/`` folder of the model
(SDXL's ``tokenizer_2`` uses the same BPE, so one count serves both encoders). transformers is
imported lazily; loading is local only (a path, or a hub id already in the cache), never a download.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLIP_CONTEXT = 77  # CLIP's text encoder positions: BOS + 75 content tokens + EOS
SPECIAL_TOKENS = 2  # BOS and EOS take two of the positions


@dataclass(frozen=True)
class PromptTokenizer:
    """Counts the content tokens of a prompt (no BOS/EOS) as the generator's tokenizer splits it."""

    source: str
    context: int  # positions the encoder reads, BOS/EOS included
    tokenizer: Any

    @property
    def content_tokens(self) -> int:
        return self.context - SPECIAL_TOKENS

    def count(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False, truncation=False)["input_ids"])


def _folder(source: str) -> tuple[str, str | None]:
    """(what to load, subfolder): a pipeline's tokenizer/ folder, or a folder that is the tokenizer."""
    path = Path(source)
    if path.is_dir() and not (path / "tokenizer").is_dir():
        return source, None
    return source, "tokenizer"


@functools.lru_cache(maxsize=4)
def load(source: str) -> PromptTokenizer:
    """The CLIP tokenizer of the model at ``source``; OSError/ValueError when it is not there."""
    from transformers import CLIPTokenizer

    name, subfolder = _folder(source)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if subfolder:
        kwargs["subfolder"] = subfolder
    tokenizer = CLIPTokenizer.from_pretrained(name, **kwargs)
    # A tokenizer saved without model_max_length reports a huge sentinel: CLIP's encoder still reads 77.
    context = int(tokenizer.model_max_length) if 0 < tokenizer.model_max_length <= 4096 else CLIP_CONTEXT
    return PromptTokenizer(source, context, tokenizer)
