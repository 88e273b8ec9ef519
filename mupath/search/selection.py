"""Parent selection, the µ2Net `PPDecay` rule: try the task's own population best-first, accepting
each path with probability 0.5 ** (children it already had for this task); then the other tasks'
best paths (and the root: the parent pool) the same way, rotating the pool past an accepted path (the
reference's `seed_paths[pos:] + seed_paths[:pos]`); then uniformly."""
from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping

from mupath.store.records import PathRecord


def select_parent(population: list[PathRecord], scores: Mapping[str, float], parent_pool: list[PathRecord],
                  offspring: Counter, task: str, rng: random.Random) -> PathRecord:
    """Pick the parent of the next child. Accepting the pool's i-th path rotates the pool in place so that
    the paths after it come first and it and those before it go last, as the reference does: the next
    child starts its search among the paths the last one skipped."""
    ranked = sorted(enumerate(population), key=lambda ip: (-scores[ip[1].id], -ip[0]))
    for _, path in ranked:
        if rng.random() < 0.5 ** offspring[(path.id, task)]:
            return path
    for i, path in enumerate(parent_pool):
        if rng.random() < 0.5 ** offspring[(path.id, task)]:
            parent_pool[:] = parent_pool[i + 1:] + parent_pool[:i + 1]
            return path
    pool = population + parent_pool
    return pool[rng.randrange(len(pool))]
