"""How close a task iteration lands to its wall-clock budget (issue 32, item 2), on a task outside the
built-in set, from the default root, as a newcomer runs it.

    .venv/bin/python -m benchmarks.budget [--budgets 60,180] [--images 3000]

For each budget: a new store from the default root (the pretrained EfficientNet-Lite0 at 64 px), the
font-digits task of benchmarks/defaults.py (3,000 images rendered from matplotlib's fonts: nothing
mupath has seen), and one `evolve` with `time_budget` set and every other setting at its default (what
`mupath evolve STORE` does with no options, at 180 s). Reported: the task iteration's wall time
(candidates, commit and no-forgetting check) against the budget, its rungs, and the test accuracy.
Section "budget" of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from benchmarks.defaults import NAME, font_task
from benchmarks.report import environment, table, write_section
from mupath import System


def run(budget: float, images: int, out: Path) -> list[object]:
    folder = out / f"budget-{budget:g}"
    shutil.rmtree(folder, ignore_errors=True)
    system = System.create(folder)
    system.add_task(font_task(images))
    t0 = time.perf_counter()
    report = system.evolve([NAME], time_budget=budget, log=False)
    wall = time.perf_counter() - t0
    entry = report.tasks[0]
    (commit,) = system.history(NAME)
    tried = commit.info.tried or []
    rungs = [sum(t.generation == k for t in tried) for k in range(1 + max((t.generation for t in tried), default=0))]
    return [f"{budget:g}", f"{entry.wall_time:.0f}", f"{wall:.0f}", f"{100 * (entry.wall_time / budget - 1):+.1f}%",
            " / ".join(str(n) for n in rungs), f"{entry.test_accuracy:.4f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budgets", default="60,180")
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--out", type=Path, default=Path("runs/budget"))
    args = parser.parse_args()
    rows = [run(float(b), args.images, args.out) for b in args.budgets.split(",")]
    body = "\n".join([
        "## A task iteration against its wall-clock budget", "", environment().rstrip(), "",
        f"{NAME} ({args.images} images, outside the built-in set) from the default root, `evolve` with "
        "`time_budget` and every other setting at its default (one worker). \"task iteration\" is the "
        "evolve report's wall time of the task (candidates, commit, no-forgetting check); \"evolve\" adds "
        "the run's start and end.", "",
        table(["budget s", "task iteration s", "evolve s", "vs budget", "candidates per rung", "test acc"], rows)])
    write_section("benchmarks.md", "budget", body)


if __name__ == "__main__":
    main()
