"""Crash benchmark (issue "Reliability"): `mupath evolve` is killed with SIGKILL again and again, at
random moments and at the two most dangerous points of a commit, then resumed; no committed task may
be lost or changed and no half-written file may ever be read. Results go to docs/reliability.md
(section "crash").

    .venv/bin/python benchmarks/crash.py [--trials 30] [--seed 0] [--workdir DIR] [--no-write]

Each trial copies a tiny store (3 tasks) and runs `python -m mupath.cli.main evolve STORE ...` in a
child process. The trial's first run is killed by one of:

- `random`: SIGKILL from outside at a uniform moment of the evolution (after start-up);
- `blob-write`: the child kills itself half-way through writing its k-th blob's temporary file;
- `manifest-commit`: the child kills itself inside its k-th manifest transaction, just before COMMIT
  (`MUPATH_CRASH_POINT` / `MUPATH_CRASH_AFTER`, see mupath/store/faults.py).

After each kill the trial either resumes (the same command, run to completion) or only verifies the
store and kills the next run too. Every task seen committed (by polling the manifest while the child
runs, and after each kill) must keep its retained path id and its exact test logits to the end; at the
end `verify_store` must find nothing but leftovers, and no command may have read a corrupted blob.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from mupath import System, load_task  # noqa: E402
from mupath.errors import StoreError  # noqa: E402
from mupath.store.faults import POINTS  # noqa: E402
from mupath.store.verify import verify_store  # noqa: E402
from mupath.data.synthetic import quadrant_task  # noqa: E402
from mupath.train.evaluate import fixed_threads, logits_of  # noqa: E402

TINY_ROOT = dict(root="vit_tiny_patch16_224", image_size=8, patch_size=4, depth=2, embed_dim=32,
                 num_heads=2, seed=0)
TASKS = ["digits", "b1", "b2"]
EVOLVE_ARGS = ["--generations", "1", "--candidates", "2", "--steps-per-validation", "10", "--validations",
               "1", "--batch-size", "32", "--val-limit", "200", "--seed", "3"]
MODES = ("random", *POINTS)
CHILD_TIMEOUT = 300


blobs_task = quadrant_task


def make_template(path: Path) -> Path:
    system = System.create(path, **TINY_ROOT)
    system.add_task(load_task("digits", max_train=400))
    system.add_task(blobs_task("b1", seed=1))
    system.add_task(blobs_task("b2", seed=2))
    system.close()
    return path


def evolve_cmd(store: Path) -> list[str]:
    return [sys.executable, "-m", "mupath.cli.main", "evolve", str(store), "--tasks", ",".join(TASKS), *EVOLVE_ARGS]


def child_env(point: str | None = None, after: int = 1) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MUPATH_CRASH")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    if point:
        env.update(MUPATH_CRASH_POINT=point, MUPATH_CRASH_AFTER=str(after))
    return env


def _query(store: Path, sql: str) -> list[tuple] | None:
    """A read-only look at the manifest while a child may be writing it (None if not readable now)."""
    try:
        db = sqlite3.connect(f"file:{store}/manifest.sqlite?mode=ro", uri=True, timeout=0.5)
        try:
            return db.execute(sql).fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return None


def committed_paths(store: Path) -> dict[str, str]:
    rows = _query(store, "SELECT task, path_id FROM retained WHERE task != '__root__'")
    return dict(rows or [])


def run_done(store: Path) -> bool:
    return _query(store, "SELECT status FROM runs") == [("done",)]


@dataclasses.dataclass
class Child:
    returncode: int
    output: str
    wall: float
    seen: dict[str, str]          #: retained paths seen by polling while it ran
    started_at: float | None      #: seconds from launch until its run row appeared


def run_child(store: Path, env: dict[str, str], kill_after: float | None = None) -> Child:
    """Run one evolve; if `kill_after` is given, SIGKILL it that many seconds after its run starts."""
    out = tempfile.TemporaryFile()
    t0 = time.perf_counter()
    proc = subprocess.Popen(evolve_cmd(store), env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    seen: dict[str, str] = {}
    started: float | None = None
    deadline = t0 + CHILD_TIMEOUT
    while proc.poll() is None and time.perf_counter() < deadline:
        seen.update(committed_paths(store))
        if started is None and _query(store, "SELECT 1 FROM runs WHERE status='running'"):
            started = time.perf_counter() - t0
        if kill_after is not None and started is not None and time.perf_counter() - t0 >= started + kill_after:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    if proc.poll() is None and kill_after is None:
        proc.kill()                          # hung past the timeout
    proc.wait()
    out.seek(0)
    return Child(proc.returncode, out.read().decode(errors="replace"), time.perf_counter() - t0, seen, started)


def test_logits(store: Path) -> dict[str, tuple[str, torch.Tensor]]:
    """(retained path id, test logits) of every committed task, rebuilt from the store (fresh process
    state: a new System, so nothing cached from an earlier look)."""
    system = System.open(store)
    try:
        out = {}
        for task, path in system.manifest.retained().items():
            if task == "__root__":
                continue
            model = system.store.build_model(path)
            with fixed_threads(1):
                logits = logits_of(model, system.store.task_data(task)["test.x"], int(path.hparams["ds_image_size"]))
            out[task] = (path.id, logits)
        return out
    finally:
        system.close()


@dataclasses.dataclass
class Totals:
    trials: int = 0
    kills: dict[str, int] = dataclasses.field(default_factory=lambda: {m: 0 for m in MODES})
    runs: int = 0
    resumes: int = 0
    resumes_ok: int = 0
    verifies: int = 0
    committed_seen: int = 0
    lost: int = 0
    changed: int = 0
    duplicate_commits: int = 0
    half_written_reads: int = 0
    serious_problems: int = 0
    leftovers: int = 0
    not_finished: int = 0
    failures: list[str] = dataclasses.field(default_factory=list)


def _note_output(totals: Totals, child: Child, what: str) -> None:
    totals.runs += 1
    totals.half_written_reads += child.output.count("corrupted")
    if child.returncode not in (0, -signal.SIGKILL):
        totals.failures.append(f"{what}: exit {child.returncode}: {child.output.strip().splitlines()[-1:]}")


def _compare(totals: Totals, ref: dict[str, tuple[str, torch.Tensor]], now: dict[str, tuple[str, torch.Tensor]],
             seen: dict[str, str], where: str) -> None:
    for task, path_id in seen.items():
        if task not in now or now[task][0] != path_id:
            totals.lost += 1
            totals.failures.append(f"{where}: task {task} (path {path_id}) lost")
    for task, (path_id, logits) in ref.items():
        if task in now and now[task][0] == path_id and not torch.equal(now[task][1], logits):
            totals.changed += 1
            totals.failures.append(f"{where}: task {task} changed its test logits")


def run_trial(index: int, template: Path, work: Path, rng: random.Random, evolve_s: float,
              totals: Totals) -> None:
    store = work / f"trial-{index:03d}"
    shutil.copytree(template, store)
    mode = MODES[index % len(MODES)]
    max_kills = rng.choice([1, 1, 2, 3])
    seen: dict[str, str] = {}                     # every commit ever observed, task -> path id
    ref: dict[str, tuple[str, torch.Tensor]] = {}  # first logits observed for each committed task
    finished = False
    for kill_round in range(max_kills):
        remaining = max(1, len([t for t in TASKS if t not in committed_paths(store)]))
        this_mode = mode if kill_round == 0 else rng.choice(MODES)
        if this_mode == "random":
            child = run_child(store, child_env(), kill_after=rng.uniform(0.0, evolve_s))
        elif this_mode == "blob-write":          # every task commit writes >= 2 blobs (head, logits)
            child = run_child(store, child_env(this_mode, rng.randint(1, 2 * remaining)))
        else:                                    # transactions: start_run, one commit per task, finish
            child = run_child(store, child_env(this_mode, rng.randint(1, remaining + 1)))
        _note_output(totals, child, f"trial {index} round {kill_round} ({this_mode})")
        seen.update(child.seen)
        if child.returncode == -signal.SIGKILL:
            totals.kills[this_mode] += 1
        try:
            now = test_logits(store)
        except StoreError as exc:
            totals.half_written_reads += "corrupted" in str(exc)
            totals.failures.append(f"trial {index}: store unreadable after a kill: {exc}")
            return
        _compare(totals, ref, now, seen, f"trial {index} after kill {kill_round}")
        for task, value in now.items():
            ref.setdefault(task, value)
            seen.setdefault(task, value[0])
        if child.returncode == 0 or run_done(store):   # killed after its run was marked done: complete
            finished = True
            break
        if kill_round + 1 < max_kills and rng.random() < 0.5:   # only verify, then kill the next run too
            system = System.open(store)
            try:
                report = verify_store(system.store)
            finally:
                system.close()
            totals.verifies += 1
            totals.serious_problems += len(report.serious)
            totals.half_written_reads += sum("corrupted" in p.message for p in report.serious)
            totals.failures += [f"trial {index} verify: {p.line()}" for p in report.serious]
            continue
        break
    if not finished:
        child = run_child(store, child_env())
        totals.resumes += 1
        totals.resumes_ok += child.returncode == 0
        _note_output(totals, child, f"trial {index} resume")
        seen.update(child.seen)
        if child.returncode != 0:
            totals.not_finished += 1
    system = System.open(store)
    try:
        report = verify_store(system.store)
        statuses = [r[0] for r in system.manifest.db.execute("SELECT status FROM runs")]
        per_task = [r[0] for r in system.manifest.db.execute("SELECT task FROM commits")]
    finally:
        system.close()
    totals.serious_problems += len(report.serious)
    totals.leftovers += len(report.problems) - len(report.serious)
    totals.half_written_reads += sum("corrupted" in p.message for p in report.serious)
    totals.failures += [f"trial {index} final verify: {p.line()}" for p in report.serious]
    if statuses != ["done"] or sorted(per_task) != sorted(TASKS):
        totals.duplicate_commits += max(0, len(per_task) - len(set(per_task)))
        totals.failures.append(f"trial {index}: runs {statuses}, commits {sorted(per_task)}")
    _compare(totals, ref, test_logits(store), seen, f"trial {index} end")
    totals.committed_seen += len(ref)
    totals.trials += 1
    shutil.rmtree(store, ignore_errors=True)


def run_trials(trials: int = 30, seed: int = 0, workdir: Path | None = None,
               progress: bool = False) -> dict[str, Any]:
    """Run the benchmark; returns its figures (also used by tests/test_reliability.py)."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    own = workdir is None
    work = Path(tempfile.mkdtemp(prefix="mupath-crash-")) if own else Path(workdir)
    work.mkdir(parents=True, exist_ok=True)
    try:
        template = make_template(work / "template")
        calib = work / "calibration"
        shutil.copytree(template, calib)
        child = run_child(calib, child_env())
        if child.returncode != 0:
            raise RuntimeError(f"the calibration run failed: {child.output[-2000:]}")
        evolve_s = max(0.2, child.wall - (child.started_at or 0.0))
        shutil.rmtree(calib, ignore_errors=True)
        rng = random.Random(seed)
        totals = Totals()
        for i in range(trials):
            run_trial(i, template, work, rng, evolve_s, totals)
            if progress:
                print(f"trial {i + 1}/{trials}: kills {totals.kills}, resumes {totals.resumes_ok}/{totals.resumes}, "
                      f"lost {totals.lost}, half-written reads {totals.half_written_reads}, "
                      f"{time.perf_counter() - started:.0f}s", flush=True)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    figures = dataclasses.asdict(totals)
    figures.update(wall_s=time.perf_counter() - started, evolve_s=evolve_s, startup_s=child.started_at or 0.0)
    return figures


def render(f: dict[str, Any], trials: int) -> str:
    from benchmarks.report import environment, table
    kills = f["kills"]
    rows = [
        ["trials", f["trials"]],
        ["child runs (evolve processes)", f["runs"]],
        ["SIGKILLs at a random moment", kills["random"]],
        ["SIGKILLs half-way through a blob write", kills["blob-write"]],
        ["SIGKILLs just before a manifest COMMIT", kills["manifest-commit"]],
        ["verify-only passes between kills", f["verifies"]],
        ["resumes that completed / resumes", f"{f['resumes_ok']} / {f['resumes']}"],
        ["committed tasks tracked", f["committed_seen"]],
        ["**committed tasks lost**", f["lost"]],
        ["**committed tasks whose logits changed**", f["changed"]],
        ["**half-written files read** (\"corrupted\" errors)", f["half_written_reads"]],
        ["serious verify problems at the end", f["serious_problems"]],
        ["leftovers at the end (orphans, `verify --fix` deletes)", f["leftovers"]],
        ["duplicate commits", f["duplicate_commits"]],
        ["wall time", f"{f['wall_s']:.0f} s ({f['wall_s'] / max(1, trials):.1f} s per trial)"],
    ]
    text = (f"### Crash benchmark (`benchmarks/crash.py`)\n\n{environment()}"
            f"- setup: tiny root (image 8, patch 4, depth 2, dim 32), tasks digits (400 train) + 2 synthetic, "
            f"`evolve {' '.join(EVOLVE_ARGS)}`; one evolve takes {f['startup_s']:.1f} s to start and "
            f"{f['evolve_s']:.1f} s to evolve\n\n" + table(["measure", "value"], rows) + "\n")
    if f["failures"]:
        text += "\nFailures:\n\n" + "\n".join(f"- {x}" for x in f["failures"][:20]) + "\n"
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the stores here (default: a temp dir)")
    parser.add_argument("--no-write", action="store_true", help="do not update docs/reliability.md")
    args = parser.parse_args()
    figures = run_trials(args.trials, args.seed, args.workdir, progress=True)
    text = render(figures, args.trials)
    print(text)
    for line in figures["failures"]:
        print("FAILURE:", line)
    if not args.no_write:
        from benchmarks.report import write_section
        print(f"wrote {write_section('reliability.md', 'crash', text, 'mupath reliability')}")
    bad = figures["lost"] + figures["changed"] + figures["half_written_reads"] + figures["serious_problems"]
    return 1 if bad or figures["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
