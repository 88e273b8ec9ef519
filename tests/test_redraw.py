"""benchmarks/redraw.py's fork: a store as it stood before one task, where re-evolving that task with
the stream's seed reproduces the stream's result, and the original store is untouched."""
from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest

from conftest import TINY_SETTINGS

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def redraw():
    sys.path.insert(0, str(ROOT))
    spec = importlib.util.spec_from_file_location("redraw_bench", ROOT / "benchmarks" / "redraw.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fork_before_a_task_reproduces_it_and_leaves_the_store_alone(tmp_path, tiny_system, digits_small,
                                                                     parity_task, redraw):
    from mupath import System
    system = tiny_system
    third = dataclasses.replace(digits_small, name="digits_again")
    for task in (digits_small, parity_task, third):
        system.add_task(task)
        system.evolve([task.name], **TINY_SETTINGS)
    before = {t: p.id for t, p in system.manifest.retained().items()}
    stream = system.history("parity")[0]
    redraw.fork_before(system.path, "parity", tmp_path / "fork")
    fork = System.open(tmp_path / "fork")
    assert set(fork.manifest.retained()) == {"__root__", "digits"}          # parity and later tasks dropped
    assert fork.history("parity") == [] and fork.history("digits_again") == []
    fork.evolve(["parity"], **TINY_SETTINGS)
    [again] = fork.history("parity")
    assert again.test_accuracy == stream.test_accuracy
    assert again.info.score == stream.info.score
    assert fork.check_immutability() and System.open(system.path).check_immutability()
    assert {t: p.id for t, p in System.open(system.path).manifest.retained().items()} == before


def test_fork_refuses_a_task_not_yet_evolved(tmp_path, tiny_system, digits_small, redraw):
    tiny_system.add_task(digits_small)
    with pytest.raises(SystemExit, match="has not evolved"):
        redraw.fork_before(tiny_system.path, "digits", tmp_path / "fork")


def test_variant_overrides_are_parsed_like_the_cli_and_bad_ones_refused(redraw):
    assert redraw.parse_overrides(["_mu_|clone:block_0=0.1", "opt_name=sgd", "ds_crop=true"]) == {
        "_mu_|clone:block_0": 0.1, "opt_name": "sgd", "ds_crop": True}
    assert redraw.parse_overrides([]) == {}
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        redraw.parse_overrides(["opt_lr"])
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        redraw.parse_overrides(["=0.1"])
