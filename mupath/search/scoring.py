"""µ2Net scoring: score = quality * s ** (accounted_params / root_params), where a component shared by
k tasks costs |c| / k to each (ScorerDecay); components only this path uses cost fully."""
from __future__ import annotations

from collections import defaultdict
from typing import Iterable, Mapping

from mupath.store.records import ROOT_TASK, PathRecord


def compute_locks(retained: Mapping[str, PathRecord]) -> dict[str, set[str]]:
    """component id -> the tasks whose retained path uses it (ROOT_TASK marks the root's, frozen for
    everyone: the reference's NOT_TRAINABLE lock)."""
    locks: dict[str, set[str]] = defaultdict(set)
    for task, path in retained.items():
        for cid in path.components.values():
            locks[cid].add(task)
    return locks


def accounted_params(components: Iterable[str], task: str, locks: Mapping[str, set[str]],
                     sizes: Mapping[str, int]) -> float:
    """Σ |c| / |locks(c) ∪ {task} \\ {ROOT}| over the path's components."""
    total = 0.0
    for cid in components:
        users = (set(locks.get(cid, ())) | {task}) - {ROOT_TASK}
        total += sizes[cid] / len(users)
    return total


def score(quality: float, accounted: float, root_params: int, scale_factor: float) -> float:
    return quality * scale_factor ** (accounted / root_params)
