"""Evaluation. Logits are computed in fixed-size batches in a fixed order so that the same model on
the same images gives the same bits: that is what the no-forgetting check compares."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from mupath.train.pipeline import to_model_input

EVAL_BATCH = 250


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


@torch.inference_mode()
def logits_of(model: nn.Module, images: torch.Tensor, image_size: int, *, batch: int = EVAL_BATCH,
              preprocessed: bool = False) -> torch.Tensor:
    """Logits for (N, C, H, W) uint8 images (or already preprocessed floats), in order."""
    model.eval()
    out = []
    for start in range(0, images.shape[0], batch):
        chunk = images[start:start + batch]
        x = chunk if preprocessed else to_model_input(chunk, image_size)
        out.append(model(x).float())
    if not out:
        return torch.zeros(0)
    return torch.cat(out)


def accuracy_of(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Exact accuracy over all examples."""
    if labels.numel() == 0:
        return 0.0
    return float((logits.argmax(dim=1) == labels).float().mean())
