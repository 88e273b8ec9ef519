"""µ2Net scoring: score = quality * s ** (accounted_params / root_params), where a component shared by
k tasks costs |c| / k to each (ScorerDecay); components only this path uses cost fully."""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

from mupath.runtime.jobs import size_penalty
from mupath.store.records import ROOT_TASK, PathRecord


def compute_users(retained: Mapping[str, PathRecord]) -> dict[str, set[str]]:
    """component id -> the tasks whose retained path uses it (µ2Net calls these its locks; ROOT_TASK
    marks the root's, frozen for everyone: the reference's NOT_TRAINABLE lock). A component with users
    is frozen for every task but those."""
    users: dict[str, set[str]] = defaultdict(set)
    for task, path in retained.items():
        for cid in path.components.values():
            users[cid].add(task)
    return users


compute_locks = compute_users     # the name before issue 21


def accounted_params(components: Iterable[str], task: str, users: Mapping[str, set[str]],
                     sizes: Mapping[str, int]) -> float:
    """Σ |c| / |users(c) ∪ {task} \\ {ROOT}| over the path's components."""
    total = 0.0
    for cid in components:
        sharing = (set(users.get(cid, ())) | {task}) - {ROOT_TASK}
        total += sizes[cid] / len(sharing)
    return total


def score(val_accuracy: float, accounted: float, root_params: int, scale_factor: float) -> float:
    """The µ2Net score, with the size penalty every worker applies (`runtime.jobs.size_penalty`)."""
    return val_accuracy * size_penalty(accounted, root_params, scale_factor)
