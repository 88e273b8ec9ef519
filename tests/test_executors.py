"""Executors without Ray: the process pool retries a candidate whose worker died once and drops it
when it dies again, without charging the candidates that died with it; Ray stays optional."""
from __future__ import annotations

import subprocess
from pathlib import Path
import sys

import pytest
import torch

from conftest import TINY_ROOT, TINY_SETTINGS, blobs_task
from mupath import ConfigError, System
from mupath.runtime.executors import DIE_ONCE, ProcessPoolExecutor, make_executor
from mupath.search.settings import make_settings


def test_importing_mupath_does_not_import_ray():
    code = ("import sys, mupath, mupath.runtime, mupath.search.evolve, mupath.cli.main; "
            "from mupath.runtime.executors import make_executor; make_executor('process', 2).close(); "
            "assert 'ray' not in sys.modules, 'ray was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_ray_executor_without_ray_is_a_one_line_config_error(monkeypatch):
    import mupath.runtime.ray_executor as ray_executor
    monkeypatch.setitem(sys.modules, "ray", None)           # `import ray` raises ImportError
    monkeypatch.setattr(ray_executor, "ray_available", lambda: False)
    for attempt in (lambda: make_settings(executor="ray", workers=2),
                    lambda: make_settings(ray_address="head:6379"),
                    lambda: make_executor("ray", 2, 1)):
        with pytest.raises(ConfigError) as err:
            attempt()
        assert "pip install 'mupath[ray]'" in str(err.value) and "\n" not in str(err.value)


def test_ray_settings_are_validated():
    with pytest.raises(ConfigError, match="ray executor only"):
        make_settings(executor="process", workers=2, ray_address="head:6379")
    with pytest.raises(ConfigError, match="inprocess, process or ray"):
        make_settings(executor="dask")
    key = make_settings().resume_key(["a"])
    assert key == make_settings(executor="process", workers=2).resume_key(["a"])


class KillFirst:
    """Process pool whose first job of generation g kills its worker: once (g = 0), always (g = 1)."""

    def __init__(self, inner, tmp_path) -> None:
        self.inner, self.tmp, self.results = inner, tmp_path, []

    def run(self, jobs, on_done=None, on_step=None):
        once = self.tmp / f"died-{jobs[0].path_id}"
        jobs = [jobs[0].replace(**{DIE_ONCE: str(once if not self.results else self.tmp / "no-such-folder" / "marker")}),
                *jobs[1:]]
        results = self.inner.run(jobs, on_done, on_step)
        self.results.append(results)
        return results

    def close(self):
        self.inner.close()


def test_process_pool_retries_a_dead_worker_once_then_drops_only_its_candidate(tmp_path, monkeypatch):
    import mupath.search.evolve as evolve_module
    executor = KillFirst(ProcessPoolExecutor(2, 1), tmp_path)
    monkeypatch.setattr(evolve_module, "make_executor", lambda *a, **k: executor)
    system = System.create(tmp_path / "store", **TINY_ROOT)
    system.add_task(blobs_task("b1", seed=1))
    report = system.evolve(["b1"], **dict(TINY_SETTINGS, seed=3))
    first, second = executor.results
    assert first[0].attempts == 2 and not first[0].failure                 # died once, retried, trained
    assert not first[1].failure                                             # its neighbour completed
    assert second[0].failure.startswith("worker died 2x, candidate dropped")
    assert not second[1].failure and second[1].steps > 0                   # never charged, never dropped
    [entry] = report.tasks
    assert len(entry.failures) == 1 and "worker died 2x" in entry.failures[0]
    assert [c["task"] for c in system.manifest.commits()] == ["b1"]


def test_unreachable_ray_address_fails_fast():
    from mupath.runtime.ray_executor import _reachable
    with pytest.raises(ConfigError, match="cannot reach the Ray cluster at '127.0.0.1:1'"):
        _reachable("127.0.0.1:1", timeout=5)
    _reachable("auto")                     # left to Ray
    with pytest.raises(ConfigError, match="not a TCP port"):
        _reachable("127.0.0.1:99999")


def test_an_unreachable_cluster_leaves_no_run_behind(tiny_system, digits_small):
    pytest.importorskip("ray")
    tiny_system.add_task(digits_small)
    with pytest.raises(ConfigError, match="cannot reach the Ray cluster"):
        tiny_system.evolve(["digits"], executor="ray", workers=2, ray_address="127.0.0.1:1", **TINY_SETTINGS)
    assert tiny_system.manifest.run_keys() == {}


def test_persistent_pool_serves_several_stores_without_mixing_their_roots(tmp_path):
    """The process pool stays up between evolve calls; two stores whose roots share component ids
    (`root-block_0`, ...) but not weights must not see each other's cached modules or activations:
    store B grown after store A in the same workers equals store B grown in fresh workers."""
    from mupath.runtime import executors
    settings = dict(TINY_SETTINGS, generations=1, workers=2, threads_per_worker=1)

    def grow(folder, seed):
        system = System.create(tmp_path / folder, **{**TINY_ROOT, "seed": seed})
        system.add_task(blobs_task("t", n=90))
        system.evolve(["t"], **settings)
        path = system.manifest.retained()["t"]
        return path.components, system.store.test_logits("t", path)

    executors.shutdown_workers()
    grow("a", seed=0)
    pool = executors._SHARED_POOL
    assert pool is not None and not pool.closed
    shared_b = grow("b", seed=1)
    assert executors._SHARED_POOL is pool                     # the same workers served both stores
    executors.shutdown_workers()
    fresh_b = grow("b2", seed=1)
    executors.shutdown_workers()
    assert shared_b[0].keys() == fresh_b[0].keys()
    assert torch.equal(shared_b[1], fresh_b[1])


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for a reaper that may never come in a container counts as gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return not any(line.startswith("State:") and "Z" in line for line in f)
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_pool_workers_exit_when_their_parent_is_killed():
    """SIGKILL of the process that owns the pool (nothing can clean up) must not leave its workers
    behind, idle and holding their memory."""
    import signal
    import time
    script = ("import os, time\n"
              "from mupath.runtime.executors import ProcessPoolExecutor\n"
              "if __name__ == '__main__':\n"
              "    pool = ProcessPoolExecutor(2, 1)._new_pool()\n"
              "    print(*sorted({f.result() for f in [pool.submit(os.getpid) for _ in range(4)]}), flush=True)\n"
              "    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        workers = [int(p) for p in proc.stdout.readline().split()]
        assert workers and all(_alive(p) for p in workers)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    deadline = time.monotonic() + 15
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in workers)


def test_one_floor_fill_for_all_workers_changes_no_bit(tmp_path, monkeypatch):
    """A pool of single-thread workers gets the frozen floor's activations filled once by the parent
    (`runtime.prefill`) instead of once per worker: the same retained path and test logits, bit for
    bit, as each worker filling its own; the jobs named the shared file while it existed."""
    from mupath.runtime import executors, prefill
    never = {"_mu_|clone:patch_embed": 0.0, "_mu_|clone:cls_token": 0.0, "_mu_|clone:pos_embed": 0.0,
             "_mu_|clone:block_0": 0.0, "_mu_|add:adapter_0": 0.0}
    from mupath.cli.demo import NO_AUGMENTATION
    settings = dict(TINY_SETTINGS, generations=1, workers=2, threads_per_worker=1, hparams=never,
                    ranges={**NO_AUGMENTATION, "ds_image_size": []})
    seen: list[bool] = []
    real = prefill.prefill_floors

    def watched(jobs, workers, threads):
        out = real(jobs, workers, threads)
        seen.extend(bool(j.cache.floor_file) and Path(j.cache.floor_file).exists() for j in out)
        return out

    def grow(folder):
        system = System.create(tmp_path / folder, **TINY_ROOT)
        system.add_task(blobs_task("t", n=90))
        system.evolve(["t"], **settings)
        path = system.manifest.retained()["t"]
        shared = {slot: cid for slot, cid in path.components.items() if cid.startswith("root-")}
        return shared, path.quality, system.store.test_logits("t", path)    # own ids are drawn per run

    executors.shutdown_workers()
    monkeypatch.setattr(executors, "prefill_floors", watched)
    shared = grow("shared")
    assert seen and all(seen)                  # every candidate read the one fill
    executors.shutdown_workers()
    monkeypatch.setattr(executors, "prefill_floors", lambda jobs, workers, threads: jobs)
    own = grow("own")
    executors.shutdown_workers()
    assert shared[:2] == own[:2] and torch.equal(shared[2], own[2])
