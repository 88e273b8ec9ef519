"""The evolution loop (µ2Net `task_iter` / `end_task`): for each task iteration, round-robin over
the tasks; per task, generations of mutated children are trained on an executor, improved ones join
the task's population, and only the best path is committed, its components locked. After every
commit every other task is re-run and must give bit-identical logits."""
from __future__ import annotations

import dataclasses
import math
import shutil
import time
from typing import Any, Protocol

from mupath.errors import MupathError
from mupath.runtime.executors import Executor, make_executor
from mupath.runtime.jobs import CandidateJob, CandidateResult
from mupath.search.halving import (
    FIRST_WAVE_SHARE,
    SLACK,
    candidate_overhead,
    first_rung_size,
    least_overhead,
    next_rung,
    per_step_seconds,
    ranks_by_steps,
    survivor_cap,
)
from mupath.search.settings import EvolveSettings
from mupath.search.space import search_space
from mupath.search.task_search import Child, TaskSearch
from mupath.search.tracking import CandidateEvent, CommitEvent, Tracker
from mupath.store.store import Store
from mupath.track import TrackerFactory, check_log_root, open_tracker


class Progress(Protocol):
    """What the loop reports while it works (the CLI draws rich progress bars from it)."""

    def task_started(self, task: str, iteration: int, candidates: int) -> None: ...
    def candidate_step(self, index: int, step: int, total: int) -> None: ...
    def candidate_done(self, result: CandidateResult) -> None: ...
    def task_done(self, entry: TaskReport) -> None: ...


@dataclasses.dataclass
class TaskReport:
    task: str
    iteration: int
    path_id: str
    changed: bool
    val_accuracy: float
    test_accuracy: float
    score: float
    candidates: int
    improved: int
    failures: list[str]
    train_images: int
    train_time: float
    wall_time: float
    parent_task: str | None
    accounted_params: float = 0.0          #: of the retained path, when it trained in this run
    mutations: dict[str, Any] = dataclasses.field(default_factory=dict)   #: the retained path's, from its parent


@dataclasses.dataclass
class EvolveReport:
    run_id: str
    resumed: bool
    tasks: list[TaskReport]
    wall_time: float


def evolve(store: Store, tasks: list[str], settings: EvolveSettings,
           progress: Progress | None = None, tracker: Tracker | TrackerFactory | None = None) -> EvolveReport:
    """Run (or resume) an evolution over `tasks`; see the module docstring. `tracker` (or what a
    `TrackerFactory` makes of the started run) hears of every candidate and commit; default: the
    settings' one, TensorBoard logs unless `log=False` (`mupath.track`)."""
    started = time.perf_counter()
    key = settings.resume_key(tasks)
    search_space(store, settings)      # bad hyperparameters, an unwritable log folder and an unreachable
    if tracker is None:                # cluster fail here, before a run row is written
        check_log_root(store.folder, settings)
    executor = make_executor(settings.executor, settings.workers, settings.threads_per_worker,
                             settings.ray_address, settings.ray_ship_blobs, settings.device)
    try:
        run_id, resumed = store.start_run(key)
        done = {(c.iteration, c.task) for c in store.manifest.commit_records(run_id)}
        sink = open_tracker(tracker, store, settings, run_id)
    except BaseException:
        executor.shutdown()
        raise
    reports: list[TaskReport] = []
    try:
        for iteration in range(settings.iterations):
            for task in tasks:
                if (iteration, task) in done:
                    continue
                reports.append(_evolve_task(store, task, iteration, settings, executor, run_id,
                                            progress=progress, tracker=sink))
                sink.committed(commit_event(store, reports[-1], len(reports)))
        store.finish_run(run_id)
    except BaseException:
        executor.shutdown()            # candidates may still be in flight: stop the workers
        raise
    else:
        executor.close()               # a persistent pool stays up for the next call
    finally:
        sink.close()
        shutil.rmtree(store.scratch_dir(run_id), ignore_errors=True)
    return EvolveReport(run_id, resumed, reports, time.perf_counter() - started)


def _evolve_task(store: Store, task: str, iteration: int, settings: EvolveSettings, executor: Executor,
                 run_id: str, *, progress: Progress | None, tracker: Tracker) -> TaskReport:
    """One task iteration: generations of candidates, then the best path committed and checked."""
    started = time.perf_counter()
    search = TaskSearch(store, task, iteration, settings, run_id)
    run = CandidateRunner(search, executor, progress, tracker)
    if settings.halving:
        run_rungs(search, run, started)
    else:
        if progress:
            progress.task_started(task, iteration, search.candidates)
        for generation in range(settings.generations):
            if generation:
                search.adopt_new_parents()
            run(search.plan_generation(generation))
    best = search.best()
    if best is None:
        failures = search.log.failures
        if failures and all("over the cap" in f for f in failures):
            raise MupathError(f"no candidate for task '{task}' fits under max_params={settings.max_params} "
                              f"({failures[0].split(': ', 1)[1]}); raise --max-params")
        raise MupathError(f"no candidate for task '{task}' trained successfully "
                          f"({failures[0] if failures else 'no candidates'}); lower the learning rate "
                          "or check the task's data")
    parent_task = search.paths[best.parent_id].task if best.parent_id in search.paths else None
    test_acc = store.commit(search.commit_request(best, time.perf_counter() - started))
    if settings.check_immutability:
        scope = search.checked_tasks(best, store.manifest.retained()) if settings.shared_check else None
        store.check_immutability(exclude=task, tasks=scope)
    log = search.log
    entry = TaskReport(task, iteration, best.id, search.changed(best), best.quality, test_acc, search.scores[best.id],
                       search.candidates, log.improved, log.failures, log.train_images, log.train_time,
                       time.perf_counter() - started, parent_task,
                       float(best.metrics.get("accounted_params") or 0.0), dict(best.metrics.get("mutations") or {}))
    if progress:
        progress.task_done(entry)
    return entry


@dataclasses.dataclass
class CandidateRunner:
    """Trains planned children on the executor and hands each result to the search, the progress
    display and the tracker: what a generation and a rung do alike."""

    search: TaskSearch
    executor: Executor
    progress: Progress | None
    tracker: Tracker

    def __call__(self, children: list[Child], steps: int | None = None, validations: int | None = None,
                 seconds: float | None = None) -> list[CandidateResult]:
        search, progress = self.search, self.progress
        jobs = pin_blobs(search.store, search.run_id, [search.job(c, steps, validations, seconds) for c in children])
        on_step = (lambda i, s, t: progress.candidate_step(i, s, t)) if progress else None
        on_done = (lambda i, r: progress.candidate_done(r)) if progress else None
        results = list(self.executor.run(jobs, on_done=on_done, on_step=on_step))
        for child, res in zip(children, results):
            search.absorb(child, res)
            self.tracker.candidate(CandidateEvent(search.task, search.iteration, child.generation, child.index,
                                                  child.plan.path.id, child.parent.task, child.plan.mutations, res))
        return results


@dataclasses.dataclass(frozen=True)
class RungZero:
    """What rung 0 trained and measured: its entrants' results, `r0` (each candidate's seconds of
    training), the median seconds per training step and the median fixed cost of a candidate."""

    entrants: list[CandidateResult]
    r0: float
    step_seconds: float
    overhead: float


def run_rungs(search: TaskSearch, run: CandidateRunner, started: float) -> None:
    """Successive halving within `settings.time_budget` (see `mupath.search.halving`): rung 0 (`_rung_zero`),
    then rungs of the best 1/eta trained eta times longer from their own weights, the last for all the
    time that is left. A candidate of rung k trains at most s0 * eta^(k+1) steps (the last survivor at
    most `survivor_cap`'s), so one whose steps are cheap ends early and leaves its
    time to the rest."""
    settings = search.settings
    workers, eta = max(1, settings.workers), settings.halving_rate
    s0 = settings.steps_per_validation
    deadline = started + float(settings.time_budget or 0) * (1 - SLACK)
    # no candidate trains past the deadline less the commit's reserve, whatever its steps cost (a
    # candidate's cost is known only once one like it has run)
    search.deadline = deadline
    zero = _rung_zero(search, run, started, deadline)
    rates = {p.id: float(p.metrics.get("train_time") or 0) / max(1, int(p.metrics.get("steps") or 1))
             for p in search.population}              #: each trained path's own seconds per training step
    rung_paths = search.ranked([p for p in search.population if p.metrics.get("generation") == 0])
    for k in range(1, 64):
        keep = math.ceil(len(rung_paths) / eta) if len(rung_paths) > 1 else len(rung_paths)
        left = deadline - time.perf_counter() - search.reserve_seconds()
        rung = next_rung(k, keep, zero.r0, eta, seconds_left=left, workers=workers, overhead=zero.overhead)
        if rung is None or not rung_paths:
            break
        if rung.candidates == 1:      # the last survivor reads the cache its ancestor filled: the least fixed cost
            last = left - least_overhead(zero.entrants)
            rung = dataclasses.replace(rung, train_seconds=max(rung.train_seconds, last))
        survivors = rung_paths[:rung.candidates]
        _rung_started(run.progress, search, k, len(survivors), rung.train_seconds, deadline)
        children = search.continuations(survivors, k)
        cap = s0 * eta ** (k + 1)
        if rung.candidates == 1:      # the last: eta runs' steps, or more passes over a large task's images
            cap = max(cap, survivor_cap(eta * s0 * settings.validations, search.record.sizes.get("train", 0),
                                        settings.batch_size))
        rate = max([rates.get(p.id, 0.0) for p in survivors] + [0.0]) or zero.step_seconds
        expected = min(cap, max(1, int(rung.train_seconds / rate))) if rate > 0 else cap
        results = run(children, cap, min(settings.validations, expected), rung.train_seconds)
        for c, r in zip(children, results):
            rates[c.plan.path.id] = r.train_time / max(1, r.steps)
        rung_paths = search.ranked([search.paths[c.plan.path.id] if r.improved and c.plan.path.id in search.paths
                                    else c.parent for c, r in zip(children, results)])
        if len(survivors) == 1:
            break


def _rung_zero(search: TaskSearch, run: CandidateRunner, started: float, deadline: float) -> RungZero:
    """Rung 0: a first wave (the recipes, else mutated children, one per worker at least; a recipe is
    skipped once the costliest candidate so far would not fit), the first of them s0 steps long and the
    rest as many seconds as those took (at most eta times the steps), or s0 steps each where the budget
    affords many passes over the task's images (`halving.ranks_by_steps`), then mutated children up to the
    size n0 the measured costs afford, as many seconds as the first took."""
    settings = search.settings
    workers, eta = max(1, settings.workers), settings.halving_rate
    s0 = settings.steps_per_validation      # the first candidates' steps; the rest of rung 0 trains as long
    budget = float(settings.time_budget or 0)
    first = search.recipes()
    first += search.mutated(max(0, workers - len(first)), 0)
    _rung_started(run.progress, search, 0, len(first), None, deadline, first=True)
    results: list[CandidateResult] = []
    r0: float | None = None           #: rung 0's seconds of training per candidate
    by_steps = False                  #: the first wave ranked at equal steps (`halving.ranks_by_steps`)
    for i in range(0, len(first), workers):       # a short budget runs the first recipes only
        now = time.perf_counter()
        if results and (now - started > FIRST_WAVE_SHARE * budget
                        or now + max(r.wall_time for r in results) > deadline - search.reserve_seconds()
                        or _rung_zero_size(search, results, r0 or 0.0, deadline, eta) <= len(results)):
            break
        if by_steps or not r0:
            results += run(first[i:i + workers], s0, 1, None)
        else:
            results += run(first[i:i + workers], s0 * eta, 1, r0)
        if not r0:
            r0 = max([r.train_time for r in results if r.steps > 0] + [0.0]) or None
            by_steps = r0 is not None and ranks_by_steps(budget, per_step_seconds(results),
                                                         search.record.sizes.get("train", 0), settings.batch_size)
    step_s, overhead = per_step_seconds(results), candidate_overhead(results)
    r0 = r0 or step_s * s0
    n0 = _rung_zero_size(search, results, r0, deadline, eta)
    entrants = list(results)
    _rung_started(run.progress, search, 0, max(n0, len(results)), r0, deadline)
    while len(entrants) < n0 and time.perf_counter() + overhead + r0 < deadline - search.reserve_seconds():
        entrants += run(search.mutated(min(workers, n0 - len(entrants)), 0), s0 * eta, 1, r0)
    return RungZero(entrants, r0, step_s, overhead)


def _rung_zero_size(search: TaskSearch, results: list[CandidateResult], r0: float, deadline: float, eta: int) -> int:
    """Rung 0's size n0 from the costs measured so far (`halving.first_rung_size`): the candidates already
    trained count as spent from the time there was. The first wave stops once it has n0 candidates: a
    budget that affords no halving schedule beyond them trains the best of them for the time that is left."""
    workers = max(1, search.settings.workers)
    left = deadline - time.perf_counter() - search.reserve_seconds()
    return first_rung_size(left + sum(r.wall_time for r in results) / workers,
                           candidate_overhead(results) + r0, eta, workers)


def _rung_started(progress: Progress | None, search: TaskSearch, rung: int, candidates: int,
                  train_seconds: float | None, deadline: float, *, first: bool = False) -> None:
    """Tell a progress display that knows rungs (`rung_started`) which one starts (`train_seconds`: each
    candidate's training, None while not yet measured); every display hears the task start once (`first`),
    with the first wave's size."""
    if progress is None:
        return
    left = max(0.0, deadline - time.perf_counter())
    if first:
        progress.task_started(search.task, search.iteration, candidates)
    if hasattr(progress, "rung_started"):
        progress.rung_started(rung, candidates, train_seconds, left)


def commit_event(store: Store, entry: TaskReport, step: int) -> CommitEvent:
    """What a tracker hears of a commit: the report and the system's size after it."""
    snap = store.snapshot()
    return CommitEvent(entry.task, entry.iteration, step, entry.path_id, entry.changed, entry.score,
                       entry.val_accuracy, entry.test_accuracy, entry.accounted_params, entry.mutations,
                       entry.candidates, entry.improved, sum(c.num_params for c in snap.components.values()),
                       len(snap.retained) - 1, entry.wall_time)


def pin_blobs(store: Store, run_id: str, jobs: list[CandidateJob]) -> list[CandidateJob]:
    """Concurrent agents: another process's commit may drop a component that this run's candidates
    borrow (its task replaced the path using it) and delete its blob. Before the jobs run, every
    non-root blob they read is pinned (`Store.pin_blob`) and the pin is named in the job's ref, so the
    workers can still read it and the commit can revive the component."""
    out = []
    for job in jobs:
        refs = dict(job.refs)
        for cid, ref in job.refs.items():
            if not ref.blob or cid.startswith("root-"):      # the root is never dropped
                continue
            pin = store.pin_blob(run_id, ref.blob)
            if pin is not None:
                refs[cid] = dataclasses.replace(ref, pin=pin)
        out.append(job.replace(refs=refs))
    return out
