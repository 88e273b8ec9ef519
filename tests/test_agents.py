"""Concurrent agents on one store (µ3Net): two `mupath evolve` processes, each evolving its own task,
commit into the same store at the same time. Every commit lands, no task changes, and the manifest
stays consistent (SQLite `BEGIN IMMEDIATE` serialises the commits; each agent adopts the other's
newly retained paths at every generation)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from conftest import TINY_ROOT, blobs_task
from mupath import System
from mupath.store.records import ROOT_TASK

ITERATIONS = 10

# Two agents race: B's commit drops the components of B's old path while A's best candidate still
# borrows them; without `Store.pin_blob` / component revival in `Store.commit` (and the snapshot
# read in `check_immutability`) agent A fails in about 2 runs out of 5.
ARGS = ["--iterations", str(ITERATIONS), "--generations", "1", "--candidates", "1",
        "--steps-per-validation", "40", "--validations", "1", "--batch-size", "32", "--val-limit", "100"]


# One `mupath` CLI agent that imports everything first, says it is ready and waits for the go signal:
# the agents' runs last a few seconds, less than the skew of two torch imports on a loaded 2-core
# machine, so without the barrier one agent could finish before the other starts (no overlap).
_AGENT = """
import sys, time
from pathlib import Path
from mupath.cli.main import app
import mupath.search.evolve
ready, go, args = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
ready.touch()
while not go.exists():
    time.sleep(0.01)
sys.argv = ["mupath", *args]
app()
"""


def _consistent(system: System) -> None:
    """Every retained path's components exist, with their blobs; every component is used."""
    comps = system.manifest.components()
    retained = system.manifest.retained()
    used = set()
    for task, path in retained.items():
        for slot, cid in path.components.items():
            assert cid in comps, f"task {task}: component {cid} ({slot}) of its retained path is missing"
            assert system.blobs.exists(comps[cid].blob), f"task {task}: blob of {cid} is missing"
            used.add(cid)
    assert set(comps) == used, f"unused components left: {sorted(set(comps) - used)}"
    for task, check in system.manifest.checks().items():
        assert task in retained and system.blobs.exists(check.logits_blob)


@pytest.mark.slow
def test_two_agents_evolve_their_own_tasks_into_one_store(tmp_path):
    store = tmp_path / "store"
    system = System.create(store, **TINY_ROOT)
    system.add_task(blobs_task("a", seed=1))
    system.add_task(blobs_task("b", seed=2, classes=4))
    system.close()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    go = tmp_path / "go"
    agents = {task: subprocess.Popen([sys.executable, "-c", _AGENT, str(tmp_path / f"ready-{task}"), str(go),
                                      "evolve", str(store), "--tasks", task, "--seed", str(seed), *ARGS],
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
              for seed, task in enumerate(["a", "b"])}
    deadline = time.time() + 300
    while not all((tmp_path / f"ready-{t}").exists() for t in agents) and time.time() < deadline:
        time.sleep(0.05)               # both have imported torch and mupath: start them together
    go.touch()
    for task, agent in agents.items():
        _, err = agent.communicate(timeout=max(1, deadline - time.time()))
        assert agent.returncode == 0, f"agent {task} failed: {err[-2000:]}"

    final = System.open(store)
    commits = final.manifest.commits()
    assert [c["task"] for c in commits].count("a") == ITERATIONS
    assert [c["task"] for c in commits].count("b") == ITERATIONS
    for task in ("a", "b"):                                  # one row per task iteration, none lost
        assert sorted(c["iteration"] for c in commits if c["task"] == task) == list(range(ITERATIONS))
    order = [c["task"] for c in commits]
    switches = sum(x != y for x, y in zip(order, order[1:]))
    assert switches >= 2, f"the agents did not overlap (commit order {''.join(order)}); give them more work"
    runs = final.manifest.db.execute("SELECT status FROM runs").fetchall()
    assert runs == [("done",), ("done",)]
    _consistent(final)
    assert sorted(final.check_immutability()) == ["a", "b"]
    retained = final.manifest.retained()
    for c in commits:                       # the last commit of each task is the retained path's
        if c["info"].get("changed"):
            last = [d for d in commits if d["task"] == c["task"] and d["info"].get("changed")][-1]
            assert retained[c["task"]].id == last["path_id"]
    assert ROOT_TASK in retained
    print(json.dumps({"order": "".join(order), "switches": switches}))
