"""The search log, typed: what each commit row's `info` holds (docs/design.md, table `commits`). The
search writes it through these records and every reader (`mupath history`, the demo, the benchmarks,
the server's page) reads attributes; on disk it stays the same JSON, so older stores read back (a field
a commit predates is its default: `tried` is None for commits made before the log existed)."""
from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class TriedCandidate:
    """One candidate of a task's search. `quality`: set only when it beat its bar and joined the
    population; `best_val`: its best validation accuracy either way (how close a loser came); `data`:
    its generation's data-hyperparameter moves from its parent, {key: [parent's, child's]}."""

    path: str
    generation: int
    parent_task: str | None
    mutations: dict[str, Any]
    data: dict[str, Any]
    quality: float | None
    best_val: float | None
    score: float | None
    owned_params: int
    accounted_params: float
    entered: bool
    failure: str | None
    device: str | None
    retained: bool = False
    steps: int = 0                  #: training steps it took (a continuation: beyond its parent's)
    parent: str | None = None       #: its parent path's id (a continuation's: the survivor it trained on from)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TriedCandidate:
        return cls(d["path"], int(d.get("generation", 0)), d.get("parent_task"), d.get("mutations") or {},
                   d.get("data") or {}, d.get("quality"), d.get("best_val", d.get("quality")), d.get("score"),
                   int(d.get("owned_params", 0)), float(d.get("accounted_params", 0.0)), bool(d.get("entered")),
                   d.get("failure"), d.get("device"), bool(d.get("retained")), int(d.get("steps", 0)),
                   d.get("parent"))


@dataclasses.dataclass(frozen=True)
class CommitInfo:
    """A commit's search summary. Evolution commits fill the search fields; a baseline's commit says
    which baseline and its budget (`baseline`, `budget_images`, ...) in `extra`."""

    score: float | None = None
    candidates: int = 0
    improved: int = 0
    failures: tuple[str, ...] = ()
    tried: tuple[TriedCandidate, ...] | None = None
    train_images: int = 0
    train_time: float = 0.0
    wall_time: float = 0.0
    probe_top: tuple[tuple[str, float], ...] = ()
    probe_time: float | None = None
    test_accuracy: float | None = None
    changed: bool = False
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def devices(self) -> list[str]:
        """Where its candidates trained (logs before the device setting do not say)."""
        return sorted({str(t.device) for t in self.tried or () if t.device})

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> CommitInfo:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        tried = d.get("tried")
        return cls(d.get("score"), int(d.get("candidates", 0)), int(d.get("improved", 0)),
                   tuple(d.get("failures") or ()),
                   None if tried is None else tuple(TriedCandidate.from_json(t) for t in tried),
                   int(d.get("train_images", 0)), float(d.get("train_time", 0.0)), float(d.get("wall_time", 0.0)),
                   tuple((str(t), float(r)) for t, r in d.get("probe_top") or ()), d.get("probe_time"),
                   d.get("test_accuracy"), bool(d.get("changed")), {k: v for k, v in d.items() if k not in known})


@dataclasses.dataclass(frozen=True)
class CommitRecord:
    """One row of the `commits` table: a task iteration (or a baseline) committed."""

    id: int
    task: str
    path_id: str
    run_id: str | None
    iteration: int | None
    time: float
    test_accuracy: float | None
    info: CommitInfo

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> CommitRecord:
        return cls(int(row["id"]), row["task"], row["path_id"], row["run_id"], row["iteration"], float(row["time"]),
                   row["test_accuracy"], CommitInfo.from_json(row["info"]))
