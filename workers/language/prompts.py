"""Versioned prompt templates of the language stages (workers/prompts/<name>.<version>.txt).

A template file holds [system], [user] and [repair] sections and optional
[example.user] / [example.assistant] pairs; lines before the first header are comments.
The version travels with every result ("prompt_version") so a change of wording is traceable.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from pathlib import Path

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"


@dataclass(frozen=True)
class PromptTemplate:
    """A versioned prompt file: system text, few-shot turns, user and repair texts."""

    name: str
    version: str
    system: str
    examples: tuple[tuple[str, str], ...]
    user: str
    repair: str

    @property
    def id(self) -> str:
        return f"{self.name}.{self.version}"

    def render_user(self, error: str | None = None, **values: str) -> str:
        """User turn with $placeholders filled; the repair text is appended when
        a previous answer failed validation."""
        text = string.Template(self.user).substitute(values)
        if error:
            text += "\n" + string.Template(self.repair).substitute(values, error=error)
        return text


def load_prompt(name: str, version: str = "v1") -> PromptTemplate:
    """Load workers/prompts/<name>.<version>.txt."""
    if not re.fullmatch(r"[a-z_]+", name or ""):
        raise ValueError(f"name must be lowercase letters/underscores, got {name!r}")
    if not re.fullmatch(r"v\d+", version or ""):
        raise ValueError(f"version must look like 'v1', got {version!r}")
    path = PROMPTS_DIR / f"{name}.{version}.txt"
    if not path.is_file():
        raise FileNotFoundError(f"no prompt template {path}")
    return _parse_template(name, version, path.read_text(encoding="utf-8"))


def _parse_template(name: str, version: str, text: str) -> PromptTemplate:
    sections: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        header = re.fullmatch(r"\[([a-z.]+)\]\s*", line)
        if header:
            sections.append((header.group(1), []))
        elif sections:  # lines before the first header are comments
            sections[-1][1].append(line)
    parts = [(key, "\n".join(lines).strip()) for key, lines in sections]
    singles = {key: body for key, body in parts if not key.startswith("example.")}
    ex_users = [body for key, body in parts if key == "example.user"]
    ex_answers = [body for key, body in parts if key == "example.assistant"]
    if len(ex_users) != len(ex_answers) or not {"system", "user", "repair"} <= singles.keys():
        raise ValueError(f"prompt template {name}.{version} lacks sections or example pairs")
    examples = tuple(zip(ex_users, ex_answers, strict=True))
    return PromptTemplate(name, version, singles["system"], examples, singles["user"], singles["repair"])
