"""The Ray executor: a generation's candidates run as Ray tasks, at most `workers` at once, each with
`threads` CPUs (`num_cpus=threads`, torch threads = threads) and, when training on GPUs, its share of
one (`num_gpus`, `gpus_per_candidate`). Ray itself never retries a task
(`max_retries=0`): a task whose worker died (killed process, lost node) is retried once here, then
dropped with the reason in its result's `failure`, like the process pool does.

    pip install 'mupath[ray]'

By default `ray.init()` starts a local cluster of `workers * threads` CPUs for the run (no
dashboard, quiet logging) and shuts it down when the run ends; with `address` it joins an existing
cluster (`ray start --head` on one node, `ray start --address HEAD:6379` on the others; every node
needs mupath installed). A Ray session already initialised in this process is used as it is.

Jobs are records, sent as JSON, that name tensors by blob sha and scratch file in the store folder. On one
machine (or nodes sharing the store's file system) that is all a task needs. Without a shared file
system (`ship_blobs`, the default when `address` is given), the executor reads the bytes of every
distinct blob, task data and in-flight scratch file the generation's jobs reference, `ray.put`s each
once (an object still referenced by the next generation is not put again), and passes the object
refs to the tasks; a task returns the bytes of its best snapshot, which the driver writes to the
scratch file in the store. Ray is imported only when this executor is created."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from mupath.errors import ConfigError
from mupath.runtime.attempt import WORKER_RETRIES, Job, OnDone, OnStep, Result, died, run_attempt
from mupath.runtime.device import check_device_name, wants_gpu
from mupath.runtime.jobs import CandidateJob, CandidateResult, RetryBook
from mupath.train.evaluate import cores

PIP_HINT = "pip install 'mupath[ray]'"
#: the store folder as shipped jobs name it: with ship_blobs a worker reads nothing from the store
NOT_SHARED = "/nonexistent/mupath-store-not-shared-with-this-node"


def import_ray() -> Any:
    """The `ray` module, or a one-line ConfigError that names the pip command."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"the ray executor needs Ray, which is not installed: {PIP_HINT}") from None
    return ray


def ray_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("ray") is not None


def _reachable(address: str, timeout: float = 10.0) -> None:
    """Fail fast on a HOST:PORT nobody listens on (ray.init would wait for it for minutes); other
    forms ("auto", "ray://...") are left to Ray."""
    import socket
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or "/" in address:
        return
    if not 0 < int(port) < 65536:
        raise ConfigError(f"port {port} in --ray-address '{address}' is not a TCP port (1-65535); fix it")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach the Ray cluster at '{address}' ({exc.strerror or exc}); start it "
                          "with `ray start --head` or fix --ray-address") from None


def gpus_per_candidate(device: str, cluster_gpus: float, workers: int) -> float:
    """The GPU share each candidate task asks Ray for: none for "cpu" or a cluster without GPUs; else
    the cluster's GPUs split over the `workers` candidates in flight, at most one each (two workers on
    one GPU share it; eight on eight GPUs get one each)."""
    if check_device_name(device) == "cpu" or cluster_gpus <= 0:
        return 0.0
    return min(1.0, cluster_gpus / workers)


def _attempt(job_json: str, threads: int, ship: bool, keys: list[tuple[str, str]], *payload: bytes
             ) -> tuple[str, bytes | None]:
    """One attempt at a job inside a Ray worker. `keys[i]` names what `payload[i]` holds: ("blob",
    sha) or ("scratch", file). With `ship`, the best snapshot is written to a node-local file and
    returned as bytes (the store folder may not exist on this node)."""
    import torch
    torch.set_num_threads(threads)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    blob_bytes: dict[str, bytes] = {}
    scratch_bytes: dict[str, bytes] = {}
    for (kind, key), data in zip(keys, payload):
        (blob_bytes if kind == "blob" else scratch_bytes)[key] = data
    if not ship:
        return run_attempt(job_json), None
    job = CandidateJob.from_json(job_json)
    local_dir = Path(tempfile.mkdtemp(prefix="mupath-ray-"))
    try:
        local = local_dir / Path(job.scratch_file).name
        res = CandidateResult.from_json(run_attempt(job.replace(scratch_file=str(local)).to_json(),
                                                    blob_bytes=blob_bytes, scratch_bytes=scratch_bytes))
        out = None
        if res.scratch_file:
            out = local.read_bytes()
            res = res.replace(scratch_file=job.scratch_file)
        return res.to_json(), out
    finally:
        shutil.rmtree(local_dir, ignore_errors=True)


class RayExecutor:
    """Candidates as Ray tasks; see the module docstring."""

    def __init__(self, workers: int, threads: int = 0, address: str | None = None,
                 ship_blobs: bool | None = None, device: str = "cpu") -> None:
        ray = import_ray()
        self.ray = ray
        self.workers = workers
        self.address = address
        self.ship_blobs = bool(address) if ship_blobs is None else bool(ship_blobs)
        self._owns = False
        if not ray.is_initialized():
            quiet = dict(logging_level=logging.ERROR, log_to_driver=False, include_dashboard=False)
            if address:
                _reachable(address)
                try:
                    ray.init(address=address, **quiet)
                except ConnectionError as exc:
                    raise ConfigError(f"cannot reach the Ray cluster at '{address}' ({died(exc)}); start it "
                                      "with `ray start --head` or fix --ray-address") from None
                except ValueError as exc:       # Ray's own check of the address form
                    raise ConfigError(f"Ray cannot use the address '{address}' ({died(exc)}); give HOST:PORT, "
                                      "auto or ray://HOST:PORT as --ray-address") from None
            else:
                threads = threads or max(1, cores() // workers)
                ray.init(num_cpus=workers * threads, **quiet)
            self._owns = True
        largest = max([float(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
                      or [1.0])
        self.threads = threads or max(1, int(float(ray.cluster_resources().get("CPU", 1)) // workers))
        self.threads = min(self.threads, max(1, int(largest)))
        if threads and threads > largest:
            self.close()
            raise ConfigError(f"threads_per_worker {threads} is more than the largest Ray node has "
                              f"({int(largest)} CPUs); lower --threads-per-worker")
        self.gpus = gpus_per_candidate(device, float(ray.cluster_resources().get("GPU", 0)), workers)
        if self.gpus == 0 and wants_gpu(device):
            self.close()
            raise ConfigError(f"device '{device}' asked for, but the Ray cluster has no GPU; use --device "
                              "auto or cpu, or join a cluster with GPU nodes")
        #: Ray gives each GPU candidate its share of one GPU and sets CUDA_VISIBLE_DEVICES to it, so the
        #: worker trains on "cuda" (its first visible device). Every candidate asks for the same share,
        #: so nodes without a GPU get none. Ray runs a GPU task in a fresh worker process (max_calls=1):
        #: each candidate pays torch's import and CUDA's start, and no worker cache outlives it
        self.device = "cuda" if self.gpus else "cpu"
        self._remote = ray.remote(num_cpus=self.threads, num_gpus=self.gpus, max_retries=0)(_attempt)
        self._objects: dict[tuple[str, str], tuple[Any, int]] = {}   # (kind, key) -> (ObjectRef, bytes)
        self._inflight: dict[Any, int] = {}
        self._unshippable: dict[tuple[str, str], str] = {}      # what could not be read for shipping
        #: per run(): {"objects", "bytes" (distinct bytes referenced), "put_bytes" (new this run),
        #: "put_time", "wall_time"}
        self.traffic: list[dict[str, Any]] = []

    # ---- shipping ---------------------------------------------------------------------------
    @staticmethod
    def _keys(job: Job) -> list[tuple[str, str]]:
        keys = [("blob", job.task_blob)]
        for ref in job.refs.values():
            keys.append(("blob", ref.blob) if ref.blob else ("scratch", str(ref.scratch)))
        return list(dict.fromkeys(keys))

    def _ship(self, jobs: list[Job]) -> None:
        """Put every distinct blob / scratch file the jobs reference into the object store once;
        release those the jobs no longer reference."""
        from mupath.errors import StoreError
        from mupath.runtime.worker import verified_bytes
        from mupath.store.blobs import BlobStore
        started = time.perf_counter()
        needed = list(dict.fromkeys(k for job in jobs for k in self._keys(job)))
        self._unshippable = {}
        pins = {ref.blob: ref.pin for job in jobs for ref in job.refs.values() if ref.pin}
        for stale in [k for k in self._objects if k not in set(needed)]:
            del self._objects[stale]
        put = 0
        store = BlobStore(Path(jobs[0].store) / "blobs")
        for kind, key in needed:
            if (kind, key) in self._objects:
                continue
            try:
                if kind == "scratch":
                    data = Path(key).read_bytes()
                else:
                    try:
                        data = store.get_bytes(key)
                    except StoreError:      # deleted by another agent's commit: the run's pin has it
                        if key not in pins:
                            raise
                        data = verified_bytes(key, Path(pins[key]).read_bytes())
            except (OSError, StoreError) as exc:     # costs the candidates that need it, not the run
                self._unshippable[(kind, key)] = died(exc)
                continue
            self._objects[(kind, key)] = (self.ray.put(data), len(data))
            put += len(data)
        self.traffic.append({"objects": len(needed),
                             "bytes": sum(self._objects[k][1] for k in needed if k in self._objects),
                             "put_bytes": put, "put_time": time.perf_counter() - started})

    def _submit(self, job: Job) -> Any:
        keys = self._keys(job) if self.ship_blobs else []
        refs = [self._objects[k][0] for k in keys]
        job = job.replace(device=self.device)
        if self.ship_blobs:        # the worker must not need the store folder: make any read of it fail
            job = job.replace(store=NOT_SHARED)
        return self._remote.remote(job.to_json(), self.threads, self.ship_blobs, keys, *refs)

    # ---- the executor interface -------------------------------------------------------------
    def run(self, jobs: list[Job], on_done: OnDone | None = None, on_step: OnStep | None = None) -> list[Result]:
        from mupath.store.atomic import atomic_write_bytes
        started = time.perf_counter()
        if self.ship_blobs:
            self._ship(jobs)
        book = RetryBook(jobs, WORKER_RETRIES)
        queue = list(range(len(jobs)))
        for i in list(queue):
            missing = [k for k in self._keys(jobs[i]) if k in self._unshippable] if self.ship_blobs else []
            if missing:
                queue.remove(i)
                res = book.finish(i, CandidateResult.unshippable(jobs[i], missing[0][1], self._unshippable[missing[0]]))
                if on_done:
                    on_done(i, res)
        self._inflight = {}
        while queue or self._inflight:
            while queue and len(self._inflight) < self.workers:
                i = queue.pop(0)
                self._inflight[self._submit(jobs[i])] = i
            done, _ = self.ray.wait(list(self._inflight), num_returns=1)
            for ref in done:
                i = self._inflight.pop(ref)
                try:
                    text, snapshot = self.ray.get(ref)
                except Exception as exc:    # the worker died (killed, lost node) or the task failed
                    if book.died(i, died(exc)):
                        queue.insert(0, i)
                        continue
                    res = book.drop(i)
                else:
                    res = CandidateResult.from_json(text)
                    if snapshot is not None:
                        atomic_write_bytes(Path(jobs[i].scratch_file), snapshot)
                        res = res.replace(scratch_file=jobs[i].scratch_file)
                    res = book.finish(i, res)
                if on_done:
                    on_done(i, res)
        if self.ship_blobs:
            self.traffic[-1]["wall_time"] = time.perf_counter() - started
        return book.in_order()

    def shutdown(self) -> None:
        self.close()

    def close(self) -> None:
        for ref in list(self._inflight):          # an interrupted run: stop its tasks
            try:
                self.ray.cancel(ref, force=True)
            except Exception:
                pass
        self._inflight = {}
        self._objects = {}
        if self._owns and self.ray.is_initialized():
            self.ray.shutdown()
        self._owns = False
