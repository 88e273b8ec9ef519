"""What a search tells an experiment tracker while it runs (TensorBoard, MLflow: `mupath.track`):
typed events at two moments, a candidate's result and a task iteration's commit. The loop calls a
`Tracker`; `NullTracker` is the one that does nothing (`--no-log`)."""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol

from mupath.runtime.jobs import CandidateResult


@dataclasses.dataclass(frozen=True)
class CandidateEvent:
    """One trained candidate: where it stood in the search and what came of it."""

    task: str
    iteration: int
    generation: int
    index: int                    #: its position in the generation
    path_id: str
    parent_task: str
    mutations: dict[str, Any]     #: its own mutations (the search log's entry)
    result: CandidateResult


@dataclasses.dataclass(frozen=True)
class CommitEvent:
    """A task iteration's outcome, committed: the retained path and the system after the commit."""

    task: str
    iteration: int
    step: int                     #: commits of this run so far (a tracker's x axis)
    path_id: str
    changed: bool
    score: float
    val_accuracy: float
    test_accuracy: float
    accounted_params: float
    mutations: dict[str, Any]     #: the retained path's mutations from its parent
    candidates: int
    improved: int
    system_params: int            #: parameters of every live component, the root's included
    num_tasks: int                #: tasks with a retained path
    wall_time: float


class Tracker(Protocol):
    def candidate(self, event: CandidateEvent) -> None: ...
    def committed(self, event: CommitEvent) -> None: ...
    def close(self) -> None: ...


class NullTracker:
    """Tracks nothing."""

    def candidate(self, event: CandidateEvent) -> None:
        pass

    def committed(self, event: CommitEvent) -> None:
        pass

    def close(self) -> None:
        pass
