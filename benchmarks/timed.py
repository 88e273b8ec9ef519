"""Baselines given a wall-clock budget instead of a number of images (issue 32, item 5): the reference
compares evolution and baselines at equal device time, so each baseline here gets, per task, the
seconds the evolved run spent on that task, from model build to test accuracy.

One function serves both equal-wall-clock benchmarks (`benchmarks/wallclock.py`, one task outside the
built-in set, and `benchmarks/quality_wallclock.py`, the built-in stream): `timed_baseline`.

- finetune-all (a copy of the whole root and a new head) and adapters:D (a residual adapter of width D
  before every block, the neck and the head trained) are built from `plan_baseline`, the plan the store
  baselines commit; lora:R is peft's LoRA on every plain conv and linear layer (`lora_model`).
- The step count is sized from CALIBRATION_STEPS timed AdamW steps (on a copy, the first untimed) and
  the forward cost of validation and test; no step starts after the deadline; validations every
  `steps_per_validation` steps keep the best snapshot; test accuracy is computed as every committed
  task's is. The calibration and the test are inside the budget.
"""
from __future__ import annotations

import copy
import dataclasses
import itertools
import random
import time
from typing import Any

import torch
from torch import nn

from mupath.model.components import ComponentSpec, load_component, new_component_tensors
from mupath.model.path_model import PathModel
from mupath.search.baselines import (
    _new_head,
    _root_body,
    _test_accuracy,
    _train_in_memory,
    baseline_hparams,
    lora_model,
    parse_method,
    plan_baseline,
)
from mupath.search.ids import seed_for
from mupath.search.mutation import ChildPlan
from mupath.search.settings import EvolveSettings
from mupath.store.records import ROOT_TASK
from mupath.store.store import Store
from mupath.train.pipeline import to_model_input

CALIBRATION_STEPS = 3


@dataclasses.dataclass(frozen=True)
class Built:
    """A baseline's model, its modules by slot and the modules that train."""

    model: nn.Module
    modules: dict[str, nn.Module]
    owned: dict[str, nn.Module]


def build(store: Store, task: str, method: str, seed: int, *, frozen_neck: bool = False) -> Built:
    """A fresh model of `method` for `task` (see the module docstring). `frozen_neck` (adapters:D and
    deltas:R): the root's neck stays frozen, as in every path the search builds (it never clones the neck
    under the benchmarks' parameter cap), so the model is the search's every-block recipe exactly."""
    kind, arg = parse_method(method, store.depth)
    num_classes = store.task_record(task).num_classes
    if kind == "lora":
        lora = lora_model(store, int(arg or 8), num_classes, seed)
        return Built(lora.model, lora.modules, lora.owned)
    if kind == "finetune-all":
        body = _root_body(store, trainable=True)
        modules = {**body, "head": _new_head(store, num_classes, seed)}
        return Built(PathModel(modules, store.family), modules, dict(modules))
    counter = itertools.count()
    plan = plan_baseline(store, task, method, EvolveSettings(seed=seed), lambda p: f"{p}{next(counter)}",
                         random.Random(seed))
    if frozen_neck:
        plan = _root_neck(store, plan)
    comps = store.manifest.components()
    modules, owned = {}, {}
    for slot in plan.slots:
        spec = ComponentSpec(slot.kind, slot.config)
        if slot.init is not None and slot.init.kind == "fresh":
            tensors = new_component_tensors(spec, int(slot.init.seed or 0), store.root_spec)
        else:
            source = slot.init.source if slot.init is not None else slot.id
            tensors = store.blobs.get_tensors(comps[str(source)].blob)
        modules[slot.slot] = load_component(spec, store.root_spec, tensors, trainable=slot.trainable)
        if slot.trainable:
            owned[slot.slot] = modules[slot.slot]
    return Built(PathModel(modules, store.family), modules, owned)


def _root_neck(store: Store, plan: ChildPlan) -> ChildPlan:
    """`plan` with its neck slot the root's frozen neck."""
    neck = store.manifest.retained()[ROOT_TASK].components["neck"]
    slots = [dataclasses.replace(s, id=neck, trainable=False, init=None) if s.slot == "neck" else s
             for s in plan.slots]
    return dataclasses.replace(plan, slots=slots)


def seconds_per_step(built: Built, x: torch.Tensor, y: torch.Tensor, lr: float) -> float:
    """Seconds per step: the mean of CALIBRATION_STEPS timed AdamW steps on a copy (the first
    untimed), so the baseline itself starts untouched."""
    model, owned = copy.deepcopy((built.model, built.owned))
    params = [p for m in owned.values() for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr)
    times = []
    for i in range(CALIBRATION_STEPS + 1):
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


def timed_baseline(store: Store, task: str, method: str, lr: float, seconds: float, seed: int, *,
                   frozen_neck: bool = False) -> dict[str, Any]:
    """Train `method` on `task` of `store` at learning rate `lr` for `seconds` of wall-clock (build,
    calibration, training, validations and test included); its validation and test accuracy.
    `frozen_neck`: see `build`."""
    started = time.perf_counter()
    base = EvolveSettings(seed=seed)
    hp = baseline_hparams(store, task, "finetune-all", None, base)
    hp["opt_lr"] = lr
    size = int(hp["ds_image_size"])
    built = build(store, task, method, seed_for(seed, method, task), frozen_neck=frozen_neck)
    data = store.task_data(task)
    x = to_model_input(data["train.x"][:base.batch_size], size)
    step_s = seconds_per_step(built, x, data["train.y"][:base.batch_size], lr)
    with torch.inference_mode():
        t0 = time.perf_counter()
        built.model.eval()(x)
        forward_per_image = (time.perf_counter() - t0) / x.shape[0]
    val_images = min(base.val_limit, len(data["validation.y"]))
    test_s = forward_per_image * len(data["test.y"])
    left = seconds - (time.perf_counter() - started) - test_s
    steps = max(1, int(left / (step_s + forward_per_image * val_images / base.steps_per_validation)))
    outcome = _train_in_memory(store, task, built.model, built.owned, hp, steps * base.batch_size, base=base,
                               validations=None, what=method, deadline=started + seconds - test_s)
    test = _test_accuracy(store, built.modules, task, size)
    trained = sum(p.numel() for m in built.owned.values() for p in m.parameters())
    return {"method": method, "task": task, "lr": lr, "val": outcome.quality, "test": test, "steps": outcome.steps,
            "planned_steps": steps, "wall": time.perf_counter() - started, "trainable": trained}
