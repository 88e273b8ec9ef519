"""Where candidates train (`--device`): names, resolution, one-line errors, Ray's GPU shares, and that
whatever trains on a device comes back to the CPU, where commits and checks run."""
from __future__ import annotations

import pytest
import torch

from conftest import TINY_ROOT, TINY_SETTINGS, blobs_task
from mupath import System
from mupath.errors import ConfigError
from mupath.runtime.device import check_device_name, resolve_device, wants_gpu
from mupath.runtime.ray_executor import gpus_per_candidate
from mupath.search.settings import EvolveSettings


@pytest.mark.parametrize("name", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", " cpu "])
def test_device_names_accepted(name):
    assert check_device_name(name) == name.strip()


@pytest.mark.parametrize("name", ["gpu", "CUDA", "cuda:", "cuda:x", "tpu", "", None, 0, "cpu:0"])
def test_bad_device_names_are_one_line_errors(name):
    with pytest.raises(ConfigError, match="device must be one of auto, cpu, cuda, cuda:N") as err:
        check_device_name(name)
    assert "\n" not in str(err.value)


def _cuda(monkeypatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_auto_falls_back_to_the_cpu_and_picks_a_visible_gpu(monkeypatch):
    _cuda(monkeypatch, 0)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu") == "cpu"
    _cuda(monkeypatch, 2)
    assert resolve_device("auto") == "cuda" and resolve_device("cuda:1") == "cuda:1"
    assert resolve_device("cpu") == "cpu"


def test_a_gpu_that_is_not_there_is_refused_with_the_fix(monkeypatch):
    _cuda(monkeypatch, 0)
    with pytest.raises(ConfigError, match="no CUDA device is visible.*use --device cpu or auto"):
        resolve_device("cuda")
    _cuda(monkeypatch, 2)
    with pytest.raises(ConfigError, match=r"only 2 CUDA device\(s\) are visible \(cuda:0..cuda:1\)"):
        resolve_device("cuda:2")


def test_settings_check_the_device_before_a_run_but_leave_a_cluster_s_gpus_to_ray(monkeypatch):
    _cuda(monkeypatch, 0)
    settings = EvolveSettings(device="cuda")                  # built anywhere; the machine is checked apart
    with pytest.raises(ConfigError, match="no CUDA device is visible"):
        settings.check_environment()
    with pytest.raises(ConfigError, match="device must be one of"):
        EvolveSettings(device="gpu")
    import mupath.runtime.ray_executor as ray_executor
    monkeypatch.setattr(ray_executor, "ray_available", lambda: True)
    on_cluster = EvolveSettings(device="cuda", executor="ray", ray_address="head:6379")
    on_cluster.check_environment()
    assert on_cluster.device == "cuda"
    with pytest.raises(ConfigError, match="Ray picks each candidate's GPU"):
        EvolveSettings(device="cuda:1", executor="ray", ray_address="head:6379")
    assert EvolveSettings().device == "cpu"                   # the bit-reproducible default


def test_only_sticky_cuda_errors_retire_a_worker():
    from mupath.runtime.executors import gpu_poisoned
    assert gpu_poisoned("AcceleratorError: CUDA error: an illegal memory access was encountered")
    assert gpu_poisoned("RuntimeError: CUDA error: device-side assert triggered")
    assert not gpu_poisoned("OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB")
    assert not gpu_poisoned("RuntimeError: loss became nan at step 3") and not gpu_poisoned(None)


def test_the_device_does_not_change_the_resume_key():
    assert EvolveSettings(device="cpu").resume_key(["a"]) == EvolveSettings(device="auto").resume_key(["a"])


def test_ray_gpu_shares():
    assert gpus_per_candidate("cpu", 8, 2) == 0
    assert gpus_per_candidate("auto", 0, 2) == 0            # auto on a CPU cluster: CPU candidates
    assert gpus_per_candidate("auto", 1, 2) == 0.5          # two candidates share one GPU
    assert gpus_per_candidate("cuda", 8, 4) == 1.0          # at most one GPU each
    assert gpus_per_candidate("cuda:3", 2, 4) == 0.5
    assert wants_gpu("cuda:3") and wants_gpu("cuda") and not wants_gpu("auto") and not wants_gpu("cpu")


def test_cli_refuses_a_bad_device_in_one_line(tmp_path):
    from test_cli import _fails, _ok
    store = str(tmp_path / "s")
    _ok(["init", store, "--root", "vit_tiny_patch16_224", "--image-size", 8, "--patch-size", 4, "--depth", 2, "--embed-dim", 32, "--num-heads", 2])
    _ok(["add-task", store, "digits", "--max-train", "200"])
    _fails(["evolve", store, "--device", "tpu"], "device must be one of")
    if not torch.cuda.is_available():
        _fails(["evolve", store, "--device", "cuda"], "no CUDA device is visible")


def _grow(tmp_path, device: str, **settings) -> System:
    system = System.create(tmp_path / f"{device.replace(':', '_')}-{len(settings)}", **TINY_ROOT)
    system.add_task(blobs_task("b1", seed=1))
    system.add_task(blobs_task("b2", seed=2))
    system.evolve(["b1", "b2"], device=device, **{**TINY_SETTINGS, "seed": 3, "head_first": True, **settings})
    return system


def test_cpu_training_records_its_device_and_commits_cpu_tensors(tmp_path):
    system = _grow(tmp_path, "cpu", hparams={"ds_flip_left_right": True})
    for commit in system.manifest.commits():
        assert {t["device"] for t in commit["info"]["tried"]} == {"cpu"}
    assert system.check_immutability() == ["b1", "b2"]     # raises on any difference


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_training_commits_tasks_the_cpu_checks_bit_for_bit(tmp_path):
    """Trained on the GPU, committed and checked on the CPU: every task re-runs bit-exactly, and its
    accuracy is a real one. Once in this process with augmentation (the CPU-drawn crops and flips
    moved to the GPU); once in two spawned workers with the root shared frozen and no augmentation,
    so the activation cache fills and serves on the GPU."""
    for settings in ({"hparams": {"ds_flip_left_right": True, "ds_crop": True, "ds_hue_delta": 0.1}},
                     {"workers": 2, "clone_root": "mutation"}):
        system = _grow(tmp_path, "cuda", **settings)
        for commit in system.manifest.commits():
            assert {t["device"] for t in commit["info"]["tried"]} == {"cuda"}
        assert system.check_immutability() == ["b1", "b2"]     # raises on any difference
        assert all(system.evaluate(t) > 0.6 for t in ("b1", "b2"))
