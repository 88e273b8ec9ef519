"""Baselines of the quality benchmark (the reference's `exp_config_set_baseline_common`): per task ONE
path whose parent is always the root, trained as one long candidate with the same number of training
images the evolution spent on that task, several validations and best-snapshot selection.

- `finetune-all`: every root component cloned (trainable) plus a new head;
- `freeze-bottom:X`: blocks >= X, the final norm and the head train (clones); the embeddings and
  blocks < X are the frozen root components, shared;
- `adapters:D`: an identity-initialised residual adapter of width D before every block; only the
  adapters, the final norm and the head train, everything else is the frozen root;
- `deltas:R`: mupath's own low-rank delta of rank R (`lora_i`) on every block's linear and pointwise
  layers; only the deltas, the final norm and the head train: what a path of the search's new kinds
  can reach, checked against peft's `lora:R` (docs/benchmarks.md, "modules");
- `sequential`: one shared model (the root cloned once) with one head per task, fine-tuned task after
  task (body + current head), every earlier task re-tested after each later one: the forgetting
  baseline. It has no store path; see `run_sequential`.
- `lora:R`: per task a fresh rank-R LoRA (the `peft` library's `LoraConfig`) on the conv and linear
  layers of the frozen root's body, and a new head; only the LoRA weights and the head train. What a
  user would pick instead of µ2Net today. No store path either (a LoRA is no stored component kind);
  see `run_lora`. Tasks are independent and the root is never written: forgetting is 0 by
  construction.

The first three are built as `ChildPlan`s, trained by the worker's `run_job` and stored with
`System.commit` in a store of their own (one System per method), so their accuracy, parameter
accounting and test evaluation are computed exactly as the evolved store's. Hyperparameters are the
search space's defaults."""
from __future__ import annotations

import dataclasses
import json
import random
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from mupath.errors import ConfigError, MupathError
from mupath.model.components import ComponentSpec, build_component, load_component, new_component_tensors
from mupath.model.path_model import PathModel
from mupath.runtime.executors import make_executor
from mupath.runtime.jobs import CandidateJob, CandidateResult, SlotInit
from mupath.search.ids import id_stream, seed_for
from mupath.search.mutation import (
    ChildPlan,
    Lineage,
    SlotPlan,
    committed_infos,
    find_component,
    fresh_slot,
    wanted_slots,
)
from mupath.search.scoring import compute_users
from mupath.search.settings import EvolveSettings, make_settings
from mupath.search.space import search_space
from mupath.search.task_search import LookupTables, admit, candidate_job, run_cache_floor
from mupath.store.records import ROOT_TASK, PathRecord
from mupath.store.store import CHECK_THREADS, CommitRequest, Store
from mupath.train.evaluate import accuracy_of, cores, fixed_threads, logits_of
from mupath.train.loop import TrainConfig, TrainOutcome, train_path
from mupath.train.pipeline import to_model_input

STORE_METHODS = ("finetune-all", "freeze-bottom", "adapters", "deltas")   #: methods committed into a store
SEQUENTIAL = "sequential"
LORA = "lora"
DEFAULT_VALIDATIONS = 8   #: validations of a baseline candidate when no steps_per_validation is given


# ---- methods and budgets ---------------------------------------------------------------------
def parse_method(method: str, depth: int | None = None) -> tuple[str, int | None]:
    """'finetune-all' | 'freeze-bottom:X' | 'adapters:D' | 'deltas:R' | 'lora:R' | 'sequential' ->
    (kind, argument)."""
    match = re.fullmatch(r"(finetune-all|sequential|freeze-bottom|adapters|deltas|lora)(?::(\d+))?",
                         str(method).strip())
    if not match:
        raise ConfigError(f"unknown baseline '{method}'; use finetune-all, freeze-bottom:X, adapters:D, "
                          "deltas:R, lora:R or sequential")
    kind, arg = match.group(1), match.group(2)
    if kind in ("finetune-all", SEQUENTIAL):
        if arg is not None:
            raise ConfigError(f"baseline '{kind}' takes no argument, got '{method}'")
        return kind, None
    if arg is None:
        example = {"freeze-bottom": "freeze-bottom:2", "adapters": "adapters:32", "deltas": "deltas:8",
                   LORA: "lora:8"}[kind]
        raise ConfigError(f"baseline '{kind}' needs an argument, e.g. {example}")
    value = int(arg)
    if kind == "freeze-bottom" and depth is not None and value > depth:
        raise ConfigError(f"freeze-bottom:{value} freezes more blocks than the root has ({depth})")
    if kind == "adapters" and value < 1:
        raise ConfigError("adapters:D needs a width D >= 1")
    if kind in (LORA, "deltas") and value < 1:
        raise ConfigError(f"{kind}:R needs a rank R >= 1")
    return kind, value


def split_budget(images: int, batch_size: int, steps_per_validation: int | None = None,
                 validations: int | None = None) -> tuple[int, int]:
    """(steps per validation, validations) of one long candidate that processes `images` training
    images (rounded down to whole batches). The validation count is the one that keeps the evolution's
    `steps_per_validation` (the reference multiplies the validations), or `validations`; it is moved to
    the nearest divisor of the step count below it so that the budget is met exactly. Only when no
    divisor is close (a step count with few divisors) are up to `validations - 1` steps left over."""
    if batch_size < 1:
        raise ConfigError("batch_size must be a positive integer")
    steps = int(images) // batch_size
    if steps < 1:
        raise ConfigError(f"a budget of {images} training images is less than one batch of {batch_size}")
    if validations is None:
        validations = max(1, round(steps / steps_per_validation)) if steps_per_validation else DEFAULT_VALIDATIONS
    want = max(1, min(int(validations), steps))
    v = max(d for d in range(1, want + 1) if steps % d == 0)
    if 2 * v < want:
        v = want
    return steps // v, v


def forgetting(history: Iterable[tuple[str, Mapping[str, float]]]) -> tuple[float, dict[str, float]]:
    """Forgetting from a history of (trained task, {task: test accuracy after that training}).

    A task's reference is its accuracy right after its own (latest) training; its forgetting is the
    largest drop below that reference measured after another task's training. Returns the largest
    over tasks (0.0 when nothing dropped) and the per-task values."""
    ref: dict[str, float] = {}
    per_task: dict[str, float] = {}
    for trained, accs in history:
        if trained in accs:
            ref[trained] = float(accs[trained])
            per_task.setdefault(trained, 0.0)
        for task, acc in accs.items():
            if task != trained and task in ref:
                per_task[task] = max(per_task.get(task, 0.0), ref[task] - float(acc))
    return max(per_task.values(), default=0.0), per_task


# ---- store baselines --------------------------------------------------------------------------
@dataclasses.dataclass
class BaselineResult:
    method: str
    task: str
    path_id: str
    test_accuracy: float
    val_quality: float
    budget_images: int          #: the training images it was given
    images: int                 #: the training images it processed
    steps_per_validation: int
    validations: int
    trainable: list[str]        #: slots it trained
    frozen: list[str]           #: slots that are shared frozen root components
    train_time: float
    wall_time: float


def baseline_hparams(store: Store, task: str, kind: str, arg: int | None,
                     settings: EvolveSettings) -> dict[str, Any]:
    """The search space's defaults, with adapters on every layer for `adapters:D` and deltas on every
    block for `deltas:R`."""
    hp = dict(search_space(store, settings).defaults)
    hp["num_classes"] = store.task_record(task).num_classes
    hp["adapter_layers"] = list(range(int(hp["num_layers"]))) if kind == "adapters" else []
    if kind == "adapters":
        hp["adapter_dim"] = int(arg or 0)
    if kind == "deltas":
        hp["lora_layers"], hp["lora_rank"] = list(range(int(hp["num_layers"]))), int(arg or 0)
    return hp


def _trains(kind: str, arg: int | None, slot: str) -> bool:
    """Does a root component in `slot` get cloned (trainable) under this method?"""
    if kind == "finetune-all":
        return True
    if slot in ("norm", "neck"):
        return True      # the reference trains encoder_norm in every baseline (the CNN's neck here)
    if kind == "freeze-bottom" and slot.startswith("block_"):
        return int(slot.split("_")[1]) >= int(arg or 0)
    return False


def plan_baseline(store: Store, task: str, method: str, settings: EvolveSettings,
                  new_id: Callable[[str], str], rng: random.Random) -> ChildPlan:
    """The ChildPlan of `method` for `task`: its parent is the root path."""
    kind, arg = parse_method(method, store.depth)
    if kind not in STORE_METHODS:
        raise ConfigError(f"'{method}' is not a store baseline; use run_sequential")
    hp = baseline_hparams(store, task, kind, arg, settings)
    root_path = store.manifest.retained()[ROOT_TASK]
    comps = committed_infos(store.manifest.components())
    lineage = Lineage({root_path.id: root_path}, comps, lambda cid: False, root_path, new_id, store.family,
                      store.root_meta)
    wanted = wanted_slots(hp, int(hp["num_classes"]), lineage)
    slots: list[SlotPlan] = []
    for slot, (ckind, config) in wanted.items():
        found = find_component(slot, config, [root_path], lineage)
        if found is None:                               # head, adapters (and a resampled pos_embed)
            slots.append(fresh_slot(slot, ckind, config, lineage, rng))
        elif _trains(kind, arg, slot):
            slots.append(SlotPlan(slot, new_id("c"), ckind, dict(config), True, SlotInit.copy(found)))
        else:
            slots.append(SlotPlan(slot, found, ckind, dict(config), False))
    path = PathRecord(id=new_id("p"), task=task, parent_id=root_path.id,
                      components={s.slot: s.id for s in slots}, hparams=hp,
                      metrics={"baseline": method, "parent_task": ROOT_TASK, "mutations": {}})
    return ChildPlan(path, slots, {})


def baseline_job(store: Store, plan: ChildPlan, budget_images: int, settings: EvolveSettings,
                 run_id: str, seed: int, *, validations: int | None = None) -> CandidateJob:
    """The worker job of a baseline candidate (the evolution's job format, the whole budget in one
    candidate: `settings.steps_per_validation` is kept, the validations multiplied)."""
    spv, v = split_budget(budget_images, settings.batch_size, settings.steps_per_validation, validations)
    long = dataclasses.replace(settings, steps_per_validation=spv, validations=v)
    comps = committed_infos(store.manifest.components())
    tables = LookupTables(comps, compute_users(store.manifest.retained()),
                          {cid: c.num_params for cid, c in comps.items()}, {}, {}, store.scratch_dir(run_id))
    record = store.task_record(plan.path.task)
    return candidate_job(store, plan, record.data_blob, long, tables, seed,
                         cache_floor=run_cache_floor(store, long, search_space(store, long)))


def commit_baseline(store: Store, plan: ChildPlan, result: CandidateResult, job: CandidateJob,
                    budget_images: int, run_id: str, *, check: bool = True) -> BaselineResult:
    """Store a trained baseline path with `Store.commit` (test accuracy, users, accounting)."""
    path = plan.path
    if not result.improved:
        raise MupathError(f"baseline {path.metrics.get('baseline')} failed on task '{path.task}': "
                          f"{result.failure or 'no finite validation score'}")
    tables = LookupTables({}, {}, {}, {}, {}, store.scratch_dir(run_id))
    admit(tables, plan, result)
    path.metrics.update({"budget_images": int(budget_images), "run_id": run_id})
    spv, validations = job.budget.steps_per_validation, job.budget.validations
    info = {"baseline": path.metrics.get("baseline"), "budget_images": int(budget_images),
            "train_images": int(result.images), "train_time": float(result.train_time),
            "wall_time": float(result.wall_time), "steps_per_validation": spv,
            "validations": validations, "evals": list(result.evals), "candidates": 1}
    test_acc = store.commit(CommitRequest(path.task, path, tables.comps, {}, run_id, 0, True, info))
    if check:
        store.check_immutability(exclude=path.task)
    return BaselineResult(str(path.metrics.get("baseline")), path.task, path.id, test_acc, path.quality,
                          int(budget_images), int(result.images), int(spv), int(validations),
                          [s.slot for s in plan.slots if s.trainable],
                          [s.slot for s in plan.slots if not s.trainable], float(result.train_time),
                          float(result.wall_time))


@dataclasses.dataclass
class PendingBaseline:
    """A planned, not yet committed baseline candidate: train `job` (the worker's `run_job`), then
    `finish_store_baselines` commits it."""

    method: str
    task: str
    store: Store
    run_id: str
    plan: ChildPlan
    job: CandidateJob
    budget_images: int


def prepare_store_baselines(stores: Mapping[str, Store], tasks: list[str], budgets: Mapping[str, int],
                            seed: int = 0, validations: int | None = None,
                            **settings: Any) -> tuple[list[PendingBaseline], dict[str, str]]:
    """Plan the candidate of every (method, task) of `stores` ({method: its own store}) with
    `budgets[task]` training images. Returns the pending candidates and {method: run id}. A store with
    an unfinished run of the same method, tasks, budgets and settings is resumed: tasks it already
    committed are skipped."""
    base = make_settings(seed=seed, **settings)
    missing = [t for t in tasks if t not in budgets]
    if missing:
        raise ConfigError(f"no training-image budget for task(s) {', '.join(missing)}")
    pending: list[PendingBaseline] = []
    runs: dict[str, str] = {}
    for method, store in stores.items():
        parse_method(method, store.depth)
        key = json.dumps({"baseline": method, "tasks": tasks, "budgets": {t: int(budgets[t]) for t in tasks},
                          "validations": validations, "settings": json.loads(base.resume_key(tasks))},
                         sort_keys=True)
        run_id, _ = store.start_run(key)
        runs[method] = run_id
        committed = {c.task for c in store.manifest.commit_records(run_id)}
        for task in tasks:
            store.task_record(task)
            if task in committed:
                continue
            new_id = id_stream(random.Random(seed_for(seed, "ids", method, task, run_id)))
            rng = random.Random(seed_for(seed, "baseline", method, task))
            plan = plan_baseline(store, task, method, base, new_id, rng)
            job = baseline_job(store, plan, int(budgets[task]), base, run_id, seed_for(seed, "baseline", task),
                               validations=validations)
            pending.append(PendingBaseline(method, task, store, run_id, plan, job, int(budgets[task])))
    return pending, runs


def finish_store_baselines(pending: list[PendingBaseline], results: list[CandidateResult], runs: Mapping[str, str],
                           stores: Mapping[str, Store], check: bool = True,
                           on_done: Callable[[BaselineResult], None] | None = None) -> dict[str, list[BaselineResult]]:
    """Commit trained candidates (`results` in the order of `pending`) store by store, in task order,
    and close the runs."""
    done: dict[str, list[BaselineResult]] = {m: [] for m in stores}
    for p, res in zip(pending, results):       # pending is already in (method, task order)
        out = commit_baseline(p.store, p.plan, res, p.job, p.budget_images, p.run_id, check=check)
        done[p.method].append(out)
        if on_done:
            on_done(out)
    for method, store in stores.items():
        store.finish_run(runs[method])
        shutil.rmtree(store.scratch_dir(runs[method]), ignore_errors=True)
    return done


def train_store_baselines(stores: Mapping[str, Store], tasks: list[str], budgets: Mapping[str, int], *,
                          workers: int = 1, seed: int = 0, validations: int | None = None,
                          check: bool = True, on_done: Callable[[BaselineResult], None] | None = None,
                          **settings: Any) -> dict[str, list[BaselineResult]]:
    """Train and commit every (method, task) of `stores` ({method: its own store}) with
    `budgets[task]` training images each. The paths are independent (parent = root), so all candidates
    go to one executor at once; they are committed in task order. `settings` are evolve settings
    (batch_size, val_limit, steps_per_validation, cache_mb, executor, threads_per_worker ...)."""
    base = make_settings(workers=workers, seed=seed, **settings)
    pending, runs = prepare_store_baselines(stores, tasks, budgets, seed, validations, workers=workers, **settings)
    executor = make_executor(base.executor, workers, base.threads_per_worker, device=base.device)
    try:
        results = executor.run([p.job for p in pending]) if pending else []
    finally:
        executor.close()
    return finish_store_baselines(pending, results, runs, stores, check, on_done)


# ---- sequential fine-tuning (the forgetting baseline) -----------------------------------------
@dataclasses.dataclass
class SequentialResult:
    tasks: list[str]
    after_own: dict[str, float]           #: test accuracy right after the task's own training
    final: dict[str, float]               #: test accuracy after the last task
    history: list[tuple[str, dict[str, float]]]   #: (trained task, accuracies of the tasks so far)
    forgetting: float                     #: largest drop of an earlier task's test accuracy
    forgetting_per_task: dict[str, float]
    val_quality: dict[str, float]
    budget_images: dict[str, int]
    images: dict[str, int]
    train_time: dict[str, float]
    wall_time: dict[str, float]
    body_params: int                      #: the shared model without heads
    head_params: dict[str, int]

    def accounted_params(self) -> dict[str, float]:
        """µ2Net rule: the body is used by every task (|body| / tasks each), the head is the task's."""
        n = len(self.tasks)
        return {t: self.body_params / n + self.head_params[t] for t in self.tasks}

    @property
    def total_params(self) -> int:
        return self.body_params + sum(self.head_params.values())


def run_sequential(store: Store, tasks: list[str], budgets: Mapping[str, int], seed: int = 0,
                   validations: int | None = None, on_task: Callable[[str, dict[str, float]], None] | None = None,
                   **settings: Any) -> SequentialResult:
    """Fine-tune one model (the root of `store`, cloned) on `tasks` in order, `budgets[task]` training
    images each, with a new head per task; after each task, re-test it and every earlier task (with its
    own head). `store` only provides the root and the tasks' data; nothing is written to it."""
    base = make_settings(seed=seed, **settings)
    body = _root_body(store, trainable=True)
    body_params = sum(p.numel() for m in body.values() for p in m.parameters())
    heads: dict[str, torch.nn.Module] = {}
    sizes: dict[str, int] = {}
    out = SequentialResult(list(tasks), {}, {}, [], 0.0, {}, {}, {}, {}, {}, {}, body_params, {})
    for k, task in enumerate(tasks):
        started = time.perf_counter()
        hp = baseline_hparams(store, task, "finetune-all", None, base)
        size = int(hp["ds_image_size"])
        if size != int(store.root_spec.image_size):
            raise ConfigError("the sequential baseline keeps the root's image size (one shared position embedding)")
        sizes[task] = size
        heads[task] = head = _new_head(store, int(hp["num_classes"]), seed_for(seed, "sequential", task))
        out.head_params[task] = sum(p.numel() for p in head.parameters())
        owned = {**body, "head": head}
        outcome = _train_in_memory(store, task, PathModel(dict(owned), store.family), owned, hp,
                                   int(budgets[task]), base=base, validations=validations, what="sequential")
        accs = {t: _test_accuracy(store, {**body, "head": heads[t]}, t, sizes[t]) for t in tasks[:k + 1]}
        out.history.append((task, accs))
        out.after_own[task] = accs[task]
        out.val_quality[task] = outcome.quality
        out.budget_images[task] = int(budgets[task])
        out.images[task] = outcome.images
        out.train_time[task] = outcome.train_time
        out.wall_time[task] = time.perf_counter() - started
        if on_task:
            on_task(task, accs)
    out.final = dict(out.history[-1][1]) if out.history else {}
    out.forgetting, out.forgetting_per_task = forgetting(out.history)
    return out


def _train_in_memory(store: Store, task: str, model: nn.Module, owned: dict[str, nn.Module], hp: dict[str, Any],
                     budget: int, *, base: EvolveSettings, validations: int | None, what: str,
                     deadline: float | None = None) -> TrainOutcome:
    """Train `owned` (modules held in memory, not a store path) on `task` with the store baselines'
    schedule (`budget` training images, validations every `steps_per_validation` steps, no step after
    `deadline`), then load the best snapshot into them and freeze them, as every candidate keeps its
    best snapshot."""
    data = store.task_data(task)
    limit = int(base.val_limit)
    val_x = to_model_input(data["validation.x"][:limit], int(hp["ds_image_size"]))
    spv, v = split_budget(int(budget), base.batch_size, base.steps_per_validation, validations)
    run_seed = seed_for(base.seed, "baseline", task)
    torch.manual_seed(run_seed)
    outcome = train_path(model, owned, hp, TrainConfig(spv, v, base.batch_size, run_seed, deadline=deadline),
                         (data["train.x"], data["train.y"]), (val_x, data["validation.y"][:limit]),
                         score_of=lambda q: q, bar=float("-inf"))
    if not outcome.improved or outcome.best_state is None:
        raise MupathError(f"{what} baseline failed on task '{task}': "
                          f"{outcome.failure or 'no finite validation score'}")
    for name, module in owned.items():
        module.load_state_dict(outcome.best_state[name])
        module.requires_grad_(False)
    return outcome


def _new_head(store: Store, num_classes: int, seed: int) -> torch.nn.Module:
    """A zero-initialised head on the root's features (µ2Net's new-head mutation)."""
    spec = ComponentSpec("head", {"dim": store.family.head_dim(store.root_configs()), "num_classes": num_classes})
    head = build_component(spec, store.root_spec)
    head.load_state_dict(new_component_tensors(spec, seed))
    return head


def _test_accuracy(store: Store, modules: dict[str, torch.nn.Module], task: str, size: int) -> float:
    """Test accuracy of a model of `modules` on `task`, computed as every committed task's is."""
    data = store.task_data(task)
    with fixed_threads(CHECK_THREADS):
        logits = logits_of(PathModel(modules, store.family), data["test.x"], size, parallel=cores())
    return accuracy_of(logits, data["test.y"])


def sequential_job(job: dict[str, Any]) -> dict[str, Any]:
    """`run_sequential` as a JSON job (for a process pool, next to `run_job` candidates):
    {"store", "tasks", "budgets", "seed", "validations", "settings"} -> the result as a dict."""
    store = Store.open(job["store"], read_only=True)
    try:
        result = run_sequential(store, list(job["tasks"]), job["budgets"], int(job.get("seed", 0)),
                                job.get("validations"), **job.get("settings", {}))
    finally:
        store.close()
    return dataclasses.asdict(result)


def sequential_from_dict(data: Mapping[str, Any]) -> SequentialResult:
    fields = dict(data)
    fields["history"] = [(t, dict(a)) for t, a in fields["history"]]
    return SequentialResult(**fields)


# ---- LoRA through peft (what a user would pick instead today) ----------------------------------
LORA_TRAINS = ("lora_A", "lora_B")    #: the peft submodules that train (with the head)


def lora_targets(body: nn.Module) -> list[str]:
    """Names of the layers LoRA goes on: every plain `nn.Linear` and `nn.Conv2d` with groups == 1 of
    the root's body. Skipped, because peft cannot wrap them faithfully: depthwise convs (peft needs the
    rank divisible by the groups) and subclasses such as timm's `Conv2dSame` (its padding is computed
    at run time; peft's LoRA branch would copy the static padding and give a differently sized map)."""
    names = []
    for name, module in body.named_modules():
        if type(module) is nn.Linear or (type(module) is nn.Conv2d and module.groups == 1):
            names.append(name)
    return names


def _root_body(store: Store, *, trainable: bool) -> dict[str, nn.Module]:
    """The root's components as fresh modules of their own (copies of the stored tensors, never the
    store's shared frozen ones): trainable for the sequential baseline, frozen under LoRA."""
    root_path = store.manifest.retained()[ROOT_TASK]
    comps = store.manifest.components()
    return {slot: load_component(ComponentSpec(comps[cid].kind, comps[cid].config), store.root_spec,
                                 store.blobs.get_tensors(comps[cid].blob), trainable=trainable)
            for slot, cid in root_path.components.items()}


@dataclasses.dataclass
class LoraModel:
    """A root with a peft LoRA and a new head: `owned` is what trains (lora_A/lora_B and the head)."""

    model: PathModel
    modules: dict[str, nn.Module]      #: slot -> module (the body's carry the LoRA layers)
    owned: dict[str, nn.Module]        #: {"lora": the LoRA weights, "head": the head}
    targets: list[str]


def lora_model(store: Store, rank: int, num_classes: int, seed: int) -> LoraModel:
    """The root of `store` with a rank-`rank` LoRA on `lora_targets` (peft.inject_adapter_in_model on a
    local module: nothing is downloaded) and a zero-initialised head. alpha = rank (scaling 1), no
    dropout, lora_B starts at zero, so the model starts as the root."""
    import peft
    body = nn.ModuleDict(_root_body(store, trainable=False))
    targets = lora_targets(body)
    torch.manual_seed(seed)
    config = peft.LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=targets, bias="none")
    peft.inject_adapter_in_model(config, body)
    lora = nn.ModuleList([m for name, m in body.named_modules() if name.rsplit(".", 1)[-1] in LORA_TRAINS])
    head = _new_head(store, num_classes, seed)
    modules = {**dict(body.items()), "head": head}
    return LoraModel(PathModel(modules, store.family), modules, {"lora": lora, "head": head}, targets)


def base_state(modules: Mapping[str, nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    """The root tensors inside a LoRA model, under the root's own names (peft's `.base_layer.` removed,
    LoRA weights and the head left out): what must stay bit-identical to the stored root."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for slot, module in modules.items():
        if slot == "head":
            continue
        out[slot] = {k.replace(".base_layer.", ".").replace("base_layer.", ""): v
                     for k, v in module.state_dict().items() if "lora_" not in k}
    return out


def root_unchanged(store: Store, modules: Mapping[str, nn.Module]) -> bool:
    """Are the root tensors inside `modules` bit-identical to the stored root's? (Every stored tensor
    is compared; BatchNorm's `num_batches_tracked` counters are not stored.)"""
    comps = store.manifest.components()
    root = store.manifest.retained()[ROOT_TASK]
    state = base_state(modules)
    for slot, cid in root.components.items():
        stored = store.blobs.get_tensors(comps[cid].blob)
        if not set(stored) <= set(state[slot]) or any(not torch.equal(stored[k], state[slot][k]) for k in stored):
            return False
    return True


@dataclasses.dataclass
class LoraResult:
    rank: int
    tasks: list[str]
    test_accuracy: dict[str, float]
    val_quality: dict[str, float]
    budget_images: dict[str, int]
    images: dict[str, int]
    train_time: dict[str, float]
    wall_time: dict[str, float]
    lora_params: dict[str, int]            #: the task's LoRA weights
    head_params: dict[str, int]
    root_unchanged: dict[str, bool]        #: the root tensors were bit-identical after training
    body_params: int = 0                   #: the frozen root, shared by every task
    targets: int = 0                       #: layers LoRA was put on

    def accounted_params(self, users: int | None = None) -> dict[str, float]:
        """µ2Net rule: the frozen root is shared by every task (|root| / tasks each); the LoRA
        weights and the head are the task's own."""
        n = users or len(self.tasks)
        return {t: self.body_params / n + self.lora_params[t] + self.head_params[t] for t in self.tasks}

    @property
    def total_params(self) -> int:
        return self.body_params + sum(self.lora_params.values()) + sum(self.head_params.values())


def _lora_task(store: Store, task: str, budget: int, rank: int, base: EvolveSettings,
               validations: int | None) -> tuple[LoraModel, Any, float]:
    """Train a fresh LoRA and head for `task` (the store baselines' schedule: the search space's
    default hyperparameters, validations every `steps_per_validation` steps, best snapshot kept).
    Returns the model (best snapshot loaded), the train outcome and the test accuracy."""
    hp = baseline_hparams(store, task, "finetune-all", None, base)
    size = int(hp["ds_image_size"])
    built = lora_model(store, rank, int(hp["num_classes"]), seed_for(base.seed, "lora", task))
    outcome = _train_in_memory(store, task, built.model, built.owned, hp, budget, base=base,
                               validations=validations, what="lora")
    return built, outcome, _test_accuracy(store, built.modules, task, size)


def run_lora(store: Store, tasks: list[str], budgets: Mapping[str, int], rank: int, seed: int = 0,
             validations: int | None = None, **settings: Any) -> LoraResult:
    """The `lora:R` baseline: for each task independently, a fresh LoRA on the frozen root and a new
    head, `budgets[task]` training images. `store` provides the root and data; nothing is written."""
    base = make_settings(seed=seed, **settings)
    out = LoraResult(int(rank), list(tasks), {}, {}, {}, {}, {}, {}, {}, {}, {})
    for task in tasks:
        started = time.perf_counter()
        built, outcome, test_acc = _lora_task(store, task, int(budgets[task]), int(rank), base, validations)
        out.test_accuracy[task] = test_acc
        out.val_quality[task] = outcome.quality
        out.budget_images[task] = int(budgets[task])
        out.images[task] = outcome.images
        out.train_time[task] = outcome.train_time
        out.lora_params[task] = sum(p.numel() for p in built.owned["lora"].parameters())
        out.head_params[task] = sum(p.numel() for p in built.owned["head"].parameters())
        out.root_unchanged[task] = root_unchanged(store, built.modules)
        out.body_params = _root_params(store)
        out.targets = len(built.targets)
        out.wall_time[task] = time.perf_counter() - started
    return out


def _root_params(store: Store) -> int:
    """Parameters of the root's stored components (what a task sharing the root pays |root|/users of)."""
    comps = store.manifest.components()
    return sum(comps[cid].num_params for cid in store.manifest.retained()[ROOT_TASK].components.values())


def lora_job(job: dict[str, Any]) -> dict[str, Any]:
    """`run_lora` as a JSON job (for a process pool): {"store", "tasks", "budgets", "rank", "seed",
    "validations", "settings"} -> the result as a dict."""
    store = Store.open(job["store"], read_only=True)
    try:
        result = run_lora(store, list(job["tasks"]), job["budgets"], int(job["rank"]), int(job.get("seed", 0)),
                          job.get("validations"), **job.get("settings", {}))
    finally:
        store.close()
    return dataclasses.asdict(result)


def lora_from_dict(data: Mapping[str, Any]) -> LoraResult:
    return LoraResult(**dict(data))


def merge_lora(parts: list[LoraResult], tasks: list[str]) -> LoraResult:
    """One result from per-task jobs (each job trained a subset of the tasks), in `tasks` order."""
    out = LoraResult(parts[0].rank, list(tasks), {}, {}, {}, {}, {}, {}, {}, {}, {},
                     parts[0].body_params, parts[0].targets)
    for part in parts:
        for name in ("test_accuracy", "val_quality", "budget_images", "images", "train_time", "wall_time",
                     "lora_params", "head_params", "root_unchanged"):
            getattr(out, name).update(getattr(part, name))
    return out


def total_params(store: Store) -> int:
    """Parameters of every live component of a store (the root's included)."""
    return sum(c.num_params for c in store.manifest.components().values())


def budgets_from_commits(store: Store, run_id: str | None = None) -> dict[str, int]:
    """Training images the evolution spent per task: Σ `train_images` over its commits."""
    out: dict[str, int] = {}
    for c in store.manifest.commit_records(run_id):
        if c.task == ROOT_TASK:
            continue
        out[c.task] = out.get(c.task, 0) + c.info.train_images
    return out
