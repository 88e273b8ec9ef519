"""Running one candidate: materialise its components (shared ones frozen, owned ones copied), train,
and write the owned tensors of its best snapshot to a scratch file. Jobs and results are the typed
records of `mupath.runtime.jobs`, which any executor (in-process, process pool, Ray) carries as JSON;
tensors travel through files (blobs and scratch), never through pickles."""
from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as save_tensors
from torch import nn

from mupath.model.components import ComponentSpec, load_component, new_component_tensors
from mupath.model.path_model import PathModel
from mupath.model.root import RootSpec, resample_pos_embed
from mupath.runtime.device import resolve_device
from mupath.runtime.jobs import OPTIMIZER_REF, Budget, CandidateJob, CandidateResult, SlotJob, size_penalty
from mupath.store.atomic import atomic_write_bytes
from mupath.store.tensors import TensorSource, task_tensors, verified_bytes  # noqa: F401  (re-exported)
from mupath.train.cache import fill_pays, frozen_prefix, load_floor, process_cache
from mupath.train.loop import TrainConfig, train_path
from mupath.train.pipeline import has_augmentation, to_model_input

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


def _frozen_module(key: str, spec: ComponentSpec, root: RootSpec, tensors: Callable[[], dict],
                   device: str = "cpu") -> nn.Module:
    """Shared components are built once per process and device and reused by every candidate: they
    are frozen (requires_grad False) and never handed to an optimiser, so sharing the object is safe.
    Keyed by content, root architecture (the module class comes from the root's family) and device."""
    cache_key = (key, root.to_json(), device)
    module = _FROZEN_CACHE.get(cache_key)
    if module is None:
        module = load_component(spec, root, tensors()).to(device)
        if len(_FROZEN_CACHE) > 512:
            _FROZEN_CACHE.clear()
        _FROZEN_CACHE[cache_key] = module
    return module


def _initial_tensors(slot: SlotJob, job: CandidateJob, source: TensorSource) -> dict[str, torch.Tensor]:
    """An owned slot's first tensors: a copy, a fresh init, or a resampled position embedding."""
    init = slot.init
    assert init is not None, f"owned slot {slot.slot} has no initialisation"
    if init.kind == "copy":
        return source.get(job.refs[str(init.source)])
    if init.kind == "resample":
        assert init.grid is not None
        return {"pos_embed": resample_pos_embed(source.get(job.refs[str(init.source)])["pos_embed"], init.grid)}
    return new_component_tensors(ComponentSpec(slot.kind, slot.config), int(init.seed or 0),
                                 RootSpec.from_json(job.root))


def materialise(job: CandidateJob, source: TensorSource,
                device: str = "cpu") -> tuple[PathModel, dict[str, nn.Module]]:
    """Build the candidate's model on `device`; returns it and its owned modules keyed by component id."""
    root = RootSpec.from_json(job.root)
    modules: dict[str, nn.Module] = {}
    owned: dict[str, nn.Module] = {}
    for slot in job.slots:
        spec = ComponentSpec(slot.kind, slot.config)
        if not slot.trainable:
            ref = job.refs[slot.id]
            modules[slot.slot] = _frozen_module(ref.content_key(), spec, root, functools.partial(source.get, ref),
                                                device)
            continue
        module = load_component(spec, root, _initial_tensors(slot, job, source), trainable=True).to(device)
        modules[slot.slot] = module
        owned[slot.id] = module
    return PathModel(modules, root.family), owned


def _train_candidate(job: CandidateJob, device: str, on_step: Callable[[int, int], None] | None,
                     blob_bytes: dict[str, bytes] | None,
                     scratch_bytes: dict[str, bytes] | None) -> tuple[Any, dict[str, nn.Module], int, float, Any]:
    """Build and train: (outcome, owned modules, owned parameters, accounted parameters, cache prefix)."""
    store = Path(job.store)
    data = on_device(task_tensors(store, job.task_blob, (blob_bytes or {}).get(job.task_blob)), job.task_blob, device)
    source = TensorSource(store, blob_bytes, scratch_bytes)
    model, owned = materialise(job, source, device)
    hp = job.hparams
    size = int(hp["ds_image_size"])
    limit = int(job.budget.val_limit)
    val_x = to_model_input(data["validation.x"][:limit], size)
    val_y = data["validation.y"][:limit]
    owned_params = sum(p.numel() for m in owned.values() for p in m.parameters())
    accounted = float(job.score.frozen_accounted) + owned_params
    penalty = size_penalty(accounted, job.score.root_params, float(job.score.scale_factor))
    deadline = job.budget.deadline        # the job's wall-clock bound, on this process's perf_counter
    cfg = TrainConfig(job.budget.steps_per_validation, job.budget.validations, job.budget.batch_size, job.seed,
                      keep_optimizer=job.budget.keep_optimizer, seconds=job.budget.seconds,
                      deadline=None if deadline is None else time.perf_counter() + deadline - time.time())
    bar = float("-inf") if job.score.bar is None else float(job.score.bar)
    torch.manual_seed(job.seed)
    prefix = _cache_prefix(job, model, owned, data, val_x, device)
    resume = job.refs.get(OPTIMIZER_REF)
    outcome = train_path(model, owned, hp, cfg, (data["train.x"], data["train.y"]), (val_x, val_y),
                         score_of=lambda q: q * penalty, bar=bar, on_step=on_step, prefix=prefix,
                         optimizer_state=source.get(resume) if resume is not None else None)
    return outcome, owned, owned_params, accounted, prefix


def prefix_ids(job: CandidateJob, model: PathModel, owned: dict[str, nn.Module]) -> tuple[str, ...] | None:
    """The content keys of the job's leading frozen slots (`cache.frozen_prefix`): what its cache
    entries are keyed by, in a worker and in the parent's shared floor fill alike."""
    keys = {s.slot: job.refs[s.id].content_key() if not s.trainable else s.id for s in job.slots}
    return frozen_prefix(model, {id(m) for m in owned.values()}, keys)


def fills_cache(budget: Budget, floor: int, train_rows: int, val_rows: int) -> bool:
    """May a job of `budget` fill a cache entry it misses? Always for the run's frozen `floor` (blocks);
    never for a timed candidate (`Budget.seconds`: the fill is not part of its seconds, so it would
    overrun them: a last survivor expecting 435 steps filled 54,000 images and trained none); else only
    when the fill pays (`fill_pays`: a short candidate on a large task spends more on it than it saves)."""
    if floor:
        return True
    steps = budget.steps_per_validation * budget.validations
    return budget.seconds is None and fill_pays(train_rows, val_rows, steps * budget.batch_size, budget.validations)


def _cache_prefix(job: CandidateJob, model: PathModel, owned: dict[str, nn.Module],
                  data: dict[str, torch.Tensor], val_x: torch.Tensor, device: str) -> Any:
    """The activation cache's prefix for this candidate (None: off, augmented, or nothing frozen)."""
    cache_bytes = int(job.cache.mb) << 20
    if cache_bytes <= 0 or has_augmentation(job.hparams):
        return None
    ids = prefix_ids(job, model, owned)
    if ids is None:
        return None
    fill = fills_cache(job.budget, job.cache.floor, int(data["train.x"].shape[0]), int(val_x.shape[0]))
    preload = functools.partial(load_floor, job.cache.floor_file) if job.cache.floor_file else None
    return process_cache(cache_bytes).prefix(model, ids, job.task_blob + job.root + device,
                                             int(job.hparams["ds_image_size"]), data["train.x"], val_x,
                                             floor=job.cache.floor, preload=preload, fill=fill)


def run_job(job: CandidateJob, on_step: Callable[[int, int], None] | None = None,
            blob_bytes: dict[str, bytes] | None = None,
            scratch_bytes: dict[str, bytes] | None = None) -> CandidateResult:
    """Train one candidate; never raises for a training failure (its result says what went wrong).
    `blob_bytes` / `scratch_bytes`: blobs (task data included) and scratch files shipped as bytes by
    an executor whose workers do not share the store's file system; anything not in them is read
    from the store folder as usual."""
    started = time.perf_counter()
    try:
        device = resolve_device(job.device)
        if device.startswith("cuda:"):
            torch.cuda.set_device(device)      # else a context would also open on GPU 0
        outcome, owned, owned_params, accounted, prefix = _train_candidate(job, device, on_step, blob_bytes,
                                                                           scratch_bytes)
    except Exception as exc:  # a candidate failing must never take the search down
        return CandidateResult.crashed(job, exc, time.perf_counter() - started)
    scratch = None
    if outcome.improved and outcome.best_state is not None:
        flat = {f"{cid}/{k}": v.contiguous() for cid, state in outcome.best_state.items() for k, v in state.items()}
        flat.update({f"{OPTIMIZER_REF}/{k}": v for k, v in (outcome.best_optimizer or {}).items()})
        atomic_write_bytes(Path(job.scratch_file), save_tensors(flat))
        scratch = job.scratch_file
    return CandidateResult(
        job.path_id, outcome.improved, outcome.quality, outcome.score, tuple(outcome.evals), outcome.steps,
        outcome.images, outcome.train_time, outcome.eval_time, outcome.failure, owned_params, accounted,
        {cid: sum(p.numel() for p in m.parameters()) for cid, m in owned.items()},
        time.perf_counter() - started, os.getpid(), 0 if prefix is None else prefix.start, device, scratch,
        fill_time=0.0 if prefix is None else prefix.fill_seconds)
