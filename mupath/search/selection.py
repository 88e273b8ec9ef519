"""Parent selection, the µ2Net `PPDecay` rule: try the task's own population best-first, accepting
each path with probability 0.5 ** (children it already had for this task); then the other tasks'
best paths (and the root) the same way, rotating an accepted seed to the end; then uniformly."""
from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping

from mupath.store.records import PathRecord


def select_parent(population: list[PathRecord], scores: Mapping[str, float], seeds: list[PathRecord],
                  offspring: Counter, task: str, rng: random.Random) -> PathRecord:
    """Pick the parent of the next child; `seeds` is rotated in place as the reference does."""
    ranked = sorted(enumerate(population), key=lambda ip: (-scores[ip[1].id], -ip[0]))
    for _, path in ranked:
        if rng.random() < 0.5 ** offspring[(path.id, task)]:
            return path
    for i, path in enumerate(seeds):
        if rng.random() < 0.5 ** offspring[(path.id, task)]:
            seeds.append(seeds.pop(i))
            return path
    pool = population + seeds
    return pool[rng.randrange(len(pool))]
