"""Executors run a generation's candidate jobs. The interface is one method, `run(jobs, on_done)`,
returning results in job order; jobs and results are JSON-able dicts, so a distributed executor
(Ray) only has to ship dicts and let workers read tensors from the shared store."""
from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
from typing import Any, Callable, Protocol

import torch

from mupath.errors import ConfigError
from mupath.runtime.worker import run_job

Job = dict[str, Any]
Result = dict[str, Any]
OnDone = Callable[[int, Result], None]
OnStep = Callable[[int, int, int], None]   # (job index, step, total)


class Executor(Protocol):
    def run(self, jobs: list[Job], on_done: OnDone | None = None, on_step: OnStep | None = None) -> list[Result]: ...
    def close(self) -> None: ...


class InProcessExecutor:
    """Candidates one after the other in this process, using all its threads."""

    def __init__(self, threads: int = 0) -> None:
        if threads:
            torch.set_num_threads(threads)

    def run(self, jobs: list[Job], on_done: OnDone | None = None, on_step: OnStep | None = None) -> list[Result]:
        results = []
        for i, job in enumerate(jobs):
            step_cb = (lambda s, t, i=i: on_step(i, s, t)) if on_step else None
            res = run_job(job, step_cb)
            if on_done:
                on_done(i, res)
            results.append(res)
        return results

    def close(self) -> None:
        pass


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)


class ProcessPoolExecutor:
    """N worker processes (spawned, so no state leaks from the parent), each with cores // N torch
    threads so that the workers together do not oversubscribe the machine."""

    def __init__(self, workers: int, threads: int = 0) -> None:
        self.threads = threads or max(1, (os.cpu_count() or 1) // workers)
        self.workers = workers
        self.pool = self._new_pool()

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"),
                                      initializer=_init_worker, initargs=(self.threads,))

    def run(self, jobs: list[Job], on_done: OnDone | None = None, on_step: OnStep | None = None) -> list[Result]:
        if getattr(self.pool, "_broken", False):      # a worker died earlier: start fresh processes
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._new_pool()
        futures = {self.pool.submit(run_job, job): i for i, job in enumerate(jobs)}
        results: list[Result | None] = [None] * len(jobs)
        for fut in cf.as_completed(futures):
            i = futures[fut]
            try:
                res = fut.result()
            except Exception as exc:   # a worker process that died costs only its candidate
                res = {"path_id": jobs[i]["path_id"], "improved": False,
                       "failure": f"worker died: {type(exc).__name__}: {exc}"}
            results[i] = res
            if on_done:
                on_done(i, res)
        return [r for r in results if r is not None]

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def make_executor(kind: str, workers: int, threads: int = 0) -> Executor:
    if kind == "auto":
        kind = "inprocess" if workers == 1 else "process"
    if kind == "inprocess":
        return InProcessExecutor(threads)
    if kind == "process":
        return ProcessPoolExecutor(workers, threads)
    raise ConfigError(f"unknown executor '{kind}'; use inprocess or process")
