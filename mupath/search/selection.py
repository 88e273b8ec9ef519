"""Parent selection, the µ2Net `PPDecay` rule: try the task's own population best-first, accepting
each path with probability 0.5 ** (children it already had for this task); then the other tasks'
best paths (and the root: the parent pool) the same way, rotating an accepted one to the end; then
uniformly."""
from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping

from mupath.store.records import PathRecord


def select_parent(population: list[PathRecord], scores: Mapping[str, float], parent_pool: list[PathRecord],
                  offspring: Counter, task: str, rng: random.Random) -> PathRecord:
    """Pick the parent of the next child; `parent_pool` is rotated in place (see docs/design.md,
    "Method notes", for how this differs from the reference)."""
    ranked = sorted(enumerate(population), key=lambda ip: (-scores[ip[1].id], -ip[0]))
    for _, path in ranked:
        if rng.random() < 0.5 ** offspring[(path.id, task)]:
            return path
    for i, path in enumerate(parent_pool):
        if rng.random() < 0.5 ** offspring[(path.id, task)]:
            parent_pool.append(parent_pool.pop(i))
            return path
    pool = population + parent_pool
    return pool[rng.randrange(len(pool))]
