"""Multi-task inference: tasks whose paths start with the same components compute that shared prefix
once and branch where their paths diverge (a trie over component ids)."""
from __future__ import annotations

from collections.abc import Mapping

import torch

from mupath.model.path_model import PathModel


def shared_forward(models: Mapping[str, PathModel], slot_ids: Mapping[str, Mapping[str, str]],
                   x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Logits of every task for the same preprocessed images `x` (all tasks at one image size).

    Tasks are grouped by their embedding components, then recursively by the component id of each
    next body slot; each group runs that component once on its shared activations."""
    out: dict[str, torch.Tensor] = {}
    groups: dict[tuple[str, ...], list[str]] = {}
    for task in models:
        ids = slot_ids[task]
        groups.setdefault(tuple(ids[s] for s in models[task].embed_slots), []).append(task)
    for tasks in groups.values():
        tokens = models[tasks[0]].embed(x)
        _branch(tasks, tokens, 0, models, slot_ids, out)
    return out


def _branch(tasks: list[str], tokens: torch.Tensor, depth: int, models: Mapping[str, PathModel],
            slot_ids: Mapping[str, Mapping[str, str]], out: dict[str, torch.Tensor]) -> None:
    by_next: dict[str, list[str]] = {}
    for task in tasks:
        body = models[task].body
        if depth == len(body):
            out[task] = models[task].head_logits(tokens)
        else:
            by_next.setdefault(slot_ids[task][body[depth]], []).append(task)
    for group in by_next.values():
        first = models[group[0]]
        _branch(group, first.run(first.body[depth], tokens), depth + 1, models, slot_ids, out)
