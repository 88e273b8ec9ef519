"""`Store`: one folder holding a grown system: the SQLite manifest, the content-addressed blobs, and
the root model's description. It is what the search, `verify`, the baselines, the server and export
read and write; `System` is the user's face on top of it.

Two modes:
- writable (the default): commits, runs, pins and garbage collection, serialised by SQLite's write lock;
- read-only (`Store.open(folder, read_only=True)`): never writes a byte, never takes the write lock,
  and reads each commit whole (`snapshot()` reads in one read transaction). A server answers from it
  while `mupath evolve` commits in another process."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from torch import nn

from mupath.data import Task, task_to_arrays
from mupath.errors import ConfigError, ForgettingError, StoreError
from mupath.model.components import ComponentSpec, load_component
from mupath.model.path_model import PathModel
from mupath.model.root import RootSpec, root_num_params
from mupath.store.atomic import atomic_write_bytes, write_error
from mupath.store.blobs import BlobStore
from mupath.store.manifest import FORMAT_VERSION, Manifest
from mupath.store.records import ROOT_TASK, CandidateComponent, CheckRecord, ComponentRecord, PathRecord, TaskRecord
from mupath.store.tensors import TensorRef, TensorSource, task_tensors
from mupath.train.evaluate import accuracy_of, cores, fixed_threads, logits_of

MANIFEST = "manifest.sqlite"
CHECK_THREADS = 1   #: thread count of every recorded or re-checked logit (bit-exact comparisons)
#: what `Store.create` writes before its manifest lands (the marker first, the manifest renamed last)
CREATING = ".mupath-creating"
_CREATE_PARTS = frozenset({CREATING, "blobs", f".{MANIFEST}.tmp", f".{MANIFEST}.tmp-journal"})

TensorsOf = Callable[[str], tuple[ComponentSpec, dict[str, torch.Tensor]]]


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Everything a reader needs about the committed state, read in one read transaction, so it is
    one commit whole, never half of one. `commit_id`: the newest commit (0 for a fresh store)."""

    commit_id: int
    tasks: tuple[TaskRecord, ...]
    retained: dict[str, PathRecord]
    components: dict[str, ComponentRecord]
    checks: dict[str, CheckRecord]


@dataclasses.dataclass(frozen=True)
class CommitRequest:
    """One task iteration's outcome to commit: `best` becomes `task`'s retained path (when `changed`),
    its new components are written from their scratch files (`components` looks them up), the search's
    offspring counts are added, and `info` is kept in the commit's row (the search log)."""

    task: str
    best: PathRecord
    components: dict[str, CandidateComponent]
    offspring: dict[tuple[str, str], int]
    run_id: str
    iteration: int
    changed: bool
    info: dict[str, Any]


class Store:
    """Manifest + blobs of one store folder (format: docs/design.md, "Store format")."""

    def __init__(self, folder: Path, manifest: Manifest, *, read_only: bool = False) -> None:
        self.folder = folder
        self.manifest = manifest
        self.read_only = read_only
        self.blobs = BlobStore(folder / "blobs")
        meta = {key: manifest.get_meta(key) for key in ("root", "root_params", "patch_size", "depth")}
        missing = [key for key, value in meta.items() if value is None]
        if missing:                       # never guess a root: tasks would run on the wrong model
            raise StoreError(f"{manifest.path} lacks {', '.join(missing)} in its meta table (damaged); restore "
                             "the manifest from a backup")
        try:
            self.root_spec = RootSpec.from_json(str(meta["root"]))
            self.root_params = int(str(meta["root_params"]))
            self.patch_size = int(str(meta["patch_size"]))       # 0: the family has no patches
            self.depth = int(str(meta["depth"]))
        except (ValueError, TypeError) as exc:
            raise StoreError(f"{manifest.path} has a damaged root description ({exc}); restore the manifest "
                             "from a backup") from None
        self.family = self.root_spec.family
        self._models: dict[str, tuple[str, PathModel]] = {}
        self._modules: dict[str, nn.Module] = {}   # committed components, shared by task models

    # ---- opening and creating ---------------------------------------------------------------
    @classmethod
    def open(cls, folder: str | os.PathLike, *, read_only: bool = False) -> Store:
        path = Path(folder).expanduser().resolve()
        if not (path / MANIFEST).exists():
            raise StoreError(f"no mupath store at {path}; create one with `mupath init {folder}`")
        return cls(path, Manifest(path / MANIFEST, read_only=read_only), read_only=read_only)

    @classmethod
    def create(cls, folder: Path, spec: RootSpec, model: nn.Module, meta: dict[str, int],
               image_size: int) -> Store:
        """A new store of root `model` in `folder` (new or empty). A failed create leaves nothing
        behind, so the same command can simply be run again."""
        cls.check_new_folder(folder)
        if folder.exists() and _is_unfinished_create(folder):
            _clear_folder(folder)          # a create killed before its manifest landed: start over
        created = not folder.exists()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(exc, folder / MANIFEST) from None
        try:
            _write_new_store(folder, spec, model, meta, image_size)
        except BaseException:
            if created:
                shutil.rmtree(folder, ignore_errors=True)
            else:
                _clear_folder(folder)
            raise
        return cls.open(folder)

    @staticmethod
    def check_new_folder(folder: Path) -> None:
        """Refuse a folder a new store cannot go into (changes nothing): a store, a file, a folder
        holding anything but a killed create's leftovers."""
        if (folder / MANIFEST).exists():
            raise StoreError(f"a store already exists at {folder}; open it or choose another folder")
        if folder.exists() and not folder.is_dir():
            raise StoreError(f"{folder} is a file; choose a folder for the store")
        if folder.exists() and not _is_unfinished_create(folder) and any(folder.iterdir()):
            raise StoreError(f"{folder} is not empty; choose an empty or new folder for the store")

    def close(self) -> None:
        self.manifest.close()

    def _writable(self) -> None:
        if self.read_only:
            raise StoreError(f"the store {self.folder} is open read-only; open it without read_only to change it")

    # ---- reads ------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        """The root's input size, as created."""
        return int(self.manifest.get_meta("image_size") or 32)

    @property
    def root_meta(self) -> dict[str, int]:
        """The numbers the root family needs to lay out a path (patch size, depth)."""
        return {"patch_size": self.patch_size, "depth": self.depth}

    def root_configs(self) -> dict[str, dict[str, Any]]:
        """{slot: component config} of the root path."""
        comps = self.manifest.components()
        return {slot: comps[cid].config for slot, cid in self.manifest.retained()[ROOT_TASK].components.items()}

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.manifest.tasks()]

    def task_record(self, name: str) -> TaskRecord:
        for rec in self.manifest.tasks():
            if rec.name == name:
                return rec
        known = ", ".join(self.task_names) or "none yet"
        raise ConfigError(f"unknown task '{name}'; tasks in this store: {known}")

    def task_data(self, name: str) -> dict[str, torch.Tensor]:
        return task_tensors(self.folder, self.task_record(name).data_blob)

    def retained_path(self, task: str) -> PathRecord:
        self.task_record(task)
        path = self.manifest.retained().get(task)
        if path is None:
            raise ConfigError(f"task '{task}' has not been evolved yet; run `mupath evolve {self.folder} "
                              f"--tasks {task}`")
        return path

    def snapshot(self) -> Snapshot:
        """The committed state as one commit whole (one read transaction: a concurrent commit lands
        either entirely before it or entirely after)."""
        with self.manifest.read_transaction():
            return Snapshot(self.manifest.last_commit_id(), tuple(self.manifest.tasks()),
                            self.manifest.retained(), self.manifest.components(), self.manifest.checks())

    def last_commit_id(self) -> int:
        """The newest commit's id: a cheap way for a reader to notice that the store changed."""
        return self.manifest.last_commit_id()

    # ---- models -----------------------------------------------------------------------------
    def load_component(self, record: ComponentRecord) -> nn.Module:
        """A committed component as a frozen module, built once and shared by every path using it."""
        module = self._modules.get(record.id)
        if module is None:
            module = load_component(ComponentSpec(record.kind, record.config), self.root_spec,
                                    self.blobs.get_tensors(record.blob))
            self._modules[record.id] = module
        return module

    def build_model(self, path: PathRecord, tensors_of: TensorsOf | None = None,
                    components: dict[str, ComponentRecord] | None = None) -> PathModel:
        """A frozen PathModel of a path whose components are committed (or given by `tensors_of`).
        `components`: the records to read them from (default: the manifest's now)."""
        comps = self.manifest.components() if components is None else components
        modules: dict[str, nn.Module] = {}
        for slot, cid in path.components.items():
            if cid in comps:
                modules[slot] = self.load_component(comps[cid])
            elif tensors_of is not None:
                spec, tensors = tensors_of(cid)
                modules[slot] = load_component(spec, self.root_spec, tensors)
            else:
                raise StoreError(f"component {cid} of path {path.id} is not in the store; run `mupath verify`")
        return PathModel(modules, self.family).eval()

    def model_of(self, task: str, path: PathRecord) -> PathModel:
        """The model of `path` (the task's retained path), built once per path id."""
        cached = self._models.get(task)
        if cached is None or cached[0] != path.id:
            cached = (path.id, self.build_model(path))
            self._models[task] = cached
        return cached[1]

    def test_logits(self, task: str, path: PathRecord, model: PathModel | None = None) -> torch.Tensor:
        """Logits of `path` on the task's stored test images, computed the one way every recorded
        and re-checked reference is (fixed batch size, CHECK_THREADS threads)."""
        data = self.task_data(task)
        with fixed_threads(CHECK_THREADS):
            return logits_of(model if model is not None else self.model_of(task, path), data["test.x"],
                             int(path.hparams["ds_image_size"]), parallel=cores())

    # ---- writes: tasks and runs -------------------------------------------------------------
    def add_task(self, task: Task) -> None:
        """Store a task's data (one content-addressed blob) so that every run and worker reads the
        same splits."""
        self._writable()
        if task.name == ROOT_TASK or task.name in self.task_names:
            raise ConfigError(f"task '{task.name}' already exists in this store; pick another --name")
        blob = self.blobs.put_arrays(task_to_arrays(task))
        sizes = {"train": len(task.train), "validation": len(task.validation), "test": len(task.test)}
        with self.manifest.transaction() as con:
            position = con.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
            h, w, c = task.image_shape
            self.manifest.add_task(con, TaskRecord(task.name, position, blob, tuple(task.class_names),
                                                   (int(h), int(w), int(c)), task.source, sizes))

    def start_run(self, key: str) -> tuple[str, bool]:
        """The running run with this resume key, or a new one: (run id, resumed)."""
        found = self.manifest.find_run(key)
        if found:
            return found, True
        self._writable()
        run_id = uuid.uuid4().hex[:12]
        with self.manifest.transaction() as con:
            self.manifest.start_run(con, run_id, key)
        return run_id, False

    def finish_run(self, run_id: str) -> None:
        with self.manifest.transaction() as con:
            self.manifest.finish_run(con, run_id)

    def scratch_dir(self, run_id: str) -> Path:
        return self.folder / "scratch" / run_id

    # ---- pins: what a run borrows survives concurrent commits -------------------------------
    def pin_blob(self, run_id: str, blob: str) -> str | None:
        """Hard-link a committed blob into scratch/<run>/pins/ (copy where links are not supported), so
        a concurrent commit that drops its component cannot take it from this run's candidates. Returns
        the pin's path, or None when the blob is already gone (only the candidate using it can fail)."""
        pins = self.scratch_dir(run_id) / "pins"
        pin = pins / f"{blob}.safetensors"
        if not pin.exists():
            pins.mkdir(parents=True, exist_ok=True)
            try:
                os.link(self.blobs.path_of(blob), pin)
            except FileExistsError:
                pass
            except FileNotFoundError:        # already deleted: only this candidate can fail
                return None
            except OSError:                  # no hard links on this file system: copy
                try:
                    atomic_write_bytes(pin, self.blobs.get_bytes(blob))
                except StoreError:
                    return None
        return str(pin)

    def _revive(self, task: str, cid: str, c: CandidateComponent | ComponentRecord, slot: str,
                run_id: str) -> tuple[ComponentRecord, bytes]:
        """A committed component of `best` that a concurrent commit dropped: its record again (same id,
        blob and creator) and its blob's bytes, from the store or from this run's pin."""
        assert c.blob is not None
        try:
            data = self.blobs.get_bytes(c.blob)
        except StoreError:
            pin = self.scratch_dir(run_id) / "pins" / f"{c.blob}.safetensors"
            data = pin.read_bytes() if pin.exists() else b""
            if hashlib.sha256(data).hexdigest() != c.blob:
                raise StoreError(f"component {cid} of task '{task}''s best path was removed by a concurrent "
                                 "commit; run the same command again to redo this task iteration") from None
        row = self.manifest.db.execute("SELECT task FROM paths WHERE instr(components, ?) > 0 "
                                       "ORDER BY created_at LIMIT 1", (json.dumps(cid),)).fetchone()
        return ComponentRecord(cid, c.kind, slot, c.config, c.blob, c.num_params, row[0] if row else task), data

    # ---- commit -----------------------------------------------------------------------------
    def commit(self, req: CommitRequest) -> float:
        """Make `req.best` the task's retained path in one transaction; returns its test accuracy."""
        self._writable()
        task, best = req.task, req.best
        known = self.manifest.components()
        staged: dict[str, dict[str, torch.Tensor]] = {}
        revived: dict[str, tuple[ComponentRecord, bytes]] = {}
        new_records = self._stage_new(req, known, staged, revived) if req.changed else []
        specs = {r.id: r for r in new_records} | {cid: r for cid, (r, _) in revived.items()} | known

        def tensors_of(cid: str) -> tuple[ComponentSpec, dict[str, torch.Tensor]]:
            if cid not in staged:          # dropped between `known` and build_model's own read
                revived[cid] = self._revive(task, cid, known[cid], known[cid].slot, req.run_id)
                staged[cid] = load_tensors(revived[cid][1])
            return ComponentSpec(specs[cid].kind, specs[cid].config), staged[cid]

        logits = self.test_logits(task, best, self.build_model(best, tensors_of))
        test_acc = accuracy_of(logits, self.task_data(task)["test.y"])
        logits_blob = self.blobs.put_tensors({"logits": logits}) if req.changed else None
        info = {**req.info, "test_accuracy": test_acc, "changed": req.changed}
        with self.manifest.transaction() as con:
            if req.changed:                # dropped by a commit that landed after `known` was read
                present = {r[0] for r in con.execute("SELECT id FROM components")}
                for slot, cid in best.components.items():
                    if cid not in present and cid not in revived and cid in known:
                        revived[cid] = self._revive(task, cid, known[cid], slot, req.run_id)
            for rec in new_records:
                if not self.blobs.exists(rec.blob):        # a concurrent GC removed an identical blob
                    self.blobs.put_tensors(staged[rec.id])
                self.manifest.add_component(con, rec)
            for rec, blob_bytes in revived.values():       # keep what `best` borrows alive, locked by it
                if not self.blobs.exists(rec.blob):
                    self.blobs.put_bytes(blob_bytes)
                self.manifest.add_component(con, rec)
            if req.changed:
                best.metrics["test_accuracy"] = test_acc
                self.manifest.add_path(con, best)
            commit_id = self.manifest.add_commit(con, task, best.id, run_id=req.run_id, iteration=req.iteration,
                                                 test_accuracy=test_acc, info=info)
            if req.changed:
                assert logits_blob is not None
                if not self.blobs.exists(logits_blob):     # a concurrent GC removed an identical blob
                    self.blobs.put_tensors({"logits": logits})
                old = con.execute("SELECT logits_blob FROM checks WHERE task=?", (task,)).fetchone()
                self.manifest.set_retained(con, task, best.id, commit_id)
                self.manifest.set_check(con, CheckRecord(task, commit_id, logits_blob, test_acc))
            self.manifest.add_offspring(con, dict(req.offspring))
            dropped = self._collect_garbage(con)
            if req.changed and old is not None:
                dropped.add(old[0])        # the replaced reference logits: nothing reads them any more
        self._delete_unreferenced(dropped)
        return test_acc

    def _stage_new(self, req: CommitRequest, known: dict[str, ComponentRecord],
                   staged: dict[str, dict[str, torch.Tensor]],
                   revived: dict[str, tuple[ComponentRecord, bytes]]) -> list[ComponentRecord]:
        """Write the blobs of `req.best`'s components that are not committed yet (from their scratch
        files; a borrowed one that a concurrent commit dropped is revived). Returns their records."""
        source = TensorSource(self.folder)
        records: list[ComponentRecord] = []
        for slot, cid in req.best.components.items():
            if cid in known:
                continue
            c = req.components[cid]
            if c.scratch is None:      # borrowed from another task, dropped by its commit since
                revived[cid] = self._revive(req.task, cid, c, slot, req.run_id)
                staged[cid] = load_tensors(revived[cid][1])
                continue
            tensors = source.get(TensorRef(scratch=c.scratch, id=cid))
            staged[cid] = tensors
            blob = self.blobs.put_tensors(tensors)
            records.append(ComponentRecord(cid, c.kind, slot, c.config, blob,
                                           sum(t.numel() for t in tensors.values()), req.task))
        return records

    def _collect_garbage(self, con: Any) -> set[str]:
        """Inside a commit's transaction: drop components no retained path uses; returns their blobs."""
        before = {r[0]: r[1] for r in con.execute("SELECT id, blob FROM components")}
        self.manifest.delete_unused_components(con)
        after = {r[0] for r in con.execute("SELECT id FROM components")}
        return {blob for cid, blob in before.items() if cid not in after}

    def _delete_unreferenced(self, candidates: set[str]) -> None:
        """Remove blobs of dropped components, holding the write lock so that no other commit can start
        referencing one between the check and the delete (commits re-write missing blobs anyway)."""
        if not candidates:
            return
        with self.manifest.transaction():
            referenced = self.manifest.referenced_blobs()
            for blob in candidates - referenced:
                self.blobs.delete(blob)

    # ---- the no-forgetting check ------------------------------------------------------------
    def _checked_pair(self, task: str) -> tuple[CheckRecord, PathRecord]:
        """A task's no-forgetting reference and the retained path it belongs to, read in one statement
        (both rows change in the same commit transaction, so another process's commit can never pair
        one commit's reference with another commit's path)."""
        row = self.manifest.db.execute(
            "SELECT c.task, c.commit_id, c.logits_blob, c.test_accuracy, p.id, p.task, p.parent_id, "
            "p.components, p.hparams, p.quality, p.metrics FROM checks c JOIN retained r ON r.task = c.task "
            "JOIN paths p ON p.id = r.path_id WHERE c.task = ?", (task,)).fetchone()
        return CheckRecord(*row[:4]), self.manifest.path_from_row(row[4:])

    def check_immutability(self, exclude: str | None = None, tasks: Iterable[str] | None = None) -> list[str]:
        """Re-run every committed task (but `exclude`; only `tasks` when given) on its test images and
        require logits that are bit-identical to those recorded at its last commit. Raises
        ForgettingError otherwise.
        A task that another process commits while it is being checked is checked again against its
        new reference (its old path's blobs may be gone by then)."""
        checked = []
        only = None if tasks is None else set(tasks)
        for task in sorted(self.manifest.checks()):
            if task == exclude or (only is not None and task not in only):
                continue
            self._check_task(task)
            checked.append(task)
        return checked

    def _check_task(self, task: str) -> None:
        for attempt in range(3):
            check, path = self._checked_pair(task)

            def replaced(commit_id: int = check.commit_id) -> bool:
                return self._checked_pair(task)[0].commit_id != commit_id

            try:
                now = self.test_logits(task, path)
                ref = self.blobs.get_tensors(check.logits_blob)["logits"]
            except StoreError:
                if attempt < 2 and replaced():
                    continue
                raise
            if now.shape != ref.shape or not torch.equal(now, ref):
                if attempt < 2 and replaced():
                    continue
                diff = (now - ref).abs().max().item() if now.shape == ref.shape else float("nan")
                raise ForgettingError(f"task '{task}' changed since its commit {check.commit_id} "
                                      f"(max logit difference {diff:.3g}); the run was stopped")
            return


def _write_new_store(store: Path, spec: RootSpec, model: nn.Module, meta: dict[str, int],
                     image_size: int) -> None:
    """Cut the root into blobs and write the manifest beside, renamed into place last. The marker
    written first tells a later create that the folder holds a killed create's leftovers (and not a
    store that lost its manifest, whose blobs must never be cleared)."""
    (store / CREATING).touch()    # empty: nothing to tear, and no temp file that blocks a re-run
    blobs = BlobStore(store / "blobs")
    records = []
    for slot, kind, config, tensors in spec.family.cut(model):
        blob = blobs.put_tensors(tensors)
        records.append(ComponentRecord(f"root-{slot}", kind, slot, config, blob,
                                       sum(t.numel() for t in tensors.values()), ROOT_TASK))
    tmp_manifest = store / f".{MANIFEST}.tmp"
    tmp_manifest.unlink(missing_ok=True)
    manifest = Manifest(tmp_manifest, create=True)
    with manifest.transaction() as con:
        for key, value in {"format_version": str(FORMAT_VERSION), "root": spec.to_json(),
                           "root_params": str(root_num_params(model)), "patch_size": str(meta["patch_size"]),
                           "depth": str(meta["depth"]), "image_size": str(image_size),
                           "created_at": str(time.time())}.items():
            manifest.set_meta(con, key, value)
        for rec in records:
            manifest.add_component(con, rec)
        root_path = PathRecord("root", ROOT_TASK, None, {r.slot: r.id for r in records}, {}, 0.0, {})
        manifest.add_path(con, root_path)
        manifest.set_retained(con, ROOT_TASK, root_path.id, None)
    manifest.close()
    os.replace(tmp_manifest, store / MANIFEST)   # the store exists only once it is complete
    (store / CREATING).unlink(missing_ok=True)


def _is_unfinished_create(store: Path) -> bool:
    """A folder holding only what a killed `Store.create` leaves: its marker, blobs, no manifest."""
    names = {p.name for p in store.iterdir()} if store.is_dir() else set()
    if CREATING not in names or not names <= _CREATE_PARTS or (store / MANIFEST).exists():
        return False
    blobs = store / "blobs"         # only blob-store layout (ab/<hash>.safetensors), never a user's files
    return not blobs.exists() or all(
        d.is_dir() and len(d.name) == 2 and all(f.suffix == ".safetensors" for f in d.iterdir())
        for d in blobs.iterdir())


def _clear_folder(store: Path) -> None:
    """Remove the parts a create wrote into a folder it did not make (it was empty before)."""
    for name in _CREATE_PARTS:
        target = store / name
        if target.is_dir():
            shutil.rmtree(target, ignore_errors=True)
        else:
            target.unlink(missing_ok=True)
