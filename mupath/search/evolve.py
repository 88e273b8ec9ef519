"""The evolution loop (µ2Net `task_iter` / `end_task`): for each task iteration, round-robin over
the tasks; per task, generations of mutated children are trained on an executor, improved ones join
the task's population, and only the best path is committed, its components locked. After every
commit every other task is re-run and must give bit-identical logits."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import random
import shutil
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mupath.errors import MupathError
from mupath.runtime.executors import make_executor
from mupath.search.mutation import ChildPlan, CompInfo, Lineage, committed_infos, make_child, sample_ds_hparams
from mupath.search.probe import probe_scores, rank_seeds
from mupath.search.scoring import accounted_params, compute_locks, score
from mupath.search.selection import select_parent
from mupath.search.settings import EvolveSettings
from mupath.search.space import SearchSpace, frozen_floor
from mupath.store.records import ROOT_TASK, PathRecord

if TYPE_CHECKING:
    from mupath.system import System


class Progress(Protocol):
    """What the loop reports while it works (the CLI draws rich progress bars from it)."""

    def task_started(self, task: str, iteration: int, candidates: int) -> None: ...
    def candidate_step(self, index: int, step: int, total: int) -> None: ...
    def candidate_done(self, result: dict[str, Any]) -> None: ...
    def task_done(self, entry: "TaskReport") -> None: ...


@dataclasses.dataclass
class TaskReport:
    task: str
    iteration: int
    path_id: str
    changed: bool
    val_quality: float
    test_accuracy: float
    score: float
    candidates: int
    improved: int
    failures: list[str]
    train_images: int
    train_time: float
    wall_time: float
    parent_task: str | None


@dataclasses.dataclass
class EvolveReport:
    run_id: str
    resumed: bool
    tasks: list[TaskReport]
    wall_time: float


def seed_for(*parts: Any) -> int:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:4], "little")


def id_stream(rng: random.Random) -> Any:
    """Unique ids that are also reproducible for a given seed (uuid from the run's random stream)."""
    def new_id(prefix: str) -> str:
        return f"{prefix}{uuid.UUID(int=rng.getrandbits(128), version=4).hex[:16]}"
    return new_id


def evolve(system: "System", tasks: list[str], settings: EvolveSettings,
           progress: Progress | None = None) -> EvolveReport:
    """Run (or resume) an evolution over `tasks`; see the module docstring."""
    started = time.perf_counter()
    key = settings.resume_key(tasks)
    system.search_space(settings)      # bad hyperparameters and an unreachable cluster fail here,
    executor = make_executor(settings.executor, settings.workers, settings.threads_per_worker,
                             settings.ray_address, settings.ray_ship_blobs, settings.device)   # before a run row is written
    try:
        run_id, resumed = system.start_run(key)
        done = {(c["iteration"], c["task"]) for c in system.manifest.commits(run_id)}
    except BaseException:
        executor.shutdown()
        raise
    reports: list[TaskReport] = []
    try:
        for iteration in range(settings.iterations):
            for task in tasks:
                if (iteration, task) in done:
                    continue
                system.check_interrupt()
                reports.append(_evolve_task(system, task, iteration, settings, executor, run_id, progress))
        system.finish_run(run_id)
    except BaseException:
        executor.shutdown()            # candidates may still be in flight: stop the workers
        raise
    else:
        executor.close()               # a persistent pool stays up for the next call
    finally:
        shutil.rmtree(system.scratch_dir(run_id), ignore_errors=True)
    return EvolveReport(run_id, resumed, reports, time.perf_counter() - started)


def _evolve_task(system: "System", task: str, iteration: int, settings: EvolveSettings, executor: Any,
                 run_id: str, progress: Progress | None) -> TaskReport:
    t_start = time.perf_counter()
    rng = random.Random(seed_for(settings.seed, task, iteration))
    new_id = id_stream(random.Random(seed_for(settings.seed, task, iteration, "ids", run_id)))
    info = system.task_record(task)
    space = system.search_space(settings)
    floor = run_cache_floor(system, settings, space)
    retained = system.manifest.retained()
    locks = compute_locks(retained)
    if task in retained:                      # start_task: this task's own components are trainable again
        for cid in retained[task].components.values():
            locks[cid].discard(task)
    comps = committed_infos(system.manifest.components())
    sizes = {cid: c.num_params for cid, c in comps.items()}
    root_params = system.root_params
    paths: dict[str, PathRecord] = {p.id: p for p in retained.values()}
    root_path = retained[ROOT_TASK]
    seeds = [p for t, p in sorted(retained.items()) if t != task]   # other tasks' best paths + the root
    rng.shuffle(seeds)
    probe: dict[str, Any] = {}
    if settings.seed_order == "probe" and seeds:
        t_probe = time.perf_counter()
        data = system.task_data(task)
        relevance = probe_scores(seeds, system.build_model, data["train.x"], data["train.y"], info.num_classes,
                                 settings.probe_images, seed_for(settings.seed, task, "probe"),
                                 int(space.defaults["ds_image_size"]))
        seeds = rank_seeds(seeds, relevance)
        probe = {"probe_top": [[p.task, round(relevance[p.id], 4)] for p in seeds[:5]],
                 "probe_time": time.perf_counter() - t_probe}
    population = [retained[task]] if task in retained else []
    scores: dict[str, float] = {}

    def rescore(path: PathRecord) -> float:
        return score(path.quality, accounted_params(path.components.values(), task, locks, sizes),
                     root_params, settings.scale_factor)

    for p in population:
        scores[p.id] = rescore(p)
    offspring: Counter = Counter(system.manifest.offspring())
    new_offspring: Counter = Counter()
    lineage = Lineage(paths, comps, lambda cid: not locks.get(cid), root_path, new_id, system.family,
                      system.root_meta, always_cloned(system, settings, root_path))
    if progress:
        progress.task_started(task, iteration, settings.generations * settings.candidates)
    failures: list[str] = []
    improved = 0
    tried: list[dict[str, Any]] = []
    train_images = 0
    train_time = 0.0
    scratch = system.scratch_dir(run_id)
    for generation in range(settings.generations):
        system.check_interrupt()
        if generation:
            _adopt_new_seeds(system, task, paths, comps, sizes, locks, seeds)
        best = _best(population, scores)
        ds_hp = sample_ds_hparams(best.hparams if best else None, space, rng)
        plans: list[ChildPlan] = []
        parents: list[PathRecord] = []
        for i in range(settings.candidates):
            parent = select_parent(population, scores, seeds, offspring, task, rng)
            parents.append(parent)
            offspring[(parent.id, task)] += 1
            new_offspring[(parent.id, task)] += 1
            unmutated = settings.head_first and task not in retained and generation == 0 and i == 0
            plans.append(make_child(parent, task, info.num_classes, ds_hp, space, lineage, rng,
                                    settings.mutate_adapters, mutate=not unmutated))
        jobs = [candidate_job(system, plan, task, info.data_blob, settings, locks, sizes, comps, scores, paths,
                              scratch, seed_for(settings.seed, task, iteration, generation, i), floor)
                for i, plan in enumerate(plans)]
        system.pin_blobs(run_id, jobs)     # other agents may drop borrowed components meanwhile
        on_step = (lambda i, s, t: progress.candidate_step(i, s, t)) if progress else None
        on_done = (lambda i, r: progress.candidate_done(r)) if progress else None
        results = executor.run(jobs, on_done=on_done, on_step=on_step)
        for plan, parent, res in zip(plans, parents, results):
            tried.append(tried_entry(plan, res, generation, data_moves(parent.hparams, ds_hp, space.defaults)))
            train_images += int(res.get("images", 0))
            train_time += float(res.get("train_time", 0.0))
            if res.get("failure"):
                failures.append(f"{plan.path.id}: {res['failure']}")
            if not res.get("improved"):
                continue
            improved += 1
            child = plan.path
            child.quality = float(res["quality"])
            child.metrics.update({k: res.get(k) for k in ("evals", "steps", "images", "train_time",
                                                          "eval_time", "owned_params", "accounted_params",
                                                          "cached_prefix", "wall_time")})
            child.metrics.update({"generation": generation, "iteration": iteration, "run_id": run_id})
            for s in plan.slots:
                if s.trainable:
                    comps[s.id] = CompInfo(s.id, s.kind, s.slot, s.config,
                                           int(res["component_params"][s.id]), scratch=res["scratch_file"])
                    sizes[s.id] = comps[s.id].num_params
            paths[child.id] = child
            population.append(child)
            scores[child.id] = float(res["score"])
    best = _best(population, scores)
    if best is None:
        raise MupathError(f"no candidate for task '{task}' trained successfully "
                          f"({failures[0] if failures else 'no candidates'}); lower the learning rate "
                          "or check the task's data")
    changed = task not in retained or best.id != retained[task].id
    for entry in tried:
        entry["retained"] = entry["path"] == best.id
    test_acc = system.commit(task, best, comps, new_offspring, run_id, iteration, changed,
                             {"score": scores[best.id], "candidates": settings.generations * settings.candidates,
                              "improved": improved, "failures": failures[:20], "tried": tried,
                              "train_images": train_images,
                              "train_time": train_time, "wall_time": time.perf_counter() - t_start, **probe})
    if settings.check_immutability:
        scope = None
        if settings.check_scope == "shared":
            touched = set(best.components.values()) | (set(retained[task].components.values())
                                                       if task in retained else set())
            scope = sharing_tasks(system.manifest.retained(), touched, task)
        system.check_immutability(exclude=task, tasks=scope)
    parent_task = paths[best.parent_id].task if best.parent_id in paths else None
    entry = TaskReport(task, iteration, best.id, changed, best.quality, test_acc, scores[best.id],
                       settings.generations * settings.candidates, improved, failures, train_images,
                       train_time, time.perf_counter() - t_start, parent_task)
    if progress:
        progress.task_done(entry)
    return entry


def data_moves(parent_hp: dict[str, Any], ds_hp: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """{key: [parent's value, child's value]} of the data hyperparameters (image size, augmentation) a
    child's generation changed from its parent's: they are drawn once per generation, not by the
    child's own mutations, so the child's `mutations` never show them."""
    base = {**defaults, **parent_hp}
    return {k: [base.get(k), v] for k, v in sorted(ds_hp.items()) if base.get(k) != v}


def tried_entry(plan: ChildPlan, res: dict[str, Any], generation: int,
                data: dict[str, Any] | None = None) -> dict[str, Any]:
    """One candidate of a task's search, as the commit keeps it (info["tried"], shown by `mupath
    history`): why a task ended with its path is otherwise invisible, since only the retained path is
    stored. `data`: its generation's data-hyperparameter moves (`data_moves`). `quality` is set only for a candidate that beat its bar and joined the population;
    `best_val` is its best validation accuracy either way (how close a losing candidate came). JSON has
    no infinity, so neither is ever -inf: a candidate with no finite validation has None."""
    quality = res.get("quality")
    finite = [float(v) for v in res.get("evals") or [] if v is not None and math.isfinite(float(v))]
    entered = bool(res.get("improved"))
    return {"path": plan.path.id, "generation": generation, "parent_task": plan.path.metrics.get("parent_task"),
            "mutations": plan.mutations, "data": data or {},
            "quality": float(quality) if entered and quality is not None and math.isfinite(float(quality)) else None,
            "best_val": max(finite) if finite else None,
            "score": float(res["score"]) if entered else None,
            "owned_params": int(res.get("owned_params", 0)), "accounted_params": float(res.get("accounted_params", 0.0)),
            "entered": entered, "failure": res.get("failure"), "device": res.get("device")}


def sharing_tasks(retained: dict[str, PathRecord], components: set[str], task: str) -> set[str]:
    """Tasks other than `task` whose retained path uses one of `components` (root components left
    out: they are never written or dropped)."""
    own = {c for c in components if not c.startswith("root-")}
    return {t for t, p in retained.items()
            if t not in (task, ROOT_TASK) and own & set(p.components.values())}


def _adopt_new_seeds(system: "System", task: str, paths: dict[str, PathRecord], comps: dict[str, CompInfo],
                     sizes: dict[str, int], locks: dict[str, set[str]], seeds: list[PathRecord]) -> None:
    """Paths other processes committed since this task iteration started become parents from the next
    generation on (µ3Net agents see each other's published paths). Their components join the lookup
    tables as frozen (locked by their task)."""
    fresh = system.manifest.retained()
    new = [p for t, p in sorted(fresh.items()) if t != task and p.id not in paths]
    if not new:
        return
    stored = system.manifest.components()
    for path in new:
        for cid in path.components.values():
            c = stored[cid]
            comps.setdefault(cid, CompInfo.committed(c))
            sizes.setdefault(cid, c.num_params)
            locks.setdefault(cid, set()).add(path.task)
        paths[path.id] = path
        seeds.append(path)


def _best(population: list[PathRecord], scores: dict[str, float]) -> PathRecord | None:
    """Highest score; among ties the most recent (µ2Net)."""
    best = None
    for p in population:
        if best is None or scores[p.id] >= scores[best.id]:
            best = p
    return best


def always_cloned(system: "System", settings: EvolveSettings, root_path: PathRecord) -> frozenset[str]:
    """Root components no child shares frozen (`clone_root`): random weights are no knowledge to
    reuse, so sharing them only costs accuracy; µ2Net's random-init roots likewise grow trained layers."""
    mode = settings.clone_root
    if mode == "always" or (mode == "auto" and system.root_spec.weights == "random"):
        return frozenset(root_path.components.values())
    return frozenset()


def run_cache_floor(system: "System", settings: EvolveSettings, space: SearchSpace) -> int:
    """Leading blocks no candidate of this run can own: the activation cache's checkpoint depth.
    (`clone_root` never overrides a clone probability of 0, so the floor holds under it too.)"""
    return frozen_floor(space, system.family.embed_slots, system.depth, settings.mutate_adapters)


def candidate_job(system: "System", plan: ChildPlan, task: str, data_blob: str, settings: EvolveSettings,
                  locks: dict[str, set[str]], sizes: dict[str, int], comps: dict[str, CompInfo],
                  scores: dict[str, float], paths: dict[str, PathRecord], scratch: Path, seed: int,
                  cache_floor: int = 0) -> dict[str, Any]:
    """The JSON job of one candidate (`cache_floor`: see `run_cache_floor`)."""
    frozen = [s.id for s in plan.slots if not s.trainable]
    refs: dict[str, dict[str, Any]] = {}
    for s in plan.slots:
        src = s.id if not s.trainable else (s.init or {}).get("from") or (s.init or {}).get("resample")
        if src:
            c = comps[src]
            refs[src] = {"blob": c.blob} if c.blob else {"scratch": c.scratch, "id": src}
    parent = paths.get(plan.path.parent_id or "")
    bar = scores.get(parent.id) if parent is not None and parent.task == task else None
    return {
        "store": str(system.path), "root": system.root_spec.to_json(), "task_blob": data_blob,
        "path_id": plan.path.id, "hparams": plan.path.hparams, "refs": refs,
        "slots": [dataclasses.asdict(s) for s in plan.slots],
        "frozen_accounted": accounted_params(frozen, task, locks, sizes),
        "root_params": system.root_params, "scale_factor": settings.scale_factor, "bar": bar,
        "steps_per_validation": settings.steps_per_validation, "validations": settings.validations,
        "batch_size": settings.batch_size, "val_limit": settings.val_limit, "seed": seed,
        "cache_mb": settings.cache_mb, "device": settings.device,
        "cache_floor": cache_floor,
        "scratch_file": str(scratch / f"{plan.path.id}.safetensors"),
    }
