"""The prefix trie with rows: every task runs on the rows that asked for it, and a component shared
by several tasks runs once on the union of their rows. This is `mupath.model.multipath.shared_forward`
for a batch whose requests ask different tasks (shared_forward runs every task on every row).

Selecting rows copies them, so each row's logits are computed from the very same values; whether a
kernel gives a row the same bits in a batch of another size is a property of the machine's kernels,
which `rows_are_independent` probes (docs/serving.md, "Bit-identical answers")."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from mupath.model.path_model import PathModel
from mupath.train.pipeline import to_model_input

Rows = Sequence[int]


def routed_forward(models: Mapping[str, PathModel], slot_ids: Mapping[str, Mapping[str, str]],
                   x: torch.Tensor, rows: Mapping[str, Rows]) -> dict[str, torch.Tensor]:
    """{task: logits of x[rows[task]]} (rows ascending) for preprocessed images `x` of one size."""
    out: dict[str, torch.Tensor] = {}
    groups: dict[tuple[str, ...], list[str]] = {}
    for task in models:
        groups.setdefault(tuple(slot_ids[task][s] for s in models[task].embed_slots), []).append(task)
    everything = list(range(x.shape[0]))
    for tasks in groups.values():
        need = _union(rows, tasks)
        first = models[tasks[0]]
        acts = first.embed(_select(x, everything, need, None))
        _descend(tasks, acts, need, 0, models=models, slot_ids=slot_ids, rows=rows, out=out)
    return out


def _descend(tasks: list[str], acts: torch.Tensor, have: list[int], depth: int, *,
             models: Mapping[str, PathModel], slot_ids: Mapping[str, Mapping[str, str]],
             rows: Mapping[str, Rows], out: dict[str, torch.Tensor]) -> None:
    by_next: dict[str, list[str]] = {}
    for task in tasks:
        model = models[task]
        if depth == len(model.body):
            out[task] = model.head_logits(_select(acts, have, list(rows[task]), model))
        else:
            by_next.setdefault(slot_ids[task][model.body[depth]], []).append(task)
    for group in by_next.values():
        first = models[group[0]]
        need = _union(rows, group)
        sub = _select(acts, have, need, first)
        _descend(group, first.run(first.body[depth], sub), need, depth + 1, models=models, slot_ids=slot_ids,
                 rows=rows, out=out)


def _union(rows: Mapping[str, Rows], tasks: list[str]) -> list[int]:
    return sorted(set().union(*(rows[t] for t in tasks)))


def _select(acts: torch.Tensor, have: list[int], need: list[int], model: PathModel | None) -> torch.Tensor:
    """The rows `need` of activations holding rows `have`, in the memory layout the family runs on
    (a copy of a channels-last tensor is put back into channels-last, as a plain forward has it)."""
    if need == have:
        return acts
    where = {row: i for i, row in enumerate(have)}
    picked = acts.index_select(0, torch.tensor([where[r] for r in need], dtype=torch.long))
    return model.family.activations(picked) if model is not None else picked.contiguous()


def rows_are_independent(models: Mapping[str, PathModel], slot_ids: Mapping[str, Mapping[str, str]],
                         image_size: int, batch: int, seed: int = 0) -> bool:
    """True when, on this machine, every task's logits of an image are the same bits whether it runs
    alone or among `batch` images and whichever other rows share its batch. Kernels pick their
    algorithm from shapes, not values, so random images probe them."""
    n = max(2, min(batch, 16))
    gen = torch.Generator().manual_seed(seed)
    x = to_model_input(torch.randint(0, 256, (n, 3, image_size, image_size), dtype=torch.uint8,
                                     generator=gen), image_size)
    names = list(models)
    with torch.inference_mode():
        full = routed_forward(models, slot_ids, x, {t: range(n) for t in names})
        for i in range(n):
            alone = routed_forward(models, slot_ids, x[i:i + 1], {t: [0] for t in names})
            if any(not torch.equal(alone[t][0], full[t][i]) for t in names):
                return False
        mixed_rows = {t: [i for i in range(n) if (i + k) % 2 == 0 or i == 0] for k, t in enumerate(names)}
        mixed = routed_forward(models, slot_ids, x, mixed_rows)
        return all(torch.equal(mixed[t], full[t][mixed_rows[t]]) for t in names)
