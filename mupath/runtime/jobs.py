"""The records that cross from the search to a worker and back: a `CandidateJob` (what to build,
how to train and score it) and its `CandidateResult`. Both are frozen and convert to and from JSON,
which is how they travel to worker processes and Ray tasks; tensors never travel in them, they are
named (`TensorRef`) and read from the store's files or from bytes an executor ships along."""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Literal

from mupath.store.tensors import TensorRef

__all__ = ["TensorRef", "SlotInit", "SlotJob", "Budget", "ScoreRule", "CacheSpec", "CandidateJob",
           "CandidateResult", "RetryBook", "size_penalty"]

#: how a trained slot gets its first tensors: a copy of a component, a fresh init, or a resampled
#: position embedding (a ViT whose image size changed)
InitKind = Literal["copy", "fresh", "resample"]


@dataclasses.dataclass(frozen=True)
class SlotInit:
    """A trained slot's initialisation: `copy` of component `source`, `fresh` from `seed`, or
    `resample` of `source`'s position embedding to `grid`."""

    kind: InitKind
    source: str | None = None
    seed: int | None = None
    grid: tuple[int, int] | None = None

    @classmethod
    def copy(cls, source: str) -> SlotInit:
        return cls("copy", source=source)

    @classmethod
    def fresh(cls, seed: int) -> SlotInit:
        return cls("fresh", seed=int(seed))

    @classmethod
    def resample(cls, source: str, grid: tuple[int, int]) -> SlotInit:
        return cls("resample", source=source, grid=(int(grid[0]), int(grid[1])))

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SlotInit:
        grid = data.get("grid")
        return cls(data["kind"], data.get("source"), data.get("seed"),
                   None if grid is None else (int(grid[0]), int(grid[1])))


@dataclasses.dataclass(frozen=True)
class SlotJob:
    """One slot of a candidate: its component, whether the candidate owns (trains) it, and for an
    owned one how it starts."""

    slot: str
    id: str
    kind: str
    config: dict[str, Any]
    trainable: bool
    init: SlotInit | None = None

    @property
    def source(self) -> str | None:
        """The component whose tensors this slot reads: itself when frozen, its init's source else."""
        return self.id if not self.trainable else (self.init.source if self.init else None)


#: the key in `CandidateJob.refs` of the optimiser state a continuation starts from (a survivor's scratch
#: file, tensors under this prefix): shipped and pinned like the components' tensors
OPTIMIZER_REF = "__optimizer__"


@dataclasses.dataclass(frozen=True)
class Budget:
    """How long a candidate trains and how it is validated."""

    steps_per_validation: int
    validations: int
    batch_size: int
    val_limit: int
    #: keep the optimiser's state beside the best snapshot in the scratch file (successive halving: a
    #: survivor's continuation starts from it)
    keep_optimizer: bool = False
    #: `time.time()` after which the candidate starts no training step (its interval then ends with its
    #: validation): a task iteration under a time budget never lets a candidate run past it, whatever its
    #: steps cost (wall-clock seconds since the epoch, so that a worker in another process or on another
    #: machine can read it); None: no bound
    deadline: float | None = None
    #: train for about this many seconds of training steps, the step count above being then the most it
    #: trains (`TrainConfig.seconds`): successive halving's rungs give each candidate the same time, so a
    #: candidate whose steps cost less trains more of them. Such a candidate never fills the activation
    #: cache (a fill is not part of its seconds: on a large task it would eat the budget), it reads what
    #: its ancestor or the first candidates filled; None: the count
    seconds: float | None = None


def size_penalty(accounted: float, root_params: int, scale_factor: float) -> float:
    """µ2Net's factor on a candidate's validation accuracy: s ** (accounted parameters / root's)."""
    return scale_factor ** (accounted / root_params)


@dataclasses.dataclass(frozen=True)
class ScoreRule:
    """The µ2Net score of this candidate: val_accuracy * scale_factor ** (accounted / root_params),
    accounted = `frozen_accounted` (its shared parts, split among their users) + what it owns. It
    enters the population only when its score beats `bar` (its parent's, for a parent of this task)."""

    frozen_accounted: float
    root_params: int
    scale_factor: float
    bar: float | None


@dataclasses.dataclass(frozen=True)
class CacheSpec:
    """The activation cache: `mb` megabytes per worker (0: off); `floor`: leading blocks no candidate
    of the run can own (the checkpoint depth); `floor_file`: a safetensors file holding the floor's
    activations for this job's data and image size, filled once for all workers (`runtime.prefill`),
    or "" (each worker fills its own)."""

    mb: int = 0
    floor: int = 0
    floor_file: str = ""


@dataclasses.dataclass(frozen=True)
class CandidateJob:
    """Everything a worker needs to train one candidate (see the module docstring)."""

    store: str
    root: str                       #: RootSpec JSON
    task_blob: str
    path_id: str
    hparams: dict[str, Any]
    refs: dict[str, TensorRef]      #: component id -> where its tensors are
    slots: tuple[SlotJob, ...]
    budget: Budget
    score: ScoreRule
    cache: CacheSpec
    seed: int
    device: str
    scratch_file: str
    die_once: str | None = None     #: test hook: a marker path (see runtime.executors.DIE_ONCE)

    def replace(self, **changes: Any) -> CandidateJob:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["slots"] = [{**dataclasses.asdict(s), "init": s.init.to_json() if s.init else None} for s in self.slots]
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> CandidateJob:
        d = json.loads(text)
        slots = tuple(SlotJob(s["slot"], s["id"], s["kind"], s["config"], s["trainable"],
                              SlotInit.from_json(s["init"]) if s["init"] else None) for s in d["slots"])
        return cls(d["store"], d["root"], d["task_blob"], d["path_id"], d["hparams"],
                   {k: TensorRef(**v) for k, v in d["refs"].items()}, slots, Budget(**d["budget"]),
                   ScoreRule(**d["score"]), CacheSpec(**d["cache"]), d["seed"], d["device"], d["scratch_file"],
                   d.get("die_once"))


@dataclasses.dataclass(frozen=True)
class CandidateResult:
    """What came of a job. A candidate that trained has `improved` (it beat its bar), its best
    validation accuracy (`val_accuracy`), `score` and measurements; `scratch_file` holds its owned
    tensors when it improved. A failed one has `failure` (one line) and zeros. `attempts`/`retried`:
    executors that retry a dead worker say so."""

    path_id: str
    improved: bool = False
    val_accuracy: float | None = None
    score: float | None = None
    evals: tuple[float, ...] = ()
    steps: int = 0
    images: int = 0
    train_time: float = 0.0
    eval_time: float = 0.0
    failure: str | None = None
    owned_params: int = 0
    accounted_params: float = 0.0
    component_params: dict[str, int] = dataclasses.field(default_factory=dict)
    wall_time: float = 0.0
    pid: int | None = None
    cached_prefix: int = 0
    device: str | None = None
    scratch_file: str | None = None
    attempts: int = 1
    retried: tuple[str, ...] = ()
    #: seconds of `wall_time` spent filling the activation cache (0 on a hit or without the cache): what a
    #: later candidate reading the same entry does not pay
    fill_time: float = 0.0

    # ---- one constructor per failure kind ---------------------------------------------------
    @classmethod
    def crashed(cls, job: CandidateJob, exc: BaseException, wall_time: float) -> CandidateResult:
        """The candidate raised while being built or trained (a candidate never takes the search down)."""
        return cls(job.path_id, failure=f"{type(exc).__name__}: {exc}", wall_time=wall_time)

    @classmethod
    def dropped(cls, job: CandidateJob, reasons: list[str]) -> CandidateResult:
        """Its worker died on every attempt."""
        return cls(job.path_id, attempts=len(reasons),
                   failure=f"worker died {len(reasons)}x, candidate dropped: {reasons[-1]}")

    @classmethod
    def unshippable(cls, job: CandidateJob, what: str, reason: str) -> CandidateResult:
        """A blob or scratch file it needs could not be read to ship it to a remote worker."""
        return cls(job.path_id, failure=f"cannot ship {what}: {reason}")

    def after_retries(self, reasons: list[str]) -> CandidateResult:
        """This result, noting the dead workers it took to get it (none: unchanged)."""
        if not reasons or self.attempts > 1:
            return self
        return dataclasses.replace(self, attempts=len(reasons) + 1, retried=tuple(reasons))

    def replace(self, **changes: Any) -> CandidateResult:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> CandidateResult:
        d = json.loads(text)
        d["evals"], d["retried"] = tuple(d["evals"]), tuple(d["retried"])
        return cls(**d)


class RetryBook:
    """Retry bookkeeping shared by the executors that run candidates out of process: each job's
    dead-worker reasons, whether it may run again (`WORKER_RETRIES` retries), and its final result."""

    def __init__(self, jobs: list[CandidateJob], retries: int) -> None:
        self.jobs = jobs
        self.retries = retries
        self.reasons: list[list[str]] = [[] for _ in jobs]
        self.results: list[CandidateResult | None] = [None] * len(jobs)

    def died(self, i: int, reason: str) -> bool:
        """Record that job i's worker died; True when it may be tried again."""
        self.reasons[i].append(reason)
        return len(self.reasons[i]) <= self.retries

    def drop(self, i: int) -> CandidateResult:
        """Job i's worker died on every attempt: its result says so (and how often)."""
        res = CandidateResult.dropped(self.jobs[i], self.reasons[i])
        self.results[i] = res
        return res

    def finish(self, i: int, res: CandidateResult) -> CandidateResult:
        self.results[i] = res.after_retries(self.reasons[i])
        return self.results[i]  # type: ignore[return-value]

    def in_order(self) -> list[CandidateResult]:
        return [r for r in self.results if r is not None]
