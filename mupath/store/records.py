"""Plain records the manifest reads and writes."""
from __future__ import annotations

import dataclasses
from typing import Any

ROOT_TASK = "__root__"   #: pseudo-task owning the root's components (lock NOT_TRAINABLE in µ2Net)


@dataclasses.dataclass(frozen=True)
class ComponentRecord:
    id: str
    kind: str
    slot: str
    config: dict[str, Any]
    blob: str
    num_params: int
    task: str                       #: the task that created it (ROOT_TASK for the root's)


@dataclasses.dataclass
class PathRecord:
    """A task's model: slot -> component id, plus its hyperparameters, lineage and measurements."""

    id: str
    task: str
    parent_id: str | None
    components: dict[str, str]
    hparams: dict[str, Any]
    quality: float = float("-inf")
    metrics: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TaskRecord:
    name: str
    position: int
    data_blob: str
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]
    source: str
    sizes: dict[str, int]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


@dataclasses.dataclass(frozen=True)
class CheckRecord:
    """The reference a task's predictions are compared with: test logits recorded at its last commit."""

    task: str
    commit_id: int
    logits_blob: str
    test_accuracy: float


@dataclasses.dataclass(frozen=True)
class CandidateComponent:
    """A component a path of the search refers to: committed (`blob`) or trained by a candidate of this
    run and still in its scratch file (`scratch`). `num_params` counts its tensors."""

    id: str
    kind: str
    slot: str
    config: dict[str, Any]
    num_params: int
    blob: str | None = None
    scratch: str | None = None

    @classmethod
    def committed(cls, c: ComponentRecord) -> CandidateComponent:
        return cls(c.id, c.kind, c.slot, c.config, c.num_params, blob=c.blob)
