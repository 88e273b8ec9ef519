"""Running one candidate: materialise its components (shared ones frozen, owned ones copied), train,
and write the owned tensors of its best snapshot to a scratch file. Jobs and results are plain JSON
dicts so that any executor (in-process, process pool, Ray) can carry them; tensors travel through
files (blobs and scratch), never through pickles."""
from __future__ import annotations

import functools
import hashlib
import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.numpy import load as np_load
from safetensors.torch import load as torch_load, load_file, save as save_tensors
from torch import nn

from mupath.errors import StoreError
from mupath.model.components import ComponentSpec, build_component, new_component_tensors
from mupath.model.path_model import PathModel
from mupath.model.root import RootSpec, resample_pos_embed
from mupath.runtime.device import resolve_device
from mupath.store.blobs import BlobStore, atomic_write_bytes
from mupath.train.cache import frozen_prefix, process_cache
from mupath.train.loop import TrainConfig, train_path
from mupath.train.pipeline import as_nchw, has_augmentation, to_model_input


def _split_tensors(arrays: dict[str, Any]) -> dict[str, torch.Tensor]:
    out = {}
    for split in ("train", "validation", "test"):
        out[f"{split}.x"] = as_nchw(arrays[f"{split}.images"])
        out[f"{split}.y"] = torch.from_numpy(arrays[f"{split}.labels"].astype("int64"))
    return out


@functools.lru_cache(maxsize=8)
def _task_tensors(store: str, blob: str) -> dict[str, torch.Tensor]:
    return _split_tensors(BlobStore(Path(store) / "blobs").get_arrays(blob))


_SHIPPED_TASKS: dict[str, dict[str, torch.Tensor]] = {}   # task data that arrived as bytes, by blob sha


def verified_bytes(sha: str, data: bytes) -> bytes:
    """Shipped blob bytes are checked like a read from disk: a damaged copy is reported, never used."""
    if hashlib.sha256(data).hexdigest() != sha:
        raise StoreError(f"blob {sha[:12]} arrived corrupted (hash mismatch)")
    return data


def task_tensors(store: str | Path, blob: str, data: bytes | None = None) -> dict[str, torch.Tensor]:
    """A task's splits as (N, C, H, W) uint8 / int64 tensors, cached per process. `data`: the blob's
    bytes when they were shipped to this process (no shared file system) instead of read from `store`."""
    if data is None:
        return _task_tensors(str(store), blob)
    if blob not in _SHIPPED_TASKS:
        if len(_SHIPPED_TASKS) >= 8:
            _SHIPPED_TASKS.pop(next(iter(_SHIPPED_TASKS)))
        _SHIPPED_TASKS[blob] = _split_tensors(np_load(verified_bytes(blob, data)))
    return _SHIPPED_TASKS[blob]


class TensorSource:
    """Where a component's tensors are read from: its committed blob (or the run's hard-link `pin` of
    it, once a concurrent commit deleted the blob) or a candidate's scratch file. `blob_bytes` ({sha: bytes}) and `scratch_bytes` ({scratch file: bytes}) serve those that were
    shipped to this process instead of read from the store folder."""

    def __init__(self, store: Path, blob_bytes: dict[str, bytes] | None = None,
                 scratch_bytes: dict[str, bytes] | None = None) -> None:
        self.blobs = BlobStore(store / "blobs")
        self.blob_bytes = blob_bytes or {}
        self.scratch_bytes = scratch_bytes or {}
        self._scratch: dict[str, dict[str, torch.Tensor]] = {}

    def get(self, ref: dict[str, Any]) -> dict[str, torch.Tensor]:
        if ref.get("blob"):
            sha = ref["blob"]
            if sha in self.blob_bytes:
                return torch_load(verified_bytes(sha, self.blob_bytes[sha]))
            if ref.get("pin") and not self.blobs.exists(sha):   # dropped by another agent's commit
                return torch_load(verified_bytes(sha, Path(ref["pin"]).read_bytes()))
            return self.blobs.get_tensors(sha)
        file = ref["scratch"]
        if file not in self._scratch:
            shipped = self.scratch_bytes.get(file)
            self._scratch[file] = load_file(file) if shipped is None else torch_load(shipped)
        prefix = ref["id"] + "/"
        return {k[len(prefix):]: v for k, v in self._scratch[file].items() if k.startswith(prefix)}


_FROZEN_CACHE: dict[tuple[str, str, str], nn.Module] = {}
_DEVICE_TASKS: dict[tuple[str, str], dict[str, torch.Tensor]] = {}   # task splits copied to a GPU


def on_device(data: dict[str, torch.Tensor], blob: str, device: str) -> dict[str, torch.Tensor]:
    """A task's training and validation splits on `device` (the CPU tensors themselves for "cpu"). A GPU
    copy is kept for the next candidate of the same task (the last two tasks per device), so it crosses
    the bus once; test images never go there (commits evaluate them on the CPU)."""
    if device == "cpu":
        return data
    key = (blob, device)
    if key not in _DEVICE_TASKS:
        for old in [k for k in _DEVICE_TASKS if k[1] == device][:-1]:
            del _DEVICE_TASKS[old]
        _DEVICE_TASKS[key] = {k: v.to(device) for k, v in data.items() if not k.startswith("test.")}
    return _DEVICE_TASKS[key]


def content_key(ref: dict[str, Any]) -> str:
    """What a component's tensors are, independent of the store: its blob's sha256, or the scratch file
    and id of a candidate's component. Long-lived workers (a persistent pool, Ray) serve several stores,
    whose root components share ids (`root-block_0`), so caches are keyed by content, never by id."""
    return ref["blob"] if ref.get("blob") else f"{ref['scratch']}#{ref['id']}"


def _frozen_module(key: str, spec: ComponentSpec, root: RootSpec, tensors: Callable[[], dict],
                   device: str = "cpu") -> nn.Module:
    """Shared components are built once per process and device and reused by every candidate: they
    are frozen (requires_grad False) and never handed to an optimiser, so sharing the object is safe.
    Keyed by content, root architecture (the module class comes from the root's family) and device."""
    cache_key = (key, root.to_json(), device)
    module = _FROZEN_CACHE.get(cache_key)
    if module is None:
        module = build_component(spec, root)
        module.load_state_dict(tensors())
        module.requires_grad_(False)
        module.to(device)
        if len(_FROZEN_CACHE) > 512:
            _FROZEN_CACHE.clear()
        _FROZEN_CACHE[cache_key] = module
    return module


def materialise(job: dict[str, Any], source: TensorSource,
                device: str = "cpu") -> tuple[PathModel, dict[str, nn.Module]]:
    """Build the candidate's model on `device`; returns it and its owned modules keyed by component id."""
    root = RootSpec.from_json(job["root"])
    refs: dict[str, dict[str, Any]] = job["refs"]
    modules: dict[str, nn.Module] = {}
    owned: dict[str, nn.Module] = {}
    for plan in job["slots"]:
        spec = ComponentSpec(plan["kind"], plan["config"])
        if not plan["trainable"]:
            modules[plan["slot"]] = _frozen_module(content_key(refs[plan["id"]]), spec, root,
                                                   lambda p=plan: source.get(refs[p["id"]]), device)
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
        module.to(device)
        modules[plan["slot"]] = module
        owned[plan["id"]] = module
    return PathModel(modules, root.family), owned


def run_job(job: dict[str, Any], on_step: Callable[[int, int], None] | None = None,
            blob_bytes: dict[str, bytes] | None = None,
            scratch_bytes: dict[str, bytes] | None = None) -> dict[str, Any]:
    """Train one candidate; returns a JSON-able result (never raises for a training failure).
    `blob_bytes` / `scratch_bytes`: blobs (task data included) and scratch files shipped as bytes by
    an executor whose workers do not share the store's file system; anything not in them is read
    from the store folder as usual."""
    started = time.perf_counter()
    store = Path(job["store"])
    try:
        device = resolve_device(job.get("device", "cpu"))
        if device.startswith("cuda:"):
            torch.cuda.set_device(device)      # else a context would also open on GPU 0
        data = on_device(task_tensors(store, job["task_blob"], (blob_bytes or {}).get(job["task_blob"])),
                         job["task_blob"], device)
        source = TensorSource(store, blob_bytes, scratch_bytes)
        model, owned = materialise(job, source, device)
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
            keys = {p["slot"]: content_key(job["refs"][p["id"]]) if not p["trainable"] else p["id"]
                    for p in job["slots"]}
            ids = frozen_prefix(model, {id(m) for m in owned.values()}, keys)
            if ids is not None:
                prefix = process_cache(cache_bytes).prefix(model, ids, job["task_blob"] + job["root"] + device, size,
                                                            data["train.x"], val_x, int(job.get("cache_floor", 0)))
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
        "cached_prefix": 0 if prefix is None else prefix.start, "device": device,
    }
    if outcome.improved and outcome.best_state is not None:
        flat = {f"{cid}/{k}": v.contiguous() for cid, state in outcome.best_state.items() for k, v in state.items()}
        atomic_write_bytes(Path(job["scratch_file"]), save_tensors(flat))
        result["scratch_file"] = job["scratch_file"]
    return result
