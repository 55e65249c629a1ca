"""What every torch adapter shares: device and dtype resolution, GPU timing, OOM back-off.

A ModelSpec says ``auto``; only here, where torch is imported (lazily), does that become a
real device. CUDA runs half precision (float16, or bfloat16 when configured) with PyTorch's
scaled-dot-product attention; every other device runs float32, which is what CPU kernels
are fast and exact in.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from shared.model_specs import ModelSpec

if TYPE_CHECKING:
    import torch

log = logging.getLogger("onbrand.models")
T = TypeVar("T")
R = TypeVar("R")


class ModelUnavailable(RuntimeError):
    """A configured model cannot be loaded (missing path, not in the offline hub cache, broken files).

    The message names the stage and the setting to fix; `onbrand models check` prints it.
    """

    def __init__(self, spec: ModelSpec, reason: str) -> None:
        path_like = spec.local or Path(spec.source).is_absolute() or spec.source.startswith(".")
        where = "local path" if path_like else "hub id (offline: must already be in the HF cache)"
        super().__init__(f"{spec.stage}: {spec.adapter} model {spec.model!r} ({where}) cannot be loaded: {reason}")
        self.spec = spec


def device(spec: ModelSpec) -> torch.device:
    import torch

    if spec.device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"{spec.stage}: ONBRAND_MODEL_DEVICE=cuda but no CUDA device is visible")
    if spec.device in ("cuda", "auto") and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def dtype(spec: ModelSpec, dev: torch.device) -> torch.dtype:
    import torch

    if dev.type != "cuda":
        return torch.float32
    return torch.bfloat16 if spec.dtype == "bfloat16" else torch.float16


def synchronize(dev: torch.device) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


@contextmanager
def timed(dev: torch.device) -> Iterator[list[float]]:
    """Wall seconds of the block, kernels included (CUDA is asynchronous): ``with timed(d) as t``."""
    out: list[float] = []
    synchronize(dev)
    start = time.perf_counter()
    yield out
    synchronize(dev)
    out.append(time.perf_counter() - start)


def is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower()


def in_batches(
    items: Sequence[T], batch_size: int, run: Callable[[Sequence[T]], list[R]], on_oom: Callable[[], Any] | None = None
) -> list[R]:
    """``run`` over chunks of ``items``; a chunk that runs out of GPU memory is halved and retried.

    A single item that still does not fit re-raises: the task fails with the real error
    instead of looping. ``on_oom`` frees what it can (torch.cuda.empty_cache) before the retry.
    """
    out: list[R] = []
    size, i = max(1, batch_size), 0
    while i < len(items):
        chunk = items[i : i + size]
        try:
            out += run(chunk)
        except Exception as exc:  # noqa: BLE001 - only OOM is handled, the rest re-raises
            if not is_oom(exc) or size == 1:
                raise
            size = max(1, size // 2)
            log.warning("out of memory at batch %d: retrying at batch %d", len(chunk), size)
            if on_oom is not None:
                on_oom()
            continue
        i += len(chunk)
    return out
