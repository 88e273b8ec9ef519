"""One fill of the frozen floor for all of a process pool's workers.

A run whose bottom blocks no candidate may own (`CacheSpec.floor`, e.g. the EfficientNet demo's stem and
blocks 0-11) caches their activations per worker. With N workers each computed the same fill, N times
over, at the same time: for fashion_mnist at 64 px (54,000 images) that was the largest part of the
task's search. Before a pool runs a generation, the parent fills the floor once per (task data, image
size, floor components) on N threads and writes it to the run's scratch folder; each job names the file
and its worker loads it instead of computing it.

Bit-identical by construction: the parent computes the same CHUNK-row chunks with the workers' torch
thread count (1, the only case where it runs), and a chunk's bits do not depend on which thread runs it.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

from safetensors.torch import save as save_tensors

from mupath.runtime.device import resolve_device
from mupath.runtime.jobs import CandidateJob
from mupath.runtime.worker import materialise, prefix_ids
from mupath.store.atomic import atomic_write_bytes
from mupath.store.tensors import TensorSource, task_tensors
from mupath.train.cache import fill_floor
from mupath.train.evaluate import fixed_threads
from mupath.train.pipeline import has_augmentation, to_model_input


def prefill_floors(jobs: list[CandidateJob], workers: int, threads: int) -> list[CandidateJob]:
    """`jobs` with `cache.floor_file` set where a shared fill applies (written now if missing):
    several single-thread CPU workers, the cache on, a floor, no augmentation. Other jobs unchanged."""
    if workers < 2 or threads != 1:
        return jobs
    return [_with_floor_file(job, workers) for job in jobs]


def _with_floor_file(job: CandidateJob, workers: int) -> CandidateJob:
    if (job.cache.mb <= 0 or job.cache.floor <= 0 or job.cache.floor_file or has_augmentation(job.hparams)
            or resolve_device(job.device) != "cpu"):
        return job
    model, owned = materialise(job, TensorSource(Path(job.store)), "cpu")
    ids = prefix_ids(job, model, owned)
    n_embed = len(model.embed_slots)
    if ids is None or len(ids) - n_embed < job.cache.floor:
        return job
    size, limit = int(job.hparams["ds_image_size"]), int(job.budget.val_limit)
    what = [job.task_blob, job.root, size, limit, list(ids[:n_embed + job.cache.floor])]
    name = hashlib.sha256(json.dumps(what).encode()).hexdigest()[:20]
    path = Path(job.scratch_file).parent / f"floor-{name}.safetensors"
    if not path.exists():
        data = task_tensors(Path(job.store), job.task_blob)
        val_x = to_model_input(data["validation.x"][:limit], size)
        with fixed_threads(1):
            train, val = fill_floor(model, data["train.x"], val_x, size, job.cache.floor, parallel=workers)
        atomic_write_bytes(path, save_tensors({"train": train.contiguous(), "val": val.contiguous()}))
    return job.replace(cache=dataclasses.replace(job.cache, floor_file=str(path)))
