"""Settings of one `evolve` run. Each has a documented default and is settable from the API
(`System.evolve(**settings)`) and the CLI (`mupath evolve --option`)."""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from mupath.errors import ConfigError


CLONE_ROOT = ("auto", "always", "mutation")
SEED_ORDER = ("shuffle", "probe")


@dataclasses.dataclass(frozen=True)
class EvolveSettings:
    #: task iterations: each pass visits every selected task once, round-robin (reference: 2)
    iterations: int = 1
    #: generations per task iteration
    generations: int = 2
    #: candidates per generation (the reference trains one per accelerator core)
    candidates: int = 4
    #: processes training candidates at once (1 = in this process)
    workers: int = 1
    #: s in score = quality * s ** (accounted_params / root_params); 1.0 = no size penalty
    scale_factor: float = 0.99
    #: seed of every random choice: same seed and settings give the same retained paths
    seed: int = 0
    #: training images per step
    batch_size: int = 64
    #: optimiser steps between two validations
    steps_per_validation: int = 100
    #: validations per candidate (training steps = steps_per_validation * validations)
    validations: int = 2
    #: validation examples used for selection (a fixed subset, evaluated in full each time)
    val_limit: int = 1000
    #: insert residual adapters as a mutation (reference: on for Ti/B roots)
    mutate_adapters: bool = True
    #: when a child uses a root component: "auto" (always clone it when the root is random-init, whose
    #: frozen weights carry no knowledge to share; else share it unless the clone mutation fires, as
    #: for any frozen component), "always" or "mutation" (µ2Net's rule for a pretrained root). A slot
    #: whose clone probability `_mu_|clone:<slot>` is 0 stays shared in every mode.
    clone_root: str = "auto"
    #: order in which other tasks' best paths (and the root) are tried as parents: "shuffle" (µ2Net)
    #: or "probe" (most relevant first: nearest-class-mean accuracy of each one's frozen features on
    #: `probe_images` training images; for few candidates per task, where the first seeds decide)
    seed_order: str = "shuffle"
    #: training images the relevance probe uses (half fit the class means, half score them)
    probe_images: int = 512
    #: the first candidate of a task's first visit is its first parent unmutated: that parent's body
    #: shared as it is, with a new head (µ2Net samples every child's mutations). The cheapest child, so
    #: each costlier candidate must beat it by more than its size penalty; for few candidates per task,
    #: where no cheap child may be drawn at all
    head_first: bool = False
    #: re-run every other task after each commit and require bit-identical logits
    check_immutability: bool = True
    #: which tasks the after-commit check re-runs: "all" (every other task: O(tasks) per commit) or
    #: "shared" (only tasks whose path uses a non-root component of the committed task's new or
    #: replaced path: the only components a commit adds or drops; for long task streams)
    check_scope: str = "all"
    #: "auto" (in-process for 1 worker, else process pool; Ray when ray_address is set) | "inprocess"
    #: | "process" | "ray" (pip install 'mupath[ray]')
    executor: str = "auto"
    #: torch threads per worker; 0 = cores // workers (Ray: cluster CPUs // workers)
    threads_per_worker: int = 0
    #: Ray cluster to join ("HOST:6379", "auto"); None = a local Ray cluster for the run
    ray_address: str | None = None
    #: ship blobs, task data and scratch files to Ray workers through the object store (nodes without
    #: a shared file system); None = on when ray_address is set, off for a local cluster
    ray_ship_blobs: bool | None = None
    #: memory bound (MiB per worker) of the frozen-prefix activation cache; 0 switches it off
    cache_mb: int = 1024
    #: where candidates train: "cpu", "auto" (a visible CUDA GPU, else the CPU), "cuda", "cuda:N".
    #: Commits, checks and predictions always run on the CPU (`mupath.runtime.device`). The CPU is the
    #: default because it is bit-reproducible: GPU kernels may round differently from run to run
    device: str = "cpu"
    #: hyperparameter default overrides {key: value}
    hparams: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: search range overrides {key: [ordered values]}; [] switches a key's mutation off
    ranges: dict[str, list[Any]] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        positive = ("iterations", "generations", "candidates", "workers", "batch_size",
                    "steps_per_validation", "validations", "val_limit", "probe_images")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if not (0.0 < float(self.scale_factor) <= 1.0):
            raise ConfigError(f"scale_factor must be in (0, 1], got {self.scale_factor}")
        if self.check_scope not in ("all", "shared"):
            raise ConfigError(f"check_scope must be all or shared, got '{self.check_scope}'")
        if self.clone_root not in CLONE_ROOT:
            raise ConfigError(f"clone_root must be {', '.join(CLONE_ROOT)}, got '{self.clone_root}'")
        if self.seed_order not in SEED_ORDER:
            raise ConfigError(f"seed_order must be {' or '.join(SEED_ORDER)}, got '{self.seed_order}'")
        if self.executor not in ("auto", "inprocess", "process", "ray"):
            raise ConfigError(f"executor must be auto, inprocess, process or ray, got '{self.executor}'")
        if self.executor == "inprocess" and self.workers > 1:
            raise ConfigError("executor 'inprocess' runs one candidate at a time; use --workers 1 "
                              "or --executor process")
        if self.ray_address is not None and (not isinstance(self.ray_address, str) or not self.ray_address.strip()):
            raise ConfigError(f"ray_address must be a cluster address like HOST:6379 or 'auto', got {self.ray_address!r}")
        uses_ray = self.executor == "ray" or (self.executor == "auto" and self.ray_address)
        if (self.ray_address or self.ray_ship_blobs is not None) and not uses_ray:
            raise ConfigError(f"ray_address and ray_ship_blobs apply to the ray executor only, not "
                              f"'{self.executor}'; use --executor ray")
        if uses_ray:
            from mupath.runtime.ray_executor import PIP_HINT, ray_available
            if not ray_available():
                raise ConfigError(f"the ray executor needs Ray, which is not installed: {PIP_HINT}")
        from mupath.runtime.device import check_device_name, resolve_device
        check_device_name(self.device)
        if uses_ray and ":" in self.device:
            raise ConfigError(f"with the ray executor Ray picks each candidate's GPU, so device "
                              f"'{self.device}' cannot be honoured; use --device cuda or auto")
        if not (uses_ray and self.ray_address):   # a cluster's workers may have the GPU this process lacks
            resolve_device(self.device)
        if self.threads_per_worker < 0:
            raise ConfigError("threads_per_worker must be >= 0")
        if self.cache_mb < 0:
            raise ConfigError("cache_mb must be >= 0 (0 switches the activation cache off)")
        for name in ("hparams", "ranges"):
            if not isinstance(getattr(self, name), dict):
                raise ConfigError(f"{name} must be a dict {{key: value}}, got {getattr(self, name)!r}")
            for key, value in getattr(self, name).items():
                try:                          # the run's resume key and the log are JSON
                    json.dumps(value)
                except (TypeError, ValueError):
                    raise ConfigError(f"{name}['{key}'] = {value!r} is not a plain value (numbers, strings, "
                                      "booleans, lists); convert numpy scalars with int() / float()") from None

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    def resume_key(self, tasks: list[str]) -> str:
        """What must match for a run to be resumed: everything that changes the search's choices.
        (workers, executor, threads, the device and where the workers run only change speed.)"""
        data = dataclasses.asdict(self)
        for k in ("workers", "executor", "threads_per_worker", "cache_mb", "ray_address", "ray_ship_blobs",
                  "check_scope", "device"):
            data.pop(k)
        return json.dumps({"settings": data, "tasks": tasks}, sort_keys=True)


SETTING_NAMES = [f.name for f in dataclasses.fields(EvolveSettings)]


def make_settings(**kwargs: Any) -> EvolveSettings:
    unknown = [k for k in kwargs if k not in SETTING_NAMES]
    if unknown:
        raise ConfigError(f"unknown evolve setting '{unknown[0]}'; known: {', '.join(SETTING_NAMES)}")
    return EvolveSettings(**kwargs)
