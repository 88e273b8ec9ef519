"""Running one candidate: materialise its components (shared ones frozen, owned ones copied), train,
and write the owned tensors of its best snapshot to a scratch file. Jobs and results are plain JSON
dicts so that any executor (in-process, process pool, Ray) can carry them; tensors travel through
files (blobs and scratch), never through pickles."""
from __future__ import annotations

import functools
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save as save_tensors
from torch import nn

from mupath.model.components import ComponentSpec, build_component, new_component_tensors
from mupath.model.path_model import PathModel
from mupath.model.root import RootSpec, resample_pos_embed
from mupath.store.blobs import BlobStore, atomic_write_bytes
from mupath.train.cache import frozen_prefix, process_cache
from mupath.train.loop import TrainConfig, train_path
from mupath.train.pipeline import as_nchw, has_augmentation, to_model_input


@functools.lru_cache(maxsize=8)
def _task_tensors(store: str, blob: str) -> dict[str, torch.Tensor]:
    arrays = BlobStore(Path(store) / "blobs").get_arrays(blob)
    out = {}
    for split in ("train", "validation", "test"):
        out[f"{split}.x"] = as_nchw(arrays[f"{split}.images"])
        out[f"{split}.y"] = torch.from_numpy(arrays[f"{split}.labels"].astype("int64"))
    return out


def task_tensors(store: str | Path, blob: str) -> dict[str, torch.Tensor]:
    """A task's splits as (N, C, H, W) uint8 / int64 tensors, cached per process."""
    return _task_tensors(str(store), blob)


class TensorSource:
    """Where a component's tensors are read from: its committed blob or a candidate's scratch file."""

    def __init__(self, store: Path) -> None:
        self.blobs = BlobStore(store / "blobs")
        self._scratch: dict[str, dict[str, torch.Tensor]] = {}

    def get(self, ref: dict[str, Any]) -> dict[str, torch.Tensor]:
        if ref.get("blob"):
            return self.blobs.get_tensors(ref["blob"])
        file = ref["scratch"]
        if file not in self._scratch:
            self._scratch[file] = load_file(file)
        prefix = ref["id"] + "/"
        return {k[len(prefix):]: v for k, v in self._scratch[file].items() if k.startswith(prefix)}


_FROZEN_CACHE: dict[str, nn.Module] = {}


def _frozen_module(cid: str, spec: ComponentSpec, root: RootSpec, tensors: Callable[[], dict]) -> nn.Module:
    """Shared components are built once per process and reused by every candidate: they are frozen
    (requires_grad False) and never handed to an optimiser, so sharing the object is safe."""
    module = _FROZEN_CACHE.get(cid)
    if module is None:
        module = build_component(spec, root)
        module.load_state_dict(tensors())
        module.requires_grad_(False)
        if len(_FROZEN_CACHE) > 512:
            _FROZEN_CACHE.clear()
        _FROZEN_CACHE[cid] = module
    return module


def materialise(job: dict[str, Any], source: TensorSource) -> tuple[PathModel, dict[str, nn.Module]]:
    """Build the candidate's model; returns it and its owned modules keyed by component id."""
    root = RootSpec.from_json(job["root"])
    refs: dict[str, dict[str, Any]] = job["refs"]
    modules: dict[str, nn.Module] = {}
    owned: dict[str, nn.Module] = {}
    for plan in job["slots"]:
        spec = ComponentSpec(plan["kind"], plan["config"])
        if not plan["trainable"]:
            modules[plan["slot"]] = _frozen_module(plan["id"], spec, root, lambda p=plan: source.get(refs[p["id"]]))
            continue
        init = plan["init"]
        if "from" in init:
            tensors = source.get(refs[init["from"]])
        elif "resample" in init:
            tensors = {"pos_embed": resample_pos_embed(source.get(refs[init["resample"]])["pos_embed"],
                                                       tuple(init["grid"]))}
        else:
            tensors = new_component_tensors(spec, int(init["new"]))
        module = build_component(spec, root)
        module.load_state_dict({k: v.clone() for k, v in tensors.items()})
        module.requires_grad_(True)
        modules[plan["slot"]] = module
        owned[plan["id"]] = module
    return PathModel(modules), owned


def run_job(job: dict[str, Any], on_step: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Train one candidate; returns a JSON-able result (never raises for a training failure)."""
    started = time.perf_counter()
    store = Path(job["store"])
    try:
        data = task_tensors(store, job["task_blob"])
        source = TensorSource(store)
        model, owned = materialise(job, source)
        hp = job["hparams"]
        size = int(hp["ds_image_size"])
        limit = int(job["val_limit"])
        val_x = to_model_input(data["validation.x"][:limit], size)
        val_y = data["validation.y"][:limit]
        owned_params = sum(p.numel() for m in owned.values() for p in m.parameters())
        accounted = float(job["frozen_accounted"]) + owned_params
        penalty = float(job["scale_factor"]) ** (accounted / float(job["root_params"]))
        cfg = TrainConfig(int(job["steps_per_validation"]), int(job["validations"]),
                          int(job["batch_size"]), int(job["seed"]))
        bar = float("-inf") if job["bar"] is None else float(job["bar"])
        torch.manual_seed(int(job["seed"]))
        prefix = None
        cache_bytes = int(job.get("cache_mb", 0)) << 20
        if cache_bytes > 0 and not has_augmentation(hp):
            ids = frozen_prefix(model, {id(m) for m in owned.values()}, {p["slot"]: p["id"] for p in job["slots"]})
            if ids is not None:
                prefix = process_cache(cache_bytes).prefix(model, ids, job["task_blob"], size,
                                                            data["train.x"], val_x)
        outcome = train_path(model, owned, hp, cfg, data["train.x"], data["train.y"], val_x, val_y,
                             lambda q: q * penalty, bar, on_step, prefix)
    except Exception as exc:  # a candidate failing must never take the search down
        return {"path_id": job["path_id"], "improved": False, "failure": f"{type(exc).__name__}: {exc}",
                "wall_time": time.perf_counter() - started}
    result: dict[str, Any] = {
        "path_id": job["path_id"], "improved": outcome.improved, "quality": outcome.quality,
        "score": outcome.score, "evals": outcome.evals, "steps": outcome.steps, "images": outcome.images,
        "train_time": outcome.train_time, "eval_time": outcome.eval_time, "failure": outcome.failure,
        "owned_params": owned_params, "accounted_params": accounted,
        "component_params": {cid: sum(p.numel() for p in m.parameters()) for cid, m in owned.items()},
        "wall_time": time.perf_counter() - started, "pid": os.getpid(),
        "cached_prefix": 0 if prefix is None else prefix.start,
    }
    if outcome.improved and outcome.best_state is not None:
        flat = {f"{cid}/{k}": v.contiguous() for cid, state in outcome.best_state.items() for k, v in state.items()}
        atomic_write_bytes(Path(job["scratch_file"]), save_tensors(flat))
        result["scratch_file"] = job["scratch_file"]
    return result
