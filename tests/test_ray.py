"""The Ray executor (issue "Scale out"): same retained paths as the in-process executor for the same
seed, a worker killed mid-candidate is retried (and dropped when it dies again), and shipping blobs
through Ray's object store works. One local 2-CPU Ray cluster serves the whole module."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'mupath[ray]'; the dev extra "
                          "has it): the Ray executor is not tested")

from conftest import TINY_ROOT, TINY_SETTINGS, blobs_task  # noqa: E402
from mupath import System  # noqa: E402
from mupath.runtime.executors import DIE_ONCE  # noqa: E402
from mupath.runtime.jobs import TensorRef  # noqa: E402
from mupath.runtime.ray_executor import RayExecutor  # noqa: E402

TASKS = ["b1", "b2"]
SETTINGS = dict(TINY_SETTINGS, seed=3)


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield
    ray.shutdown()


def _system(path: Path) -> System:
    system = System.create(path, **TINY_ROOT)
    system.add_task(blobs_task("b1", seed=1))
    system.add_task(blobs_task("b2", seed=2))
    return system


def _summary(system: System) -> dict[str, tuple]:
    """What must not depend on the executor: hparams, who created each slot's component, quality.
    (Component and path ids are drawn from a stream seeded with the run id, which differs per store.)"""
    comps = system.manifest.components()
    out = {}
    for task, path in system.manifest.retained().items():
        if task in TASKS:
            creators = {slot: comps[cid].task for slot, cid in sorted(path.components.items())}
            out[task] = (path.hparams, creators, path.quality)
    return out


@pytest.fixture(scope="module")
def inprocess_summary(tmp_path_factory):
    system = _system(tmp_path_factory.mktemp("inprocess") / "store")
    system.evolve(TASKS, executor="inprocess", threads_per_worker=1, **SETTINGS)
    return _summary(system)


class Recording:
    """Wraps an executor: optionally marks the first job of the first `kills` generations to kill its
    worker, and records every result."""

    def __init__(self, inner, marker=None, kills: int = 1) -> None:
        self.inner, self.marker, self.kills, self.results = inner, marker, kills, []

    def run(self, jobs, on_done=None, on_step=None):
        if self.marker is not None and len(self.results) < self.kills:
            jobs = [jobs[0].replace(**{DIE_ONCE: str(self.marker(jobs[0]))}), *jobs[1:]]
        results = self.inner.run(jobs, on_done, on_step)
        self.results.append(results)
        return results

    def close(self):
        self.inner.close()


def _use(monkeypatch, executor) -> None:
    import mupath.search.evolve as evolve_module
    monkeypatch.setattr(evolve_module, "make_executor", lambda *a, **k: executor)


def test_same_retained_paths_as_inprocess(ray_cluster, tmp_path, inprocess_summary):
    system = _system(tmp_path / "store")
    report = system.evolve(TASKS, executor="ray", workers=2, threads_per_worker=1, **SETTINGS)
    assert all(not entry.failures for entry in report.tasks)
    assert _summary(system) == inprocess_summary
    assert sorted(system.check_immutability()) == TASKS


def test_killed_worker_is_retried_and_the_run_completes(ray_cluster, tmp_path, monkeypatch, inprocess_summary):
    executor = Recording(RayExecutor(2, 1), marker=lambda job: tmp_path / f"died-{job.path_id}")
    _use(monkeypatch, executor)
    system = _system(tmp_path / "store")
    report = system.evolve(TASKS, **SETTINGS)
    assert len(executor.results) == len(TASKS) * SETTINGS["generations"]
    first = executor.results[0][0]
    assert first.attempts == 2, first
    assert "WorkerCrashedError" in first.retried[0] or "died" in first.retried[0].lower()
    assert not first.failure
    others = [r for results in executor.results for r in results][1:]
    assert all(r.attempts == 1 and not r.failure for r in others)    # undisturbed
    assert all(not entry.failures for entry in report.tasks)
    assert _summary(system) == inprocess_summary          # a retry trains the same candidate again
    assert sorted(system.check_immutability()) == TASKS


def test_worker_dying_twice_drops_only_its_candidate(ray_cluster, tmp_path, monkeypatch):
    executor = Recording(RayExecutor(2, 1), marker=lambda job: tmp_path / "no-such-folder" / "marker")
    _use(monkeypatch, executor)
    system = _system(tmp_path / "store")
    report = system.evolve(["b1"], **dict(SETTINGS, generations=1))
    [results] = executor.results
    assert results[0].failure.startswith("worker died 2x, candidate dropped")
    assert not results[1].failure and results[1].improved
    [entry] = report.tasks
    assert entry.failures and "worker died 2x" in entry.failures[0]
    assert [c["task"] for c in system.manifest.commits()] == ["b1"]
    system.check_immutability()


def test_ship_blobs_through_the_object_store(ray_cluster, tmp_path, monkeypatch, inprocess_summary):
    inner = RayExecutor(2, 1, ship_blobs=True)
    _use(monkeypatch, Recording(inner))
    system = _system(tmp_path / "store")
    report = system.evolve(TASKS, **SETTINGS)
    assert all(not entry.failures for entry in report.tasks)    # workers read nothing from the store
    assert _summary(system) == inprocess_summary
    assert len(inner.traffic) == len(TASKS) * SETTINGS["generations"]
    first = inner.traffic[0]
    root_blobs = {c.blob for c in system.manifest.components().values() if c.task == "__root__"}
    sizes = {c.blob: system.blobs.path_of(c.blob).stat().st_size
             for c in system.manifest.components().values()}
    data = system.task_record("b1").data_blob
    # the first generation references root components and b1's data only: each is put once
    assert first["put_bytes"] == first["bytes"] <= sum(sizes[b] for b in root_blobs) + \
        system.blobs.path_of(data).stat().st_size
    assert all(t["put_bytes"] <= t["bytes"] for t in inner.traffic)
    assert sorted(system.check_immutability()) == TASKS


def test_a_blob_that_cannot_be_shipped_costs_only_its_candidate(ray_cluster, tmp_path, monkeypatch):
    class MissingBlob(Recording):
        def run(self, jobs, on_done=None, on_step=None):
            jobs = [jobs[0].replace(refs={**jobs[0].refs, "gone": TensorRef(blob="0" * 64)}), *jobs[1:]]
            return super().run(jobs, on_done, on_step)

    executor = MissingBlob(RayExecutor(2, 1, ship_blobs=True))
    _use(monkeypatch, executor)
    system = _system(tmp_path / "store")
    system.evolve(["b1"], **dict(SETTINGS, generations=1))
    [results] = executor.results
    assert results[0].failure.startswith("cannot ship " + "0" * 64)
    assert not results[1].failure and results[1].improved
