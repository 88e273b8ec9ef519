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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import environment, table, write_section  # noqa: E402
from benchmarks.scale import footprint, settings as scale_settings  # noqa: E402


def fork_before(store: Path, task: str, names: list[str], dest: Path) -> None:
    """A copy of `store` as it stood before `task` was evolved: blobs hard-linked (a store never rewrites
    a blob in place), manifest copied, `task` and every later task of `names` dropped from the retained
    set, and `task`'s parent counters cleared. Later tasks' components stay on disk, unreachable."""
    from mupath.system import MANIFEST
    later = names[names.index(task):]
    shutil.copytree(store, dest, copy_function=os.link, ignore=shutil.ignore_patterns(MANIFEST, "scratch"))
    shutil.copy2(store / MANIFEST, dest / MANIFEST)
    con = sqlite3.connect(dest / MANIFEST)
    with con:
        con.executemany("DELETE FROM retained WHERE task = ?", [(t,) for t in later])
        con.execute("DELETE FROM offspring WHERE task = ?", (task,))
    con.close()


def draw(store: Path, task: str, names: list[str], kw: dict, seed: int) -> dict:
    """Evolve `task` once on a fresh fork of `store`, with the scale settings and `seed`."""
    from mupath import System
    folder = Path(tempfile.mkdtemp(prefix="redraw-"))
    try:
        fork_before(store, task, names, folder / "s")
        system = System.open(folder / "s")
        t0 = time.perf_counter()
        system.evolve([task], **{**kw, "seed": seed})
        commit = [c for c in system.manifest.commits() if c["task"] == task][-1]
        owned, added, reused = footprint(system, task)
        path = system.manifest.retained()[task]
        comps = system.manifest.components()
        return dict(seed=seed, test=commit["test_accuracy"], added=added, layers=int(path.hparams["num_layers"]),
                    owned=[s for s in owned if s not in ("head", "norm")],
                    blocks=[comps[c].task for s, c in sorted(path.components.items()) if s.startswith("block_")],
                    probe_top=commit["info"].get("probe_top", [[None]])[0][0], wall=time.perf_counter() - t0)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def single_reference(store: Path, task: str) -> list[float]:
    """The scale run's single-task accuracies of `task` (one per seed), if it was sampled."""
    cache = store.with_name(store.name + ".single.json")
    runs = json.loads(cache.read_text()) if cache.exists() else {}
    return [done[task] for done in runs.values() if task in done]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", type=Path, default=Path("runs/scale"), help="a finished scale run's store")
    parser.add_argument("--task", default="fashion_mnist_inverted")
    parser.add_argument("--draws", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from mupath import System, stream_tasks
    from mupath.system import MANIFEST
    names = stream_tasks("stream69")
    if not (args.store / MANIFEST).exists():
        sys.exit(f"error: no store at {args.store}; run `make bench-scale` first or pass --store")
    if args.task not in names:
        sys.exit(f"error: '{args.task}' is not in stream69; pass one of its tasks with --task")
    stream = [c for c in System.open(args.store).manifest.commits() if c["task"] == args.task]
    if not stream:
        sys.exit(f"error: the store has not evolved '{args.task}' yet; finish the scale run first")
    kw = scale_settings(False, args.workers)
    t0 = time.perf_counter()
    rows = []
    for seed in range(kw["seed"], kw["seed"] + args.draws):
        rows.append(draw(args.store, args.task, names, kw, seed))
        r = rows[-1]
        print(f"seed {seed}: test {r['test']:.3f} added {r['added']:,} layers {r['layers']} blocks {r['blocks']} "
              f"owns {r['owned']} {r['wall']:.0f}s", flush=True)
    single = single_reference(args.store, args.task)
    bar = 0.9 * float(np.median(single)) if single else None
    tests = np.array([r["test"] for r in rows])
    lines = [f"- task: {args.task} (#{names.index(args.task) + 1} of stream69), {args.draws} draws on a fork of "
             f"`{args.store}` as it stood before it; settings as the scale run, seed varied",
             f"- the stream's own result: {stream[-1]['test_accuracy']:.3f}; draw {kw['seed']} (the stream's seed) "
             f"gives {rows[0]['test']:.3f}",
             f"- test accuracy over the draws: median {np.median(tests):.3f}, min {tests.min():.3f}, "
             f"max {tests.max():.3f}"]
    if bar is not None:
        lines.append(f"- single-task median {np.median(single):.3f} (seeds: {', '.join(f'{a:.3f}' for a in single)}): "
                     f"the 0.9 bar is {bar:.3f}; {int((tests >= bar).sum())} of {len(rows)} draws clear it")
    body = (f"## Redraw: {args.task} under other seeds\n\n" + environment()
            + f"- wall time {time.perf_counter() - t0:.0f} s\n\n" + "\n".join(lines) + "\n\n"
            + table(["seed", "test acc", "params added", "layers", "blocks from", "owns", "top probed seed"],
                    [[r["seed"], f"{r['test']:.3f}", f"{r['added']:,}", r["layers"], ", ".join(r["blocks"]),
                      ", ".join(r["owned"]), r["probe_top"]] for r in rows]))
    print(write_section("benchmarks.md", f"redraw-{args.task}", body, title="mupath benchmarks"))


if __name__ == "__main__":
    main()
