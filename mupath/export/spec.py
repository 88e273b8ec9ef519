"""What an export holds, read from a store once: the root, each exported task's path (slot -> component
id, hyperparameters, classes, preprocessing) and every component those paths use, each listed once.
Every exporter (ONNX, pt2, folder) and `load_exported` builds its module from an `ExportSpec`, so all
formats compute the same function; the folder format is this spec as JSON plus the tensors."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch

from mupath.errors import ConfigError
from mupath.model.root import RootSpec
from mupath.store.store import Store

#: mupath's scaling, written the way timm's data config says it: (x / 255 - mean) / std == x / 127.5 - 1
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How uint8 images (N, H, W, C) become the path's input (N, 3, S, S) in [-1, 1]: exactly
    `mupath.train.pipeline.to_model_input` (grey repeated to 3 channels, an alpha channel dropped,
    bilinear antialiased resize, align_corners=False)."""

    input_shape: tuple[int, int, int]      #: (H, W, C) of the task's stored images
    image_size: int                        #: S, the path's `ds_image_size`
    mean: tuple[float, ...] = MEAN
    std: tuple[float, ...] = STD
    interpolation: str = "bilinear"
    antialias: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"input_shape": list(self.input_shape), "input_dtype": "uint8", "input_layout": "NHWC",
                "image_size": self.image_size, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation, "antialias": self.antialias, "align_corners": False,
                "channels": "grey repeated to RGB, alpha dropped"}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Preprocessing:
        shape = tuple(int(v) for v in data["input_shape"])
        return cls((shape[0], shape[1], shape[2]), int(data["image_size"]), tuple(data["mean"]),
                   tuple(data["std"]), str(data["interpolation"]), bool(data["antialias"]))


@dataclasses.dataclass(frozen=True)
class ExportedComponent:
    """One component (its tensors live in the store's blob, or in the folder's model.safetensors)."""

    id: str
    kind: str
    slot: str
    config: dict[str, Any]
    blob: str = ""          #: the store blob ("" once exported)


@dataclasses.dataclass(frozen=True)
class ExportedTask:
    """One task's retained path, as exported."""

    task: str
    path_id: str
    class_names: tuple[str, ...]
    slots: tuple[tuple[str, str], ...]     #: (slot, component id) in forward order
    hparams: dict[str, Any]
    preprocessing: Preprocessing

    @property
    def components(self) -> dict[str, str]:
        return dict(self.slots)


@dataclasses.dataclass(frozen=True)
class ExportSpec:
    root: RootSpec
    tasks: tuple[ExportedTask, ...]
    components: dict[str, ExportedComponent]

    @property
    def task_names(self) -> list[str]:
        return [t.task for t in self.tasks]


def spec_from_store(store: Store, tasks: list[str]) -> ExportSpec:
    """The export of `tasks` (their retained paths); one-line ConfigErrors for unknown, unevolved or
    repeated tasks, and for tasks whose stored images differ in shape (one input feeds them all)."""
    from mupath.model.components import slot_order
    if not tasks:
        raise ConfigError("no task to export; name one with --task T (or several with --tasks a,b)")
    if len(set(tasks)) != len(tasks):
        raise ConfigError("a task is listed twice; list each task once")
    comps = store.manifest.components()
    out: list[ExportedTask] = []
    used: dict[str, ExportedComponent] = {}
    for name in tasks:
        record, path = store.task_record(name), store.retained_path(name)
        slots = tuple(sorted(path.components.items(), key=lambda kv: slot_order(kv[0])))
        for slot, cid in slots:
            c = comps[cid]
            used[cid] = ExportedComponent(cid, c.kind, slot, dict(c.config), c.blob)
        h, w, ch = (int(v) for v in record.image_shape)
        prep = Preprocessing((h, w, ch), int(path.hparams["ds_image_size"]))
        out.append(ExportedTask(name, path.id, tuple(record.class_names), slots, dict(path.hparams), prep))
    shapes = {t.preprocessing.input_shape for t in out}
    if len(shapes) > 1:
        listed = ", ".join(f"{t.task} {t.preprocessing.input_shape}" for t in out)
        raise ConfigError(f"tasks exported together must store images of one shape (one input feeds them "
                          f"all), got {listed}; export them separately")
    return ExportSpec(store.root_spec, tuple(out), used)


def component_tensors(store: Store, spec: ExportSpec) -> dict[str, dict[str, torch.Tensor]]:
    """{component id: tensors}, read from the store's blobs (each component once)."""
    return {cid: store.blobs.get_tensors(c.blob) for cid, c in spec.components.items()}
