"""The served view of the store: one immutable `Version` per commit, swapped atomically.

A poll thread asks the store for its newest commit id every `poll_s`; on a change it reads one
snapshot (one commit whole), builds the models of the paths that changed off to the side (unchanged
paths keep their models), and only then swaps the reference that requests read. A request takes the
version once, so it is answered entirely by one commit, and the tensors of that version stay in memory
while it runs even if a later commit drops their blobs from the store."""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from mupath.errors import StoreError
from mupath.model.path_model import PathModel
from mupath.serve.config import ServeConfig
from mupath.serve.forward import rows_are_independent
from mupath.store.records import ROOT_TASK, TaskRecord
from mupath.store.store import Snapshot, Store
from mupath.system import TaskStatus, task_statuses

log = logging.getLogger("mupath.serve")
BUILD_ATTEMPTS = 5


@dataclasses.dataclass(frozen=True)
class TaskInfo:
    """What GET /v1/tasks tells about a task besides its classes and version."""

    test_accuracy: float | None
    params_owned: int
    params_shared: int
    accounted_params: float
    reused_components: int
    reused_from: tuple[str, ...]
    image_shape: tuple[int, int, int]
    grown_from: str | None = None      #: the other task whose path this one was grown from (`TaskStatus`)


@dataclasses.dataclass(frozen=True)
class ServedTask:
    """A task as one version serves it: its retained path's frozen model and the component ids the
    prefix trie groups by."""

    name: str
    version: str                       #: the retained path's id
    class_names: tuple[str, ...]
    image_size: int
    model: PathModel
    slot_ids: Mapping[str, str]
    info: TaskInfo


@dataclasses.dataclass(frozen=True)
class Version:
    """Everything one commit serves. `rows_batching`: images of different requests may share tensors
    (bit-identical on this machine, see `rows_are_independent`); `prefix_sharing`: tasks sharing a
    path prefix run it once (off: one model per task, the benchmark's baseline)."""

    commit_id: int
    tasks: Mapping[str, ServedTask]    #: in the store's order of addition
    pending: tuple[str, ...]           #: tasks added but not evolved yet (not served)
    rows_batching: bool
    prefix_sharing: bool
    loaded_at: float


class Registry:
    """Owns the read-only store (all access under one lock) and the current `Version`."""

    def __init__(self, folder: str | Path, config: ServeConfig,
                 on_swap: Callable[[Version, float], None] | None = None) -> None:
        self.config = config
        self._store = Store.open(folder, read_only=True)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_swap = on_swap
        self.failures = 0
        with self._lock:
            self._current = self._build_retrying(None)

    @property
    def current(self) -> Version:
        return self._current           # one reference read: atomic

    @property
    def folder(self) -> Path:
        return self._store.folder

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._poll, name="mupath-serve-reload", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        with self._lock:
            self._store.close()

    def reload_if_changed(self) -> bool:
        """Build and swap in the newest commit if it is not the one served; True when swapped."""
        with self._lock:
            if self._store.last_commit_id() == self._current.commit_id:
                return False
            started = time.perf_counter()
            version = self._build_retrying(self._current)
            self._current = version
        log.info("serving commit %d (%d tasks)", version.commit_id, len(version.tasks))
        if self._on_swap is not None:
            self._on_swap(version, time.perf_counter() - started)
        return True

    def _poll(self) -> None:
        while not self._stop.wait(self.config.poll_s):
            try:
                self.reload_if_changed()
            except Exception as exc:        # keep serving the old version; try again next poll
                self.failures += 1
                log.warning("reload failed, still serving commit %d: %s", self._current.commit_id, exc)

    def _build_retrying(self, previous: Version | None) -> Version:
        """A version of the newest commit. A commit landing while it is read (a blob its snapshot
        names deleted since, or statuses of another commit) is retried on a fresh snapshot."""
        for attempt in range(BUILD_ATTEMPTS):
            snap = self._store.snapshot()
            try:
                statuses = {s.task: s for s in task_statuses(self._store)}
                if any(statuses[name].path_id != path.id for name, path in snap.retained.items()
                       if name != ROOT_TASK and name in statuses):
                    raise StoreError("a commit landed between the snapshot and the statuses")
                return self._build(snap, statuses, previous)
            except StoreError:
                if attempt == BUILD_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
        raise AssertionError("unreachable")

    def _build(self, snap: Snapshot, statuses: Mapping[str, TaskStatus], previous: Version | None) -> Version:
        served: dict[str, ServedTask] = {}
        pending = []
        fresh: list[str] = []               # tasks whose model is new in this version
        for record in snap.tasks:
            path = snap.retained.get(record.name)
            if path is None or record.name == ROOT_TASK:
                pending.append(record.name)
                continue
            old = previous.tasks.get(record.name) if previous is not None else None
            if old is not None and old.version == path.id:
                model = old.model
            else:
                model = self._store.build_model(path, components=snap.components)
                fresh.append(record.name)
            served[record.name] = ServedTask(record.name, path.id, tuple(record.class_names),
                                             int(path.hparams["ds_image_size"]), model,
                                             dict(path.components), _info(record, statuses[record.name]))
        return Version(snap.commit_id, served, tuple(pending), self._rows_batching(served, fresh, previous),
                       self.config.prefix_sharing, time.time())

    def _rows_batching(self, served: Mapping[str, ServedTask], fresh: list[str], previous: Version | None) -> bool:
        """Whether rows of different requests may share tensors. Independence of rows is a property of
        each task's model, so only the models new in this version are probed (once the machine's
        kernels failed the probe, they keep failing it: no probe at all)."""
        if self.config.batching != "auto":
            return self.config.batching == "rows"
        if previous is not None and previous.tasks and not previous.rows_batching:
            return False
        probe = {n: served[n] for n in fresh}
        sizes = {t.image_size for t in probe.values()}
        return all(rows_are_independent({n: t.model for n, t in probe.items() if t.image_size == size},
                                         {n: t.slot_ids for n, t in probe.items() if t.image_size == size},
                                         size, self.config.max_batch) for size in sizes)


def _info(record: TaskRecord, status: TaskStatus) -> TaskInfo:
    return TaskInfo(status.test_accuracy, status.params_owned, status.params_shared,
                    float(status.accounted_params), status.reused_components, tuple(status.reused_from),
                    (int(record.image_shape[0]), int(record.image_shape[1]), int(record.image_shape[2])),
                    status.grown_from)
