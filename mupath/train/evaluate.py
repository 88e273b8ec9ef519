"""Evaluation. Logits are computed in fixed-size batches in a fixed order so that the same model on
the same images gives the same bits: that is what the no-forgetting check compares."""
from __future__ import annotations

import concurrent.futures
import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import torch
from torch import nn

from mupath.train.pipeline import to_model_input

EVAL_BATCH = 250
T = TypeVar("T")


def cores() -> int:
    """CPU cores this process may use (its affinity, where the OS tells)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@contextlib.contextmanager
def fixed_threads(n: int | None) -> Iterator[None]:
    """Temporarily run torch with `n` threads (None: leave as is); reductions split across threads
    differently, so bit-exact comparisons use a fixed count."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def logits_of(model: nn.Module, images: torch.Tensor, image_size: int, *, batch: int = EVAL_BATCH,
              preprocessed: bool = False, parallel: int = 1) -> torch.Tensor:
    """Logits for (N, C, H, W) uint8 images (or already preprocessed floats), in order. `parallel` > 1
    runs that many batches at once on Python threads: each batch is still computed alone with the
    caller's torch thread count, so the bits are the same as one batch after another (the
    no-forgetting check uses it with 1 torch thread to keep its references exact and still use every
    core)."""
    model.eval()

    def one(start: int) -> torch.Tensor:
        with torch.inference_mode():          # grad mode is per thread: a pool thread starts with it on
            chunk = images[start:start + batch]
            x = chunk if preprocessed else to_model_input(chunk, image_size)
            return model(x).float()

    out = list(map_batches(one, range(0, images.shape[0], batch), parallel))
    if not out:
        return torch.zeros(0)
    return torch.cat(out)


def map_batches(fn: Callable[[int], T], starts: Sequence[int], parallel: int) -> Iterator[T]:
    """`fn(start)` for every start, in order. `parallel` > 1: that many calls at once on Python threads,
    each at the caller's torch thread count (OpenMP's count is per thread: a new one starts with all
    cores), so every result has the bits of a call made alone. `fn` must enter its own grad mode."""
    if parallel <= 1 or len(starts) < 2:
        yield from map(fn, starts)
        return
    threads = torch.get_num_threads()
    with concurrent.futures.ThreadPoolExecutor(min(parallel, len(starts)), initializer=torch.set_num_threads,
                                               initargs=(threads,)) as pool:
        yield from pool.map(fn, starts)


def accuracy_of(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Exact accuracy over all examples."""
    if labels.numel() == 0:
        return 0.0
    return float((logits.argmax(dim=1) == labels).float().mean())
