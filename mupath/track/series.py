"""What a tracker plots, apart from where it writes it: the events of `mupath.search.tracking` turned
into named points (tag, value, step) and commit texts. TensorBoard and MLflow write the same points,
so their tags and axes agree and are documented once (docs/tracking.md). Every x axis is chosen so
that a resumed run (the same run, new writes) continues its curves instead of drawing over them."""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from mupath.search.settings import EvolveSettings
from mupath.search.tracking import CandidateEvent, CommitEvent


@dataclasses.dataclass(frozen=True)
class Point:
    tag: str
    value: float
    step: int


@dataclasses.dataclass(frozen=True)
class Axes:
    """How events become steps. `steps_per_validation` turns a candidate's n-th validation into its
    optimiser step (all candidates' curves share one x axis); `candidates` and `generations` number a
    task's candidates from its task iteration, so a redone (interrupted) iteration gives its candidates
    the same numbers again; `first_step` is the number of commits a resumed run already holds."""

    steps_per_validation: int
    candidates: int
    generations: int
    first_step: int = 0

    @classmethod
    def of(cls, settings: EvolveSettings, first_step: int = 0) -> Axes:
        return cls(settings.steps_per_validation, settings.candidates, settings.generations, first_step)

    def candidate_number(self, event: CandidateEvent) -> int:
        """The candidate's place among all of its task's candidates in this run (0, 1, ...)."""
        per_iteration = self.candidates * self.generations
        return event.iteration * per_iteration + event.generation * self.candidates + event.index


def curve_tag(event: CandidateEvent) -> str:
    return f"candidate/{event.task}/it{event.iteration}-gen{event.generation}-c{event.index}/val_accuracy"


def candidate_points(event: CandidateEvent, axes: Axes) -> list[Point]:
    """The candidate's validation curve under its own tag, then its best validation accuracy, score
    and size on the task's axis of candidates. Only a candidate that beat its bar (its parent's score)
    has a score of its own (one that lost reports the bar); a failed one has neither."""
    res, task = event.result, event.task
    points = [Point(curve_tag(event), accuracy, (k + 1) * axes.steps_per_validation)
              for k, accuracy in enumerate(res.evals)]
    if res.failure is not None:
        return points
    number = axes.candidate_number(event)
    if res.evals:
        points.append(Point(f"search/{task}/candidate_best_val", max(res.evals), number))
    if res.improved and res.score is not None:
        points.append(Point(f"search/{task}/candidate_score", res.score, number))
    points += [Point(f"search/{task}/candidate_owned_params", res.owned_params, number),
               Point(f"search/{task}/candidate_accounted_params", res.accounted_params, number),
               Point(f"search/{task}/candidate_improved", float(res.improved), number)]
    return [p for p in points if math.isfinite(p.value)]


def commit_points(event: CommitEvent, axes: Axes) -> list[Point]:
    """The retained path per task over its task iterations, and the system's size against the number
    of tasks and over the run's commits."""
    step = axes.first_step + event.step
    points = [Point(f"retained/{event.task}/{name}", float(getattr(event, name)), event.iteration)
              for name in ("score", "val_accuracy", "test_accuracy", "accounted_params")]
    points += [Point("system/params_by_tasks", event.system_params, event.num_tasks),
               Point("system/params", event.system_params, step),
               Point("system/tasks", event.num_tasks, step)]
    return points


def failure_text(event: CandidateEvent, axes: Axes) -> str:
    return f"candidate {axes.candidate_number(event)} (`{event.path_id}`): {event.result.failure}"


def commit_text(event: CommitEvent) -> str:
    """One commit as markdown: what was kept, how it scored, and its mutations one per line."""
    head = (f"**{event.task}**, iteration {event.iteration}: path `{event.path_id}` "
            f"{'(new)' if event.changed else '(unchanged)'}, score {event.score:.4f}, "
            f"val {event.val_accuracy:.4f}, test {event.test_accuracy:.4f}, "
            f"{event.improved}/{event.candidates} candidates improved")
    lines = [f"- {mutation_line(key, value)}" for key, value in sorted(event.mutations.items())]
    return "\n\n".join([head, "\n".join(lines) if lines else "no mutations (its parent's path as it is)"])


def mutation_line(key: str, value: Any) -> str:
    """One mutation as the search log writes it: cloned slots, added adapters, or a hyperparameter's
    `[old, new]`; anything else as JSON (the log is free to grow new kinds)."""
    if key == "cloned" and isinstance(value, list):
        return "cloned " + ", ".join(f"`{v}`" for v in value)
    if key == "adapters_added" and isinstance(value, list):
        return "added adapter " + ", ".join(str(v) for v in value)
    if isinstance(value, list) and len(value) == 2:
        return f"`{key}` {_json(value[0])} → {_json(value[1])}"
    return f"`{key}`: {_json(value)}"


def _json(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
