"""Redraw one task of a finished scale run: how much of its outcome is the luck of the draw?

With 6 candidates per task the scale run's outcome for a task depends on a handful of random draws (the
probe's sample, which seed is tried second, each child's mutations, the batches). This forks the scale
store as it stood just before TASK (a copy whose later tasks, and TASK itself, are dropped from the
retained set) and evolves TASK there again under `--draws` seeds with the scale settings. Draw 0 uses the
stream's own seed, so it must reproduce the stream's number on the machine that ran the stream.

    .venv/bin/python benchmarks/redraw.py --store runs/scale --task fashion_mnist_inverted [--draws 8]

The single-task reference comes from the scale run's cache (`<store>.single.json`) when TASK was in its
sample. About a minute per draw on 2 cores. Writes the section "redraw-TASK" of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import environment, table, write_section  # noqa: E402
from benchmarks.scale import adaptations, footprint, settings as scale_settings, single_key  # noqa: E402

if TYPE_CHECKING:
    from mupath import System


def fork_before(store: Path, task: str, dest: Path) -> None:
    """A copy of `store` as it stood before `task` was first evolved: blobs hard-linked (a store never
    rewrites a blob in place: writes go to a new file that replaces the name), the manifest copied with
    SQLite's backup API (a consistent snapshot), then every task first committed at or after `task`
    dropped (retained path, commits, check record) with `task`'s parent counters and the run log.
    Later tasks' components stay on disk, unreachable. Refuses a store where an earlier task's path was
    replaced after `task` (several iterations or agents): no such snapshot exists."""
    from mupath.system import MANIFEST
    src = sqlite3.connect(store / MANIFEST)
    try:
        first = dict(src.execute("SELECT task, MIN(id) FROM commits GROUP BY task").fetchall())
        if task not in first:
            raise SystemExit(f"error: the store has not evolved '{task}' yet; finish the scale run first")
        later = [t for t, c in first.items() if c >= first[task]]
        stale = src.execute("SELECT task FROM retained WHERE commit_id >= ? AND task NOT IN (%s)"
                            % ",".join("?" * len(later)), (first[task], *later)).fetchall()
        if stale:
            raise SystemExit(f"error: {stale[0][0]} was re-committed after {task}; a fork needs a one-pass stream")
        shutil.copytree(store, dest, copy_function=os.link,
                        ignore=shutil.ignore_patterns(MANIFEST, MANIFEST + "-*", "scratch"))
        dst = sqlite3.connect(dest / MANIFEST)
        src.backup(dst)
    finally:
        src.close()
    with dst:
        for name in ("retained", "commits", "checks"):
            dst.executemany(f"DELETE FROM {name} WHERE task = ?", [(t,) for t in later])
        dst.execute("DELETE FROM offspring WHERE task = ?", (task,))
        dst.execute("DELETE FROM runs")
    dst.close()


def stream_settings(system: "System", run_id: str, workers: int) -> dict:
    """The settings of the stream's run `run_id` (its resume key), with `workers` and the scale run's
    check scope, which the key leaves out."""
    stored = system.manifest.run_keys().get(run_id, {}).get("settings", {})
    return {**scale_settings(False, workers), **stored, "workers": workers}


def draw(store: Path, task: str, kw: dict, seed: int) -> dict:
    """Evolve `task` once on a fresh fork of `store`, with the stream's settings and `seed`. The fork
    lives beside the store (hard links cannot cross filesystems)."""
    from mupath import System
    folder = Path(tempfile.mkdtemp(dir=store.parent, prefix=".redraw-"))
    try:
        fork_before(store, task, folder / "s")
        system = System.open(folder / "s")
        t0 = time.perf_counter()
        system.evolve([task], **{**kw, "seed": seed})
        [commit] = system.history(task)
        owned, added, _ = footprint(system, task)
        path = system.manifest.retained()[task]
        comps = system.manifest.components()
        system.close()
        return dict(seed=seed, test=commit.test_accuracy, added=added, layers=int(path.hparams["num_layers"]),
                    owned=adaptations(owned),
                    blocks=[comps[c].task for s, c in sorted(path.components.items()) if s.startswith("block_")],
                    probe_top=commit.info.probe_top[0][0] if commit.info.probe_top else None,
                    wall=time.perf_counter() - t0)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def single_reference(store: Path, task: str, kw: dict, seeds: int = 3) -> list[float]:
    """The scale run's single-task accuracies of `task` (seeds 0..seeds-1), if it was in its sample;
    `kw`: the scale settings, which key that cache."""
    cache = store.with_name(store.name + ".single.json")
    runs = json.loads(cache.read_text()) if cache.exists() else {}
    return [runs[single_key(kw, k)][task] for k in range(seeds) if task in runs.get(single_key(kw, k), {})]


def parse_overrides(items: list[str]) -> dict:
    """`--hparam KEY=VALUE` items as a dict, parsed as `mupath evolve --hparam` parses them."""
    from mupath.errors import ConfigError
    from mupath.search.space import parse_key_values, parse_value
    try:
        return {k: parse_value(v) for k, v in parse_key_values(items, "--hparam").items()}
    except ConfigError as exc:
        sys.exit(f"error: {exc}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path("runs/scale"), help="a finished scale run's store")
    parser.add_argument("--task", default="fashion_mnist_inverted")
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--hparam", action="append", default=[], metavar="KEY=VALUE",
                        help="a variant: override one of the stream's hyperparameter defaults (repeatable), "
                             "e.g. '_mu_|clone:block_0=0.1'; the section is then redraw-TASK-TAG")
    parser.add_argument("--tag", default="variant", help="names a variant's section (with --hparam)")
    args = parser.parse_args()
    from mupath import System, stream_tasks
    from mupath.system import MANIFEST
    names = stream_tasks("stream69")
    if not (args.store / MANIFEST).exists():
        sys.exit(f"error: no store at {args.store}; run `make bench-scale` first or pass --store")
    if args.task not in names:
        sys.exit(f"error: '{args.task}' is not in stream69; pass one of its tasks with --task")
    if args.draws < 1:
        sys.exit("error: --draws must be at least 1")
    system = System.open(args.store)
    stream = system.history(args.task)
    if not stream:
        sys.exit(f"error: the store has not evolved '{args.task}' yet; finish the scale run first")
    kw = stream_settings(system, stream[0].run_id, args.workers)
    system.close()
    overrides = parse_overrides(args.hparam)
    kw = {**kw, "hparams": {**kw["hparams"], **overrides}}
    t0 = time.perf_counter()
    rows = []
    for seed in range(kw["seed"], kw["seed"] + args.draws):
        rows.append(draw(args.store, args.task, kw, seed))
        r = rows[-1]
        print(f"seed {seed}: test {r['test']:.3f} added {r['added']:,} layers {r['layers']} blocks {r['blocks']} "
              f"owns {r['owned']} {r['wall']:.0f}s", flush=True)
    single = single_reference(args.store, args.task, scale_settings(False, args.workers))
    bar = 0.9 * float(np.median(single)) if single else None
    tests = np.array([r["test"] for r in rows])
    lines = [f"- task: {args.task} (#{names.index(args.task) + 1} of stream69), {args.draws} draws on a fork of "
             f"`{args.store}` as it stood before it; settings as the scale run"
             + (f" except {overrides}" if overrides else "") + ", seed varied",
             f"- the stream's own result: {stream[0]['test_accuracy']:.3f}; draw {kw['seed']} (the stream's seed) "
             f"gives {rows[0]['test']:.3f}: "
             + ("a variant's draw (not expected to reproduce)" if overrides
                else "reproduced" if rows[0]["test"] == stream[0]["test_accuracy"]
                else "not reproduced (another machine's float order, or another code version)"),
             f"- test accuracy over the draws: median {np.median(tests):.3f}, min {tests.min():.3f}, "
             f"max {tests.max():.3f}"]
    if bar is not None:
        lines.append(f"- single-task median {np.median(single):.3f} (seeds: {', '.join(f'{a:.3f}' for a in single)}): "
                     f"the 0.9 bar is {bar:.3f}; {int((tests >= bar).sum())} of {len(rows)} draws clear it")
    name = f"{args.task}, variant {args.tag}" if overrides else args.task
    body = (f"## Redraw: {name} under other seeds\n\n" + environment()
            + f"- wall time {time.perf_counter() - t0:.0f} s\n\n" + "\n".join(lines) + "\n\n"
            + table(["seed", "test acc", "params added", "layers", "blocks from", "owns", "top probed seed"],
                    [[r["seed"], f"{r['test']:.3f}", f"{r['added']:,}", r["layers"], ", ".join(r["blocks"]),
                      ", ".join(r["owned"]), r["probe_top"]] for r in rows]))
    section = f"redraw-{args.task}" + (f"-{args.tag}" if overrides else "")
    print(write_section("benchmarks.md", section, body, title="mupath benchmarks"))


if __name__ == "__main__":
    main()
