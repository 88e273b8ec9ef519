"""Executors run a generation's candidate jobs. The interface is one method, `run(jobs, on_done,
on_step)`, returning results in job order; jobs and results are the records of `runtime.jobs`,
sent to other processes as JSON, so a distributed executor (Ray, `mupath.runtime.ray_executor`) only
has to ship text and let workers read tensors from the shared store (or from blob bytes it ships).

A worker process that dies (killed, out of memory, lost node) costs at most its candidate: the
executors that run candidates out of process retry a candidate whose worker died once
(`WORKER_RETRIES`), then drop it with the reason in its result's `failure`."""
from __future__ import annotations

import atexit
import concurrent.futures as cf
import multiprocessing as mp
import os
import threading
import time
from typing import Protocol

import torch

from mupath.errors import ConfigError
from mupath.runtime.attempt import (  # noqa: F401
    DIE_ONCE,
    WORKER_RETRIES,
    Job,
    OnDone,
    OnStep,
    Result,
    died,
    gpu_poisoned,
    run_attempt,
)
from mupath.runtime.jobs import CandidateResult, RetryBook
from mupath.runtime.prefill import prefill_floors
from mupath.runtime.worker import run_job
from mupath.train.evaluate import cores


class Executor(Protocol):
    def run(self, jobs: list[Job], on_done: OnDone | None = None, on_step: OnStep | None = None) -> list[Result]: ...
    def close(self) -> None: ...   # after a run that ended normally (a shared pool stays up)
    def shutdown(self) -> None: ...   # after an error or interrupt: stop everything


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

    def shutdown(self) -> None:
        pass


def _init_worker(threads: int, parent: int) -> None:
    """Set a worker's threads and watch `parent`, the pool's creator, read in the creator itself: a
    worker still starting when its creator dies would read its adopter from os.getppid() and live on."""
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


def _exit_with_parent(parent: int, every: float = 1.0) -> None:
    """A pool worker whose parent died (SIGKILL, SIGTERM without cleanup) is re-parented and would
    otherwise live on, idle and holding its memory (about 1 GB each), until someone kills it: exit
    once the parent is gone (checked every `every` seconds). A candidate it was training is lost, as
    it is with its parent; the store only ever sees atomic writes."""
    while os.getppid() == parent:
        time.sleep(every)
    os._exit(1)


class ProcessPoolExecutor:
    """N worker processes (spawned, so no state leaks from the parent), each with cores // N torch
    threads so that the workers together do not oversubscribe the machine."""

    def __init__(self, workers: int, threads: int = 0, persistent: bool = False) -> None:
        self.threads = threads or max(1, cores() // workers)
        self.workers = workers
        self.persistent = persistent
        self.closed = False
        self.pool = self._new_pool()

    def _new_pool(self) -> cf.ProcessPoolExecutor:
        return cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=mp.get_context("spawn"),
                                      initializer=_init_worker, initargs=(self.threads, os.getpid()))

    def _fresh_pool(self) -> None:
        if getattr(self.pool, "_broken", False):      # a worker died: start fresh processes
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._new_pool()

    def run(self, jobs: list[Job], on_done: OnDone | None = None, on_step: OnStep | None = None) -> list[Result]:
        """At most `workers` candidates are in flight. A worker that dies breaks a concurrent.futures
        pool and with it every candidate in flight, so it is not known which one killed it: those
        candidates are retried once each, alone in a fresh pool, after the others; a candidate that
        kills its worker again then is dropped, and the innocent ones are never charged."""
        jobs = prefill_floors(jobs, self.workers, self.threads)     # one floor fill for all the workers
        book = RetryBook(jobs, WORKER_RETRIES)
        texts = [job.to_json() for job in jobs]

        def finish(i: int, res: Result) -> None:
            res = book.finish(i, res)
            if on_done:
                on_done(i, res)

        queue = list(range(len(jobs)))
        suspects: list[int] = []
        while queue:                                   # first attempts, `workers` at a time
            self._fresh_pool()
            inflight: dict[cf.Future, int] = {}
            broke = False
            while (queue or inflight) and not broke:
                while queue and len(inflight) < self.workers:
                    i = queue.pop(0)
                    inflight[self.pool.submit(run_attempt, texts[i])] = i
                done, _ = cf.wait(inflight, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    i = inflight.pop(fut)
                    try:
                        res = CandidateResult.from_json(fut.result())
                    except Exception as exc:           # its worker (or another one in the pool) died
                        book.died(i, died(exc))
                        suspects.append(i)
                        broke = True
                        continue
                    finish(i, res)
            for fut, i in inflight.items():           # the pool broke: collect the others in flight
                try:
                    res = CandidateResult.from_json(fut.result())
                except Exception as exc:
                    book.died(i, died(exc))
                    suspects.append(i)
                    continue
                finish(i, res)
        for i in sorted(suspects):                     # retries, one at a time: a death is now attributable
            self._fresh_pool()
            try:
                finish(i, CandidateResult.from_json(self.pool.submit(run_attempt, texts[i]).result()))
            except Exception as exc:
                book.died(i, died(exc))
                res = book.drop(i)
                if on_done:
                    on_done(i, res)
        return book.in_order()

    def close(self) -> None:
        """A persistent pool stays up for the next evolve call in this process (no new processes, no
        torch import, warm frozen-module and activation caches); others stop."""
        if not self.persistent:
            self.shutdown()

    def shutdown(self) -> None:
        self.closed = True
        self.pool.shutdown(wait=True, cancel_futures=True)


_SHARED_POOL: ProcessPoolExecutor | None = None


def shared_process_pool(workers: int, threads: int = 0) -> ProcessPoolExecutor:
    """The process's one persistent pool: successive `evolve` calls (a benchmark or a script adding tasks
    one by one) reuse its workers instead of spawning new ones. Workers key every cache by content
    (blob sha), so one pool can serve several stores. Asking for another size replaces it, so at most
    one pool is alive; `shutdown_workers()` (also run at exit) stops it."""
    global _SHARED_POOL
    threads = threads or max(1, cores() // workers)
    pool = _SHARED_POOL
    if pool is None or pool.closed or (pool.workers, pool.threads) != (workers, threads):
        if pool is not None and not pool.closed:
            pool.shutdown()
        _SHARED_POOL = pool = ProcessPoolExecutor(workers, threads, persistent=True)
    return pool


def shutdown_workers() -> None:
    """Stop the persistent worker pool (frees its processes and caches)."""
    global _SHARED_POOL
    if _SHARED_POOL is not None and not _SHARED_POOL.closed:
        _SHARED_POOL.shutdown()
    _SHARED_POOL = None


atexit.register(shutdown_workers)


def make_executor(kind: str, workers: int, threads: int = 0, ray_address: str | None = None,
                  ship_blobs: bool | None = None, device: str = "cpu") -> Executor:
    """`auto` is in-process for one worker, the (persistent) process pool for more, and Ray when
    `ray_address` is given. Ray is imported only when asked for (`pip install 'mupath[ray]'`).
    `device` matters here only for Ray, which must reserve GPUs for the candidates (local workers
    read the device from each job)."""
    if kind == "auto":
        kind = "ray" if ray_address else "inprocess" if workers == 1 else "process"
    if kind == "inprocess":
        return InProcessExecutor(threads)
    if kind == "process":
        return shared_process_pool(workers, threads)
    if kind == "ray":
        from mupath.runtime.ray_executor import RayExecutor
        return RayExecutor(workers, threads, ray_address, ship_blobs=ship_blobs, device=device)
    raise ConfigError(f"unknown executor '{kind}'; use auto, inprocess, process or ray")

