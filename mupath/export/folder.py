"""Folder export: `model.safetensors` + `config.json`, the way timm ships a model, for one task.

config.json names the root, the path (slot -> component, kind and config), the hyperparameters, the
classes and the preprocessing. Weights are laid out one of two ways:
- `timm`: the path is a plain timm model (`timm_layout`), so the tensors carry timm's names and the
  file also holds timm's hub fields (`architecture`, `model_args`, `num_classes`, `pretrained_cfg`,
  `label_names`): `timm.create_model(name, **model_args, num_classes=K)` + `load_state_dict` (or
  `timm.create_model("local-dir:OUT", pretrained=True)`) rebuilds it without mupath's store;
- `mupath`: anything else (adapters, ...); tensors are named `<component>.<tensor>` and
  `mupath.load_exported` rebuilds the components.
Either way `load_exported(folder)` gives an nn.Module taking uint8 (N, H, W, C) images."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from mupath.errors import ConfigError
from mupath.export.graph import build_graph, model_input, module_key
from mupath.export.spec import ExportedComponent, ExportedTask, ExportSpec, Preprocessing
from mupath.export.timm_layout import TimmPlan, load_timm, timm_plan, timm_state
from mupath.model.root import RootSpec
from mupath.store.atomic import atomic_write_bytes

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
FORMAT = "mupath-export"
FORMAT_VERSION = 1


def export_folder(spec: ExportSpec, tensors: Mapping[str, Mapping[str, torch.Tensor]],
                  out: Path) -> tuple[int, bool]:
    """Write the folder (weights first, config last: a folder with a config is complete); returns the
    weights' size in bytes and whether timm can load them."""
    assert len(spec.tasks) == 1, "checked by mupath.export.target.check_tasks"
    task = spec.tasks[0]
    found = timm_plan(spec, task)
    timm_tensors = timm_state(spec, task, found, tensors) if isinstance(found, TimmPlan) else found
    if isinstance(timm_tensors, str):                  # not a plain timm model: mupath's names
        plan, note = None, timm_tensors
        state = {f"{module_key(cid)}.{k}": v.contiguous() for cid in spec.components
                 for k, v in tensors[cid].items() if not k.endswith("num_batches_tracked")}
    else:
        assert isinstance(found, TimmPlan)
        plan, state = found, timm_tensors
        note = "a plain timm model: timm.create_model(architecture, **model_args, num_classes=num_classes)"
    weights = save_tensors(state, metadata={"format": FORMAT, "task": task.task})
    atomic_write_bytes(out / WEIGHTS, weights)
    config = folder_config(spec, task, plan, note)
    atomic_write_bytes(out / CONFIG, (json.dumps(config, indent=2) + "\n").encode())
    return len(weights), plan is not None


def folder_config(spec: ExportSpec, task: ExportedTask, plan: TimmPlan | None, note: str) -> dict[str, Any]:
    """config.json: mupath's description, plus timm's hub fields when timm can load the weights."""
    prep = task.preprocessing
    config: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "task": task.task, "path_id": task.path_id,
        "classes": list(task.class_names), "num_classes": len(task.class_names),
        "root": json.loads(spec.root.to_json()),
        "path": [{"slot": s, "component": cid, "kind": spec.components[cid].kind,
                  "config": spec.components[cid].config} for s, cid in task.slots],
        "hyperparameters": task.hparams, "preprocessing": prep.to_json(),
        "weights_layout": "timm" if plan else "mupath", "timm_loadable": bool(plan), "timm_note": note,
    }
    if plan:
        config.update(architecture=plan.model_name, model_args=plan.model_args,
                      label_names=list(task.class_names),
                      pretrained_cfg={"input_size": [3, prep.image_size, prep.image_size],
                                      "interpolation": prep.interpolation, "mean": list(prep.mean),
                                      "std": list(prep.std), "crop_pct": 1.0, "crop_mode": "center",
                                      "num_classes": len(task.class_names)})
    return config


class LoadedExport(nn.Module):
    """An exported task without its store: uint8 images (N, H, W, C) at `input_shape` -> logits."""

    def __init__(self, task: str, class_names: tuple[str, ...], prep: Preprocessing, net: nn.Module,
                 includes_input: bool) -> None:
        super().__init__()
        self.task, self.class_names, self.preprocessing = task, class_names, prep
        self.net = net
        self._includes_input = includes_input

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if tuple(images.shape[1:]) != self.preprocessing.input_shape or images.dtype != torch.uint8:
            shape = ", ".join(map(str, self.preprocessing.input_shape))
            raise ValueError(f"expected uint8 images shaped (N, {shape}), got {images.dtype} {tuple(images.shape)}")
        return self.net(images) if self._includes_input else self.net(model_input(images, self.preprocessing))

    @torch.inference_mode()
    def predict(self, images: np.ndarray) -> np.ndarray:
        """Class ids for uint8 numpy images (N, H, W, C) (or (N, H, W) for one channel)."""
        arr = np.asarray(images)
        arr = arr[..., None] if arr.ndim == 3 else arr
        return self(torch.from_numpy(np.ascontiguousarray(arr))).argmax(dim=1).numpy().astype(np.int64)


def load_folder(folder: Path) -> LoadedExport:
    """`mupath.load_exported` for a folder export."""
    try:
        config = json.loads((folder / CONFIG).read_text())
        state = load_tensors((folder / WEIGHTS).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{folder} is not a readable mupath export folder ({type(exc).__name__}); "
                          f"it needs {CONFIG} and {WEIGHTS}") from None
    if config.get("format") != FORMAT or int(config.get("format_version", 0)) > FORMAT_VERSION:
        raise ConfigError(f"{folder / CONFIG} is not a mupath export of a version this mupath reads")
    spec = _spec_of(config)
    task = spec.tasks[0]
    if config["weights_layout"] == "timm":
        plan = TimmPlan(config["architecture"], dict(config["model_args"]), int(config["num_classes"]))
        return LoadedExport(task.task, task.class_names, task.preprocessing, load_timm(plan, state), False)
    tensors: dict[str, dict[str, torch.Tensor]] = {cid: {} for cid in spec.components}
    keys = {module_key(cid): cid for cid in spec.components}
    for name, value in state.items():
        key, rest = name.split(".", 1)
        tensors[keys[key]][rest] = value
    return LoadedExport(task.task, task.class_names, task.preprocessing, build_graph(spec, tensors), True)


def _spec_of(config: Mapping[str, Any]) -> ExportSpec:
    slots = tuple((str(p["slot"]), str(p["component"])) for p in config["path"])
    comps = {str(p["component"]): ExportedComponent(str(p["component"]), str(p["kind"]), str(p["slot"]),
                                                    dict(p["config"])) for p in config["path"]}
    task = ExportedTask(str(config["task"]), str(config["path_id"]), tuple(config["classes"]), slots,
                        dict(config["hyperparameters"]), Preprocessing.from_json(config["preprocessing"]))
    return ExportSpec(RootSpec(**config["root"]), (task,), comps)
