"""Cross-task dynamic batching on one worker thread (inference never runs on the event loop).

Requests queue as `Job`s. The worker takes the first, waits up to `max_wait_ms` for more (up to
`max_batch` images), takes the current `Version` once for the whole batch, and runs every image of
every job through the prefix trie (`routed_forward`): a component shared by several tasks runs once
for all the images of all the requests that need it. Images are cut into slices of at most
`EVAL_BATCH` at the offsets `System.predict` uses; with `rows_batching` off, each slice runs in tensors
of its own (the shapes `System.predict` runs), else slices of different requests share tensors."""
from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from mupath.serve.errors import ServeError
from mupath.serve.forward import routed_forward
from mupath.serve.registry import Version
from mupath.train.evaluate import EVAL_BATCH
from mupath.train.pipeline import as_nchw, to_model_input

log = logging.getLogger("mupath.serve")


@dataclasses.dataclass(frozen=True)
class Job:
    """One request: its tasks and its images, one uint8 (N, H, W, C) array per uploaded part."""

    tasks: tuple[str, ...]
    parts: tuple[np.ndarray, ...]
    future: concurrent.futures.Future

    @property
    def images(self) -> int:
        return sum(len(p) for p in self.parts)


@dataclasses.dataclass(frozen=True)
class TaskAnswer:
    """One task's answer to one request: per image, the logits, their argmax and softmax probabilities
    (the logits too, since the Open Inference Protocol route returns them)."""

    task: str
    version: str
    class_names: tuple[str, ...]
    class_ids: np.ndarray          #: (N,) int64
    probabilities: np.ndarray      #: (N, num_classes) float32
    logits: np.ndarray             #: (N, num_classes) float32, `System.logits` bit for bit


@dataclasses.dataclass(frozen=True)
class JobAnswer:
    commit_id: int
    answers: tuple[TaskAnswer, ...]


@dataclasses.dataclass(frozen=True)
class _Slice:
    """Images [start, stop) of part `part` of job `job`, run for `tasks` (all of image size `size`)."""

    job: int
    part: int
    start: int
    stop: int
    size: int
    tasks: tuple[str, ...]


BatchObserver = Callable[[int, int, float], None]       # (requests, images, seconds)


class Batcher:
    def __init__(self, current: Callable[[], Version], max_wait_ms: float, max_batch: int,
                 observe: BatchObserver | None = None) -> None:
        self._current = current
        self._max_wait = max_wait_ms / 1000
        self._max_batch = max_batch
        self._observe = observe
        self._queue: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stop = False
        self._announced = 0
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="mupath-serve-batcher", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stop = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, tasks: Sequence[str], parts: Sequence[np.ndarray]) -> concurrent.futures.Future:
        """Queue a job (ends an `announce`); its future gets a JobAnswer or a ServeError."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._cond:
            self._announced = max(0, self._announced - 1)
            if self._stop:
                raise ServeError(503, "the server is shutting down")
            self._queue.append(Job(tuple(tasks), tuple(parts), future))
            self._cond.notify()
        return future

    def _loop(self) -> None:
        while True:
            jobs = self._collect()
            if jobs is None:
                return
            started = time.perf_counter()
            self._run(jobs)
            if self._observe is not None:
                self._observe(len(jobs), sum(j.images for j in jobs), time.perf_counter() - started)

    @property
    def running(self) -> bool:
        """Whether the inference thread is up and taking jobs (the server's readiness)."""
        return self._thread is not None and self._thread.is_alive() and not self._stop

    def announce(self) -> None:
        """A request has arrived and will submit soon (its images are being read and decoded): a
        batch may wait for it. Every announce is followed by one `submit` or `withdraw`."""
        with self._cond:
            self._announced += 1

    def withdraw(self) -> None:
        """An announced request ended without submitting (bad input)."""
        with self._cond:
            self._announced -= 1
            self._cond.notify()

    def _collect(self) -> list[Job] | None:
        """The next batch: the queued jobs that fit, and, when images of different requests may share
        tensors, those that arrive within the window. It waits only while another request is on its way
        (announced, not yet queued): a lone request never waits, and without rows batching a window
        would only add latency (each request runs in tensors of its own)."""
        with self._cond:
            while not self._queue:
                if self._stop:
                    return None
                self._cond.wait()
            jobs = [self._queue.popleft()]
            images = jobs[0].images
            deadline = time.monotonic() + self._max_wait
            window = self._current().rows_batching
            while images < self._max_batch and not self._stop:
                if self._queue:
                    if images + self._queue[0].images > self._max_batch:
                        break
                    jobs.append(self._queue.popleft())
                    images += jobs[-1].images
                    continue
                left = deadline - time.monotonic()
                if not window or left <= 0 or self._announced == 0:
                    break
                self._cond.wait(left)
            return jobs

    def _run(self, jobs: list[Job]) -> None:
        """Answer a batch with one version; if the batch as a whole fails, each job runs alone, so a
        job that breaks something fails only itself."""
        version = self._current()
        try:
            answers = run_batch(version, jobs)
        except Exception:
            log.exception("batch of %d failed; running its jobs one by one", len(jobs))
            answers = []
            for job in jobs:
                try:
                    answers.extend(run_batch(version, [job]))
                except Exception as exc:
                    answers.append(exc if isinstance(exc, ServeError) else
                                   ServeError(500, f"inference failed: {type(exc).__name__}: {exc}"))
        for job, answer in zip(jobs, answers):
            if isinstance(answer, BaseException):
                job.future.set_exception(answer)
            else:
                job.future.set_result(answer)


def run_batch(version: Version, jobs: Sequence[Job]) -> list[JobAnswer | ServeError]:
    """Every job's answer from `version` (a ServeError for a job naming a task it does not serve)."""
    ok = [i for i, job in enumerate(jobs) if all(t in version.tasks for t in job.tasks)]
    slices = list(_slices(version, jobs, ok))
    logits: dict[tuple[int, int, str], list[torch.Tensor]] = collections.defaultdict(list)
    with torch.inference_mode():
        for unit in _units(slices, version.rows_batching):
            for (s, task), value in _run_unit(version, jobs, unit).items():
                logits[(s.job, s.part, task)].append(value)
    out: list[JobAnswer | ServeError] = []
    for i, job in enumerate(jobs):
        if i not in ok:
            missing = [t for t in job.tasks if t not in version.tasks]
            out.append(ServeError(404, f"unknown task '{missing[0]}'; served tasks: "
                                  f"{', '.join(version.tasks) or 'none yet'}"))
            continue
        out.append(JobAnswer(version.commit_id, tuple(
            _answer(version, task, [torch.cat(logits[(i, p, task)]) for p in range(len(job.parts))])
            for task in job.tasks)))
    return out


def _slices(version: Version, jobs: Sequence[Job], ok: list[int]) -> Iterator[_Slice]:
    """Each part cut at the offsets System.predict chunks at, once per image size its tasks need."""
    for i in ok:
        job = jobs[i]
        by_size: dict[int, list[str]] = {}
        for task in job.tasks:
            by_size.setdefault(version.tasks[task].image_size, []).append(task)
        for p, part in enumerate(job.parts):
            for start in range(0, len(part), EVAL_BATCH):
                for size, tasks in by_size.items():
                    yield _Slice(i, p, start, min(start + EVAL_BATCH, len(part)), size, tuple(tasks))


def _units(slices: list[_Slice], rows_batching: bool) -> Iterator[list[_Slice]]:
    """Slices that run in the same tensors: one size, at most EVAL_BATCH images (one slice each
    without rows batching)."""
    if not rows_batching:
        yield from ([s] for s in slices)
        return
    by_size: dict[int, list[_Slice]] = {}
    for s in slices:
        by_size.setdefault(s.size, []).append(s)
    for group in by_size.values():
        unit: list[_Slice] = []
        rows = 0
        for s in group:
            if unit and rows + (s.stop - s.start) > EVAL_BATCH:
                yield unit
                unit, rows = [], 0
            unit.append(s)
            rows += s.stop - s.start
        if unit:
            yield unit


def _run_unit(version: Version, jobs: Sequence[Job], unit: list[_Slice]) -> dict[tuple[_Slice, str], torch.Tensor]:
    """Logits of each slice of `unit` for each of its tasks, all slices in the same tensors."""
    size = unit[0].size
    xs: list[torch.Tensor] = []
    rows: dict[str, list[int]] = collections.defaultdict(list)
    offset = 0
    for s in unit:
        xs.append(to_model_input(as_nchw(jobs[s.job].parts[s.part][s.start:s.stop]), size))
        for task in s.tasks:
            rows[task].extend(range(offset, offset + s.stop - s.start))
        offset += s.stop - s.start
    x = xs[0] if len(xs) == 1 else torch.cat(xs)
    served = {t: version.tasks[t] for t in rows}
    groups = [list(served)] if version.prefix_sharing else [[t] for t in served]
    out: dict[str, torch.Tensor] = {}
    for group in groups:
        out.update(routed_forward({t: served[t].model for t in group}, {t: served[t].slot_ids for t in group},
                                  x, {t: rows[t] for t in group}))
    result: dict[tuple[_Slice, str], torch.Tensor] = {}
    for task, value in out.items():
        at = 0
        for s in unit:
            if task in s.tasks:
                result[(s, task)] = value[at:at + s.stop - s.start].float()
                at += s.stop - s.start
    return result


def _answer(version: Version, task: str, parts: list[torch.Tensor]) -> TaskAnswer:
    """Class ids and probabilities, computed per part as `System.predict` / `System.logits` compute
    them on that part's images (softmax of the very same logits)."""
    served = version.tasks[task]
    ids = np.concatenate([p.argmax(dim=1).numpy().astype(np.int64) for p in parts])
    probs = np.concatenate([torch.softmax(p, dim=1).numpy() for p in parts])
    logits = np.concatenate([p.numpy() for p in parts])
    return TaskAnswer(task, served.version, served.class_names, ids, probs, logits)
