"""`TaskSearch`: the state of one task iteration's search (µ2Net `task_iter`) in one object: the
lineage tables (paths, components, their sizes and users), the parent pool (other tasks' best
paths and the root), this task's population and scores, offspring counts, and the search log. The
loop in `evolve.py` asks it to plan a generation, builds jobs from it, hands it the results, and
commits its best path; the baselines absorb their one result the same way."""
from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from mupath.runtime.jobs import (
    OPTIMIZER_REF,
    Budget,
    CacheSpec,
    CandidateJob,
    CandidateResult,
    ScoreRule,
    TensorRef,
)
from mupath.search.ids import id_stream, seed_for
from mupath.search.mutation import ChildPlan, Lineage, committed_infos, make_child, sample_ds_hparams
from mupath.search.probe import probe_scores, rank_paths
from mupath.search.scoring import accounted_params, compute_users, score
from mupath.search.selection import select_parent
from mupath.search.settings import EvolveSettings
from mupath.search.space import SearchSpace, frozen_floor, search_space
from mupath.store.log import TriedCandidate
from mupath.store.records import ROOT_TASK, CandidateComponent, PathRecord
from mupath.store.store import CommitRequest, Store
from mupath.train.evaluate import cores


@dataclasses.dataclass(frozen=True)
class Child:
    """A planned candidate of a generation: its plan, its parent, and the generation's data moves."""

    plan: ChildPlan
    parent: PathRecord
    generation: int
    index: int
    data: dict[str, Any]


@dataclasses.dataclass
class SearchLog:
    """What one task iteration tried (kept in its commit's `info`, shown by `mupath history`)."""

    tried: list[TriedCandidate] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)
    improved: int = 0
    train_images: int = 0
    train_time: float = 0.0
    probe: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """A known-good starting point of a task's first rung: modules of `kind` ("" = none: a new head on
    the parent as it is) before every block from `start` x the depth up, trained at learning rate `lr`."""

    kind: str
    start: float
    lr: float


#: the recipes of a task's first rung, best first. The top half's modules come first: below them the
#: network stays frozen, so a step costs half as much (no backward through the bottom, and a small task's
#: frozen bottom is served by the activation cache), and at a short budget the steps it saves are worth
#: more than the bottom's adaptation (peft-style adapters at equal wall-clock, 55 s on 2 cores: on
#: fashion_mnist 0.903 from block 8 up against 0.887 on every block, on digits 0.994 against 0.989; the
#: probe of issue 32). A short budget runs only the first few. Learning rates: a few parameters on a
#: frozen network want a larger step than the whole network's 1e-3 (peft's LoRA on a task mupath never
#: saw: 0.652 at 3e-3, 0.876 at 1e-2 in the same 102 s); mutations move them. Adapters at 3e-3: the rate
#: the equal-wall-clock benchmark's validation chose for peft-style adapters on 3 of the stream's 4 tasks
#: (5e-3 before; one task from a fresh store, seeds 0 and 1: fashion_mnist at 60 s val 0.876 / 0.870 ->
#: 0.878 / 0.889, font_digits at 90 s val 0.9917 (seed 0) -> 0.9917 / 0.9958)
RECIPES = (Recipe("adapter", 0.5, 3e-3), Recipe("lora", 0.5, 1e-2), Recipe("adapter", 0.0, 3e-3),
           Recipe("lora", 0.0, 1e-2), Recipe("ssf", 0.0, 1e-2), Recipe("", 0.0, 1e-2))

#: the commit's reserve under a time budget (`TaskSearch.reserve_seconds`): the measured forward cost of the
#: test images it and the no-forgetting check run, times this margin, plus a fixed part (the commit's writes).
#: The forward cost is timed as the check runs (`_forward_seconds`): 1.67 ms an image where fashion_mnist's
#: commit then paid 1.68 (a fresh demo store at a 40 s budget, AMD EPYC); the margin covers the timing's
#: noise (about 5%). At 1.25 the demo's tasks ended 7-11% early (fashion_mnist 161 and 164 s of 180)
RESERVE_MARGIN = 1.1
RESERVE_FIXED_S = 1.0


class TaskSearch:
    """One task iteration's search over `store` (see the module docstring)."""

    def __init__(self, store: Store, task: str, iteration: int, settings: EvolveSettings, run_id: str) -> None:
        self.store, self.task, self.iteration, self.settings, self.run_id = store, task, iteration, settings, run_id
        self.rng = random.Random(seed_for(settings.seed, task, iteration))
        new_id = id_stream(random.Random(seed_for(settings.seed, task, iteration, "ids", run_id)))
        self.record = store.task_record(task)
        self.space: SearchSpace = search_space(store, settings)
        self.cache_floor = run_cache_floor(store, settings, self.space)
        self.retained = store.manifest.retained()
        self.users = compute_users(self.retained)
        if task in self.retained:              # start_task: this task's own components are trainable again
            for cid in self.retained[task].components.values():
                self.users[cid].discard(task)
        self.comps: dict[str, CandidateComponent] = committed_infos(store.manifest.components())
        self.sizes = {cid: c.num_params for cid, c in self.comps.items()}
        self.paths: dict[str, PathRecord] = {p.id: p for p in self.retained.values()}
        self.root_id = self.retained[ROOT_TASK].id
        self._relink({p.id for p in self.retained.values()}, list(self.retained.values()))
        root_path = self.retained[ROOT_TASK]
        self.parent_pool = [p for t, p in sorted(self.retained.items()) if t != task]   # + the root
        self.rng.shuffle(self.parent_pool)
        self.log = SearchLog()
        if settings.probes_seeds and len(self.parent_pool) > 1:   # a pool of one (a new store's root) has no order
            self._rank_parent_pool()
        self.population = [self.retained[task]] if task in self.retained else []
        self.scores = {p.id: self.rescore(p) for p in self.population}
        self.offspring: Counter = Counter(store.manifest.offspring())
        self.new_offspring: Counter = Counter()
        self.lineage = Lineage(self.paths, self.comps, lambda cid: not self.users.get(cid), root_path, new_id,
                               store.family, store.root_meta, always_cloned(store, settings, root_path))
        self.scratch = store.scratch_dir(run_id)
        self.planned = 0
        self.scratch_files: dict[str, str] = {}        #: path id -> its candidate's scratch file
        self._forward_s: float | None = None
        #: under a time budget, the task iteration's deadline on `time.perf_counter()` (set by
        #: `evolve.run_rungs`); each job is given it less the commit's reserve as it is then (`job_deadline`)
        self.deadline: float | None = None
        self.ds_hp: dict[str, Any] | None = None      #: a halving iteration's data hyperparameters

    @property
    def candidates(self) -> int:
        """Candidates of this task iteration: trained so far under a time budget, else the fixed count."""
        return len(self.log.tried) if self.settings.halving else self.settings.generations * self.settings.candidates

    def rescore(self, path: PathRecord) -> float:
        return score(path.quality, accounted_params(path.components.values(), self.task, self.users, self.sizes),
                     self.store.root_params, self.settings.scale_factor)

    def _rank_parent_pool(self) -> None:
        """Order the parent pool by how well each path's features separate this task's classes."""
        started = time.perf_counter()
        data = self.store.task_data(self.task)
        relevance = probe_scores(self.parent_pool, self.store.build_model, data["train.x"], data["train.y"],
                                 self.record.num_classes, self.settings.probe_images,
                                 seed=seed_for(self.settings.seed, self.task, "probe"),
                                 default_size=int(self.space.defaults["ds_image_size"]))
        self.parent_pool = rank_paths(self.parent_pool, relevance)
        self.log.probe = {"probe_top": [[p.task, round(relevance[p.id], 4)] for p in self.parent_pool[:5]],
                          "probe_time": time.perf_counter() - started}

    # ---- a generation -----------------------------------------------------------------------
    def plan_generation(self, generation: int) -> list[Child]:
        """The generation's children: shared data hyperparameters drawn from the current best, then
        per child a parent (µ2Net PPDecay) and its mutations."""
        best = self.best()
        ds_hp = sample_ds_hparams(best.hparams if best else None, self.space, self.rng)
        children = []
        for i in range(self.settings.candidates):
            parent = select_parent(self.population, self.scores, self.parent_pool, self.offspring, self.task, self.rng)
            self.offspring[(parent.id, self.task)] += 1
            self.new_offspring[(parent.id, self.task)] += 1
            unmutated = self.settings.head_first and self.task not in self.retained and generation == 0 and i == 0
            plan = make_child(parent, self.task, self.record.num_classes, ds_hp, self.space, self.lineage,
                              rng=self.rng, mutate_adapters=self.settings.mutate_adapters, mutate=not unmutated)
            children.append(Child(plan, parent, generation, i, data_moves(parent.hparams, ds_hp, self.space.defaults)))
        return children

    # ---- successive halving (a time budget) -----------------------------------------------------
    def recipes(self) -> list[Child]:
        """The family's known-good starting points (RECIPES, in order), children of the best-ranked other
        path (the probe's first, `seed_order`): adapters and low-rank deltas before the top
        half's blocks, then before every block, a new head on the parent as it is, scale-and-shift before
        every block; each at its own learning rate and without augmentation (the space's default data
        hyperparameters, so the activation cache can serve it). Only for a task's first visit (a revisit
        starts from its own path) and only kinds whose insertion a setting has not switched off. A recipe
        adds its modules where the parent has none of its kind and shares the parent's frozen ones; where
        the parent already has its kind on every one of the recipe's blocks, the child trains a copy of
        them instead (the µ2Net clone, starting from what the other task learned), ranked after the top
        half's recipes that add new modules and before the every-block ones. Before, such a recipe was
        skipped, and on a path with the top half's adapters and deltas the first recipe left was the
        bottom half's, whose steps cost three times as much: digits on mnist's path trained 100 + 103
        steps of it in 100 s. New modules beside the frozen ones come first: a copy wins the first rung on
        its head start (mnist re-evolved on fashion_mnist's path, 4 runs: 0.979 copy first, 0.981 new first)."""
        if self.task in self.retained or not self.parent_pool:
            return []
        parent = self.parent_pool[0]
        data = {k: v for k, v in self.space.defaults.items() if k.startswith("ds_")}
        plans, seen = [], set()
        for index, recipe in enumerate(RECIPES):
            first = math.floor(recipe.start * self.store.depth)
            blocks = [i for i in self._allowed(recipe.kind) if i >= first] if recipe.kind else []
            if (blocks or not recipe.kind) and (recipe.kind, tuple(blocks)) not in seen:
                seen.add((recipe.kind, tuple(blocks)))
                copy = bool(blocks) and set(parent.hparams.get(f"{recipe.kind}_layers", [])).issuperset(blocks)
                plans.append(((recipe.start == 0, copy, index), recipe, blocks, copy))
        return [self._child(parent, 0, mutate=False, insert={recipe.kind: blocks} if recipe.kind else {}, data=data,
                            set_hparams={"opt_lr": recipe.lr},
                            clone=[f"{recipe.kind}_{i}" for i in blocks] if copy else ())
                for _, recipe, blocks, copy in sorted(plans, key=lambda p: p[0])]

    def _allowed(self, kind: str) -> list[int]:
        """The blocks a recipe may put `kind` before: all but those whose insertion the user pinned to 0
        (`_mu_|add:<kind>_<i>=0`, or `_mu_|add:<kind>=0` for every block: a frozen bottom stays frozen);
        none for adapters when adapter mutations are off."""
        if kind == "adapter" and not self.settings.mutate_adapters:
            return []
        pinned = self.settings.hparams
        if pinned.get(f"_mu_|add:{kind}", 1.0) == 0:
            return []
        return [i for i in range(self.store.depth) if pinned.get(f"_mu_|add:{kind}_{i}", 1.0) != 0
                and pinned.get(f"_mu_|clone:block_{i}", 1.0) != 0]

    def mutated(self, count: int, rung: int) -> list[Child]:
        """`count` mutated children, parents drawn as in a generation (µ2Net PPDecay)."""
        out = []
        for _ in range(count):
            parent = select_parent(self.population, self.scores, self.parent_pool, self.offspring, self.task, self.rng)
            self.offspring[(parent.id, self.task)] += 1
            self.new_offspring[(parent.id, self.task)] += 1
            out.append(self._child(parent, rung))
        return out

    def continuations(self, survivors: list[PathRecord], rung: int) -> list[Child]:
        """Each survivor trained further from its own weights: its unmutated child (the µ2Net
        inheritance), kept only if it beats the survivor's score."""
        return [self._child(p, rung, mutate=False) for p in survivors]

    def ranked(self, paths: list[PathRecord]) -> list[PathRecord]:
        """`paths` best score first (ties: the later one, as `best`)."""
        order = {p.id: i for i, p in enumerate(paths)}
        return sorted(paths, key=lambda p: (-self.scores[p.id], -order[p.id]))

    def _child(self, parent: PathRecord, rung: int, *, mutate: bool = True,
               insert: dict[str, list[int]] | None = None, data: dict[str, Any] | None = None,
               set_hparams: dict[str, Any] | None = None, clone: Sequence[str] = ()) -> Child:
        """A child of `parent`; `data`: its data hyperparameters (default: the task's sampled ones for
        another task's parent, the parent's own for this task's), `set_hparams`: values set on it,
        `clone`: slots it trains a copy of (`make_child`)."""
        if self.ds_hp is None:
            best = self.best()
            self.ds_hp = sample_ds_hparams(best.hparams if best else None, self.space, self.rng)
        if data is not None:
            ds_hp = data
        elif parent.task != self.task:
            ds_hp = self.ds_hp
        else:
            ds_hp = {k: v for k, v in parent.hparams.items() if k.startswith("ds_")}
        plan = self._within_cap(lambda: make_child(
            parent, self.task, self.record.num_classes, ds_hp, self.space, self.lineage, rng=self.rng,
            mutate_adapters=self.settings.mutate_adapters, mutate=mutate, insert=insert, set_hparams=set_hparams,
            clone=clone))
        self.planned += 1
        return Child(plan, parent, rung, self.planned - 1, data_moves(parent.hparams, ds_hp, self.space.defaults))

    def _within_cap(self, draw: Any) -> ChildPlan:
        """A child under `max_params` (redrawn up to 20 times; the last draw when none fits: it is then
        refused after training, `absorb`)."""
        plan = draw()
        for _ in range(20):
            if self.fits(plan):
                break
            plan = draw()
        return plan

    def fits(self, plan: ChildPlan) -> bool:
        """Is the child's accounted size beyond the root's share under the hard cap (always, without one)?"""
        if self.settings.max_params is None:
            return True
        return self.planned_params(plan) - self.root_share(plan) <= self.settings.max_params * self.store.root_params

    def root_share(self, plan: ChildPlan) -> float:
        """The accounted parameters of the root's components on the child's path (|c| / its users): what
        the cap leaves out, since every task shares them (the first task would otherwise pay the whole
        root, over any cap below 1)."""
        roots = [s.id for s in plan.slots if not s.trainable and s.id.startswith("root-")]
        return accounted_params(roots, self.task, self.users, self.sizes)

    def planned_params(self, plan: ChildPlan) -> float:
        """The child's accounted parameters before it trains: shared parts split among their users, its
        own parts counted whole (a copy has its source's size, a fresh part its module's)."""
        frozen = [s.id for s in plan.slots if not s.trainable]
        owned = sum(self.sizes[s.init.source] if s.init is not None and s.init.source in self.sizes
                    else fresh_size(s.kind, s.config, self.store) for s in plan.slots if s.trainable)
        return accounted_params(frozen, self.task, self.users, self.sizes) + owned

    def job_deadline(self) -> float | None:
        """`time.time()` after which a job starts no training step: the deadline less the commit's reserve
        as it stands now. The reserve grows once a best path says which tasks the check re-runs, so it is
        read per job: fixed at the start (this task's own test images only), it let a last survivor train
        into the check's time (mnist at 60 s: 60.5 s)."""
        if self.deadline is None:
            return None
        return time.time() + (self.deadline - time.perf_counter()) - self.reserve_seconds()

    def reserve_seconds(self) -> float:
        """Seconds to keep for the commit and the no-forgetting check: this task's test images and those
        of the tasks the check re-runs (every other committed task, or with a shared check those sharing
        a component with the best path so far), at the root's measured forward cost per image on every
        core (a path costs about what the root does), with a margin."""
        if self._forward_s is None:      # measured once per task iteration
            self._forward_s = _forward_seconds(self.store, int(self.space.defaults["ds_image_size"]))
        best = self.best()
        if best is not None:
            checked = self.checked_tasks(best)
        else:                            # nothing trained yet: a shared check has nothing to share
            checked = set() if self.settings.shared_check else self._others()
        records = [self.store.task_record(t) for t in checked] if self.settings.check_immutability else []
        images = self.record.sizes.get("test", 0) + sum(r.sizes.get("test", 0) for r in records)
        return RESERVE_MARGIN * self._forward_s * images + RESERVE_FIXED_S

    def _others(self) -> set[str]:
        return {t for t in self.retained if t not in (ROOT_TASK, self.task)}

    def checked_tasks(self, best: PathRecord, retained: dict[str, PathRecord] | None = None) -> set[str]:
        """The tasks the no-forgetting check re-runs after committing `best`: every other task, or
        with a shared check (`EvolveSettings.shared_check`) those whose path uses a component the
        commit adds or drops; `retained`: the tasks' paths to look in (default: as this iteration
        started; the commit's check passes the manifest's after it)."""
        if not self.settings.shared_check:
            return self._others()
        return sharing_tasks(self.retained if retained is None else retained, self.touched(best), self.task)

    def job(self, child: Child, steps: int | None = None, validations: int | None = None,
            seconds: float | None = None) -> CandidateJob:
        """The child's job. Its seed (batch order and augmentation draws) is the generation's, shared by
        all siblings as in the reference: they are compared on the same batches. `seconds`: train for
        that long, at most `steps` (`Budget.seconds`)."""
        seed = seed_for(self.settings.seed, self.task, self.iteration, child.generation)
        settings = self.settings
        if steps is not None:             # a rung's own length (successive halving)
            settings = dataclasses.replace(settings, steps_per_validation=max(1, steps // (validations or 1)),
                                           validations=validations or 1)
        job = candidate_job(self.store, child.plan, self.record.data_blob, settings, self, seed,
                            cache_floor=self.cache_floor)
        if not self.settings.halving:
            return job
        budget = dataclasses.replace(job.budget, keep_optimizer=True, deadline=self.job_deadline(), seconds=seconds)
        parent = child.parent
        if child.generation > 0 and parent.task == self.task and parent.id in self.scratch_files:
            refs = {**job.refs, OPTIMIZER_REF: TensorRef(scratch=self.scratch_files[parent.id], id=OPTIMIZER_REF)}
            return job.replace(budget=budget, refs=refs)          # a continuation: the survivor's moments
        return job.replace(budget=budget)

    def absorb(self, child: Child, res: CandidateResult) -> None:
        """Log a candidate's result; one that beat its bar joins the population with its score, unless it
        is over the hard parameter cap (then it is logged as a failure saying so)."""
        cap = self.settings.max_params
        added = res.accounted_params - self.root_share(child.plan)
        if res.improved and cap is not None and added > cap * self.store.root_params:
            res = res.replace(improved=False, failure=f"{added:.0f} accounted parameters beyond the root's share, "
                              f"over the cap of {cap:g} x the root's")
        self.log.tried.append(tried_entry(child.plan, res, child.generation, child.data))
        self.log.train_images += int(res.images)
        self.log.train_time += float(res.train_time)
        if res.failure:
            self.log.failures.append(f"{child.plan.path.id}: {res.failure}")
        if not res.improved:
            return
        self.log.improved += 1
        if res.scratch_file:
            self.scratch_files[child.plan.path.id] = res.scratch_file
        path = admit(self, child.plan, res)
        path.metrics.update({"generation": child.generation, "iteration": self.iteration, "run_id": self.run_id})
        self.population.append(path)
        self.scores[path.id] = float(res.score)     # type: ignore[arg-type]

    def adopt_new_parents(self) -> None:
        """Paths other processes committed since this task iteration started become parents from the
        next generation on (µ3Net agents see each other's published paths). Their components join the
        lookup tables as frozen (used by their task)."""
        fresh = self.store.manifest.retained()
        new = [p for t, p in sorted(fresh.items()) if t != self.task and p.id not in self.paths]
        if not new:
            return
        stored = self.store.manifest.components()
        for path in new:
            for cid in path.components.values():
                c = stored[cid]
                self.comps.setdefault(cid, CandidateComponent.committed(c))
                self.sizes.setdefault(cid, c.num_params)
                self.users.setdefault(cid, set()).add(path.task)
            self.paths[path.id] = path
            self.parent_pool.append(path)
        self._relink({p.id for p in fresh.values()}, new)

    # ---- the outcome ------------------------------------------------------------------------
    def best(self) -> PathRecord | None:
        """Highest score; among ties the most recent (µ2Net)."""
        best = None
        for p in self.population:
            if best is None or self.scores[p.id] >= self.scores[best.id]:
                best = p
        return best

    def _relink(self, live: set[str], paths: list[PathRecord]) -> None:
        """Point each of `paths` at its nearest live ancestor (µ2Net's garbage collection simplifies the
        ancestor tree the same way): a child's components are looked for along a chain of paths whose
        components still exist, instead of falling back to the root past a dead ancestor."""
        for path in paths:
            if path.parent_id is not None:
                path.parent_id = self._nearest_live(path.parent_id, live)

    def _nearest_live(self, path_id: str | None, live: set[str]) -> str:
        seen: set[str] = set()
        while path_id is not None and path_id not in live and path_id not in seen:
            seen.add(path_id)
            known = self.paths.get(path_id) or self.store.manifest.get_path(path_id)
            path_id = known.parent_id if known is not None else None
        return path_id if path_id is not None and path_id in live else self.root_id

    def changed(self, best: PathRecord) -> bool:
        return self.task not in self.retained or best.id != self.retained[self.task].id

    def commit_request(self, best: PathRecord, wall_time: float) -> CommitRequest:
        """The commit of `best`. A new best path is first re-linked to its nearest ancestor that stays live
        after the commit (another task's retained path or the root): its own parent may be a candidate of
        this iteration, which is never committed, or this task's old path, which the commit replaces."""
        if self.changed(best):
            live = {p.id for t, p in self.retained.items() if t != self.task}
            self._relink(live, [best])
        tried = [dataclasses.replace(t, retained=t.path == best.id).to_json() for t in self.log.tried]
        info = {"score": self.scores[best.id], "candidates": self.candidates, "improved": self.log.improved,
                "failures": self.log.failures[:20], "tried": tried, "train_images": self.log.train_images,
                "train_time": self.log.train_time, "wall_time": wall_time, **self.log.probe}
        return CommitRequest(self.task, best, self.comps, dict(self.new_offspring), self.run_id, self.iteration,
                             self.changed(best), info)

    def touched(self, best: PathRecord) -> set[str]:
        """Components the commit of `best` adds or drops (whose other users the shared check re-runs)."""
        out = set(best.components.values())
        if self.task in self.retained:
            out |= set(self.retained[self.task].components.values())
        return out


# ---- pieces shared with the baselines --------------------------------------------------------
def admit(tables: TaskSearch | LookupTables, plan: ChildPlan, res: CandidateResult) -> PathRecord:
    """A trained candidate's path with its measurements, and its owned components in the lookup
    tables (their tensors are in its scratch file): shared by the search and the baselines."""
    path = plan.path
    path.quality = float(res.val_accuracy)     # type: ignore[arg-type]
    path.metrics.update({"evals": list(res.evals), "steps": res.steps, "images": res.images,
                         "train_time": res.train_time, "eval_time": res.eval_time,
                         "owned_params": res.owned_params, "accounted_params": res.accounted_params,
                         "cached_prefix": res.cached_prefix, "wall_time": res.wall_time})
    for s in plan.slots:
        if s.trainable:
            tables.comps[s.id] = CandidateComponent(s.id, s.kind, s.slot, s.config,
                                                    int(res.component_params[s.id]), scratch=res.scratch_file)
            tables.sizes[s.id] = tables.comps[s.id].num_params
    tables.paths[path.id] = path
    return path


def data_moves(parent_hp: dict[str, Any], ds_hp: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    """{key: [parent's value, child's value]} of the data hyperparameters (image size, augmentation) a
    child's generation changed from its parent's: they are drawn once per generation, not by the
    child's own mutations, so the child's `mutations` never show them."""
    base = {**defaults, **parent_hp}
    return {k: [base.get(k), v] for k, v in sorted(ds_hp.items()) if base.get(k) != v}


def tried_entry(plan: ChildPlan, res: CandidateResult, generation: int,
                data: dict[str, Any] | None = None) -> TriedCandidate:
    """One candidate of a task's search, as the commit keeps it (info["tried"], shown by `mupath
    history`): why a task ended with its path is otherwise invisible, since only the retained path is
    stored. `data`: its generation's data-hyperparameter moves (`data_moves`). `quality` is set only
    for a candidate that beat its bar and joined the population; `best_val` is its best validation
    accuracy either way (how close a losing candidate came). JSON has no infinity, so neither is ever
    -inf: a candidate with no finite validation has None."""
    quality = res.val_accuracy
    finite = [float(v) for v in res.evals or [] if v is not None and math.isfinite(float(v))]
    entered = bool(res.improved)
    return TriedCandidate(
        path=plan.path.id, generation=generation, parent_task=plan.path.metrics.get("parent_task"),
        mutations=plan.mutations, data=data or {},
        quality=float(quality) if entered and quality is not None and math.isfinite(float(quality)) else None,
        best_val=max(finite) if finite else None,
        score=float(res.score) if entered and res.score is not None else None,
        owned_params=int(res.owned_params), accounted_params=float(res.accounted_params),
        entered=entered, failure=res.failure, device=res.device, steps=int(res.steps), parent=plan.path.parent_id)


def always_cloned(store: Store, settings: EvolveSettings, root_path: PathRecord) -> frozenset[str]:
    """Root components no child shares frozen (`clone_root`): random weights are no knowledge to
    reuse, so sharing them only costs accuracy; µ2Net's random-init roots likewise grow trained layers."""
    mode = settings.clone_root
    if mode == "always" or (mode == "auto" and store.root_spec.weights == "random"):
        return frozenset(root_path.components.values())
    return frozenset()


def run_cache_floor(store: Store, settings: EvolveSettings, space: SearchSpace) -> int:
    """Leading blocks no candidate of this run can own: the activation cache's checkpoint depth.
    (`clone_root` never overrides a clone probability of 0, so the floor holds under it too.)"""
    return frozen_floor(space, store.family.embed_slots, store.depth, settings.mutate_adapters)


def candidate_job(store: Store, plan: ChildPlan, data_blob: str, settings: EvolveSettings,
                  tables: TaskSearch | LookupTables, seed: int, *, cache_floor: int = 0) -> CandidateJob:
    """The job of one candidate (`cache_floor`: see `run_cache_floor`); `tables` gives the component
    lookups, users, sizes, scores and paths the job's references and score rule come from."""
    task = plan.path.task
    frozen = [s.id for s in plan.slots if not s.trainable]
    refs: dict[str, TensorRef] = {}
    for s in plan.slots:
        src = s.source
        if src:
            c = tables.comps[src]
            refs[src] = TensorRef(blob=c.blob) if c.blob else TensorRef(scratch=c.scratch, id=src)
    parent = tables.paths.get(plan.path.parent_id or "")
    bar = tables.scores.get(parent.id) if parent is not None and parent.task == task else None
    return CandidateJob(
        store=str(store.folder), root=store.root_spec.to_json(), task_blob=data_blob, path_id=plan.path.id,
        hparams=plan.path.hparams, refs=refs, slots=tuple(plan.slots),
        budget=Budget(settings.steps_per_validation, settings.validations, settings.batch_size, settings.val_limit),
        score=ScoreRule(accounted_params(frozen, task, tables.users, tables.sizes), store.root_params,
                        settings.scale_factor, bar),
        cache=CacheSpec(settings.cache_mb, cache_floor), seed=seed, device=settings.device,
        scratch_file=str(tables.scratch / f"{plan.path.id}.safetensors"))


#: images a batch in `_forward_seconds`'s warm-up (first-call allocations and thread start-up)
WARMUP_IMAGES = 32


def _forward_seconds(store: Store, image_size: int) -> float:
    """Wall seconds per image of the root's features run the way the commit's test logits and the
    check's re-runs are: batches of EVAL_BATCH, `cores()` of them at once, each on CHECK_THREADS threads
    (`logits_of`), timed once after a short warm-up (WARMUP_IMAGES a batch: without one the first
    timing read 15% high; one at full size costs another second of the task's budget). A timing of 64
    images on one thread, divided by the cores, read 1.06 ms an image where the check paid 1.57 (AMD
    EPYC, 2 cores: a larger batch costs more per image, and two at once share the memory bus), so the
    reserve fell short and the demo's digits ended 8-12% past its 100 s."""
    import torch

    from mupath.store.store import CHECK_THREADS
    from mupath.train.evaluate import EVAL_BATCH, fixed_threads, map_batches
    model = store.build_model(store.manifest.retained()[ROOT_TASK])
    x = torch.zeros(EVAL_BATCH, 3, image_size, image_size)

    def one(images: int) -> None:
        with torch.inference_mode():
            model.features(x[:images])

    with fixed_threads(CHECK_THREADS):
        list(map_batches(one, [WARMUP_IMAGES] * cores(), cores()))
        t0 = time.perf_counter()
        list(map_batches(one, [EVAL_BATCH] * cores(), cores()))
    return (time.perf_counter() - t0) / (EVAL_BATCH * cores())


def fresh_size(kind: str, config: dict[str, Any], store: Store) -> int:
    """Parameters of a component a mutation creates (a head, an adapter, a delta): its module's."""
    from mupath.model.components import ComponentSpec, build_component
    key = (kind, json.dumps(config, sort_keys=True))
    if key not in _FRESH_SIZES:
        module = build_component(ComponentSpec(kind, config), store.root_spec)
        _FRESH_SIZES[key] = sum(p.numel() for p in module.parameters())
    return _FRESH_SIZES[key]


_FRESH_SIZES: dict[tuple[str, str], int] = {}


@dataclasses.dataclass
class LookupTables:
    """The tables `candidate_job` reads, for a caller without a TaskSearch (the baselines)."""

    comps: dict[str, CandidateComponent]
    users: dict[str, set[str]]
    sizes: dict[str, int]
    paths: dict[str, PathRecord]
    scores: dict[str, float]
    scratch: Any


def sharing_tasks(retained: dict[str, PathRecord], components: set[str], task: str) -> set[str]:
    """Tasks other than `task` whose retained path uses one of `components` (root components left
    out: they are never written or dropped)."""
    own = {c for c in components if not c.startswith("root-")}
    return {t for t, p in retained.items()
            if t not in (task, ROOT_TASK) and own & set(p.components.values())}
