"""One attempt at a candidate job in another process (a pool worker or a Ray task), and what the
executors that run candidates out of process share: the retry limit, the fault-injection hook, and
how a dead worker is described."""
from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from mupath.runtime.jobs import CandidateJob, CandidateResult
from mupath.runtime.worker import run_job

Job = CandidateJob
Result = CandidateResult
OnDone = Callable[[int, Result], None]
OnStep = Callable[[int, int, int], None]   # (job index, step, total)

WORKER_RETRIES = 1   #: a candidate whose worker died is run once more, then dropped
#: Fault injection for tests: a job whose `die_once` names a marker file makes the out-of-process
#: worker that runs it exit abruptly (os._exit) while the marker does not exist, creating it first, so
#: the retry runs (a marker that cannot be created, e.g. in a missing folder, kills every attempt).
DIE_ONCE = "die_once"


def run_attempt(job_json: str, **sources: Any) -> str:
    """What an out-of-process worker runs for one attempt at a job (JSON in, JSON out): the
    `die_once` hook, then the job (`sources`: shipped `blob_bytes` / `scratch_bytes`, see `run_job`)."""
    job = CandidateJob.from_json(job_json)
    marker = job.die_once
    if marker and not os.path.exists(marker):
        try:
            with open(marker, "w"):
                pass
        except OSError:        # a marker that cannot be created: the worker dies on every attempt
            pass
        os._exit(1)
    res = run_job(job, None, **sources)
    if gpu_poisoned(res.failure):
        os._exit(1)        # a fresh worker (the pool's or Ray's retry) gets a clean CUDA context
    return res.to_json()


def gpu_poisoned(failure: str | None) -> bool:
    """A sticky CUDA error (illegal memory access, device-side assert) leaves this process's CUDA
    context unusable: every later candidate in it would fail too. Out of memory is not sticky."""
    return failure is not None and (failure.startswith("AcceleratorError") or "CUDA error:" in failure)


def died(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else 'no message'}"[:300]
