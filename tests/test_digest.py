"""Behaviour pinned on the machine that runs the suite, never against bits from another machine.

A digest (tests/digest.py) covers a small run's retained paths, every candidate the search tried with its
score, and the bytes of every task's test logits. Float bits depend on the CPU's kernels (the same torch
`AVX512` label gave different bits on an Intel Xeon and an AMD EPYC, issue 30), so a digest pinned in the
repository fails on a machine it was not computed on. What is compared instead, each time on one machine:
- the same seed and settings twice: the search and training are deterministic;
- the process pool against the in-process run: where a candidate trains changes nothing;
- a reopened store against the live system: what was written is what was computed.
A refactor is checked against the code before it on one machine with `make digest REF=<commit>`
(`python tests/digest.py --against REF`), which must print "same behaviour"."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from digest import digest, grow

from mupath import System


@pytest.fixture(scope="module")
def live(tmp_path_factory, digits_small, parity_task) -> tuple[Path, str]:
    """The scenario grown once in this process: its store and its digest."""
    folder = tmp_path_factory.mktemp("live") / "store"
    return folder, digest(grow(folder, digits_small, parity_task))


def test_same_seed_twice_is_bit_identical(tmp_path, live, digits_small, parity_task):
    assert digest(grow(tmp_path / "again", digits_small, parity_task)) == live[1]


def test_a_reopened_store_gives_the_live_digest(live):
    assert digest(System.open(live[0], read_only=True)) == live[1]


def test_the_digest_sees_a_change_of_behaviour(tmp_path, live, digits_small, parity_task):
    """The comparisons above can fail: one more training step per validation changes the digest."""
    changed = grow(tmp_path / "changed", digits_small, parity_task, steps_per_validation=16)
    assert digest(changed) != live[1]


@pytest.mark.slow
def test_the_process_pool_gives_the_in_process_digest(tmp_path, live, digits_small, parity_task):
    pool = grow(tmp_path / "pool", digits_small, parity_task, workers=2, threads_per_worker=1)
    assert digest(pool) == live[1]


@pytest.mark.slow
def test_the_refactor_check_passes_against_the_same_commit():
    """`tests/digest.py --against HEAD` on an unchanged tree: two interpreters, one from a worktree of
    HEAD, must agree. (It runs on the committed tree; local edits to mupath would show as a change.)"""
    repo = Path(__file__).resolve().parent.parent
    dirty = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--", "mupath"],
                           capture_output=True, text=True)
    if dirty.returncode != 0:
        pytest.skip("not a git checkout")
    if dirty.stdout.strip():
        pytest.skip("mupath/ has uncommitted changes: the check would compare them with HEAD")
    run = subprocess.run([sys.executable, str(repo / "tests" / "digest.py"), "--against", "HEAD"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "same behaviour" in run.stdout
