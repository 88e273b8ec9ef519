"""Crash safety: `mupath evolve` killed with SIGKILL mid-run, then run again, loses no commit and
resumes where it stopped."""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import TINY_ROOT, blobs_task
from mupath import System

ARGS = ["--generations", "2", "--candidates", "2", "--steps-per-validation", "40", "--validations", "2",
        "--batch-size", "32", "--val-limit", "200", "--seed", "5"]


def _commits(store) -> int:
    try:
        db = sqlite3.connect(f"file:{store}/manifest.sqlite?mode=ro", uri=True, timeout=30)
        try:
            return db.execute("SELECT COUNT(*) FROM commits").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error:
        return 0


@pytest.mark.slow
def test_kill_9_mid_evolution_then_resume(tmp_path, digits_small):
    store = tmp_path / "store"
    system = System.create(store, **TINY_ROOT)
    names = ["digits", "b1", "b2"]
    system.add_task(digits_small)
    system.add_task(blobs_task("b1", seed=1))
    system.add_task(blobs_task("b2", seed=2))
    cmd = [sys.executable, "-m", "mupath.cli.main", "evolve", str(store), "--tasks", ",".join(names), *ARGS]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    child = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while _commits(store) < 1 and time.time() < deadline and child.poll() is None:
        time.sleep(0.05)
    time.sleep(np.random.default_rng().uniform(0.0, 0.5))     # land somewhere in the next task's work
    assert child.poll() is None, "the child finished before it could be killed; give it more work"
    child.send_signal(signal.SIGKILL)
    child.wait()
    survivor = System.open(store)
    committed = {c["task"]: c["path_id"] for c in survivor.manifest.commits()}
    assert committed, "the child was killed before its first commit; raise the deadline"
    before = {t: survivor.logits(t, survivor.store.task_data(t)["test.x"].permute(0, 2, 3, 1).numpy())
              for t in committed}
    # run again: the same command resumes the unfinished run and skips committed tasks
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-2000:]
    final = System.open(store)
    runs = final.manifest.db.execute("SELECT status FROM runs").fetchall()
    assert runs == [("done",)]                                   # one run, resumed and finished
    commits = final.manifest.commits()
    assert sorted(c["task"] for c in commits) == sorted(names)   # each task committed exactly once
    for task, path_id in committed.items():
        assert final.manifest.retained()[task].id == path_id
        now = final.logits(task, final.store.task_data(task)["test.x"].permute(0, 2, 3, 1).numpy())
        assert (now == before[task]).all()
    assert sorted(final.check_immutability()) == sorted(names)
    assert not (store / "scratch").exists() or not any((store / "scratch").iterdir())
