"""The method's claim at equal wall-clock on a task outside the built-in set (issue 32, items 5-6, one
seed): the evolved task against one fine-tuned model, one peft LoRA and one adapters model, each given
the wall time the evolution spent on the task, at a learning rate chosen on validation from a small grid.

    .venv/bin/python -m benchmarks.wallclock [--budget 90] [--images 3000] [--seed 0] [--task font_digits]

- evolved: a new store from the default root (the pretrained EfficientNet-Lite0 at 64 px) with the
  font-digits task of benchmarks/defaults.py, `evolve(time_budget=BUDGET, max_params=0.05)` (the built-in
  stream's benchmark's settings) with every other setting at its default; W = the task iteration's wall
  time (candidates, commit and no-forgetting check).
- finetune-all, lora:8 and adapters:32 at the learning rates of benchmarks/quality_wallclock.GRID
  (`benchmarks/timed.py`): each learning rate gets W seconds from model build to test accuracy. The
  learning rate with the best validation accuracy is reported, with its test accuracy; the grid's extra
  cost (the other learning rates' time) is reported beside it. Never tuned on test.
- `--after-stream`: the task as a user meets it, after others: the store first evolves the built-in
  stream (fashion_mnist, mnist, digits, lfw_faces) exactly as `benchmarks/quality.py --root efficientnet`
  does for this seed (`time_budget=60` each), then font_digits at BUDGET, so its search may start from
  what those tasks learned (µ2Net's setting: a new task joins a system). The baselines are unchanged:
  one model per task from the pretrained root, given font_digits' wall time.
- `--task font_letters`: capital letters rendered the same way (26 classes; benchmarks/defaults.GLYPHS),
  a harder task where 600 test images can tell methods apart (the digits sit at 99.5-100% for all).
Section "wallclock" (or "wallclock-stream"; "-font_letters" appended for the letters) of docs/benchmarks.md.
Results are kept in OUT/results.json (resumable; the stream's evolution resumes through `evolve`'s own
resume).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.defaults import GLYPHS, NAME, font_task, task_suffix
from benchmarks.quality import TASKS
from benchmarks.quality_wallclock import BUDGET, GRID, MAX_PARAMS, add_stream, reused_from
from benchmarks.report import environment, table, write_section
from benchmarks.timed import timed_baseline
from mupath import System
from mupath.store.atomic import atomic_write_bytes
from mupath.store.store import Store
from mupath.system import MANIFEST


def evolve_stream(system: System, seed: int) -> None:
    """The built-in stream evolved into `system` as the equal-wall-clock stream benchmark does (its tasks,
    budget and cap); a store that has them already is left as it is."""
    if all(name in system.manifest.retained() for name in TASKS):
        return
    add_stream(system)
    system.evolve(TASKS, time_budget=BUDGET, max_params=MAX_PARAMS, seed=seed, log=False)


def evolved(folder: Path, images: int, budget: float, seed: int, after_stream: bool = False,
            task: str = NAME) -> dict[str, Any]:
    """The font task `task` evolved into a new store at `folder` (see the module docstring)."""
    system = System.open(folder) if (folder / MANIFEST).exists() else System.create(folder)
    if after_stream:
        evolve_stream(system, seed)
    if task not in system.tasks:
        system.add_task(font_task(images, task))
    report = system.evolve([task], time_budget=budget, max_params=MAX_PARAMS, seed=seed, log=False)
    status = {s.task: s for s in system.status()}[task]
    entry = report.tasks[0]
    return {"wall": entry.wall_time, "test": entry.test_accuracy, "val": entry.val_accuracy,
            "accounted": status.accounted_params, "root_params": system.root_params,
            "candidates": entry.candidates, "reused": reused_from(system, task),
            "checked": sorted(system.check_immutability())}   # raises ForgettingError on any changed bit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=90.0)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/wallclock"))
    parser.add_argument("--task", choices=sorted(GLYPHS), default=NAME, help="the font task (default: the digits)")
    parser.add_argument("--after-stream", action="store_true",
                        help="evolve the built-in stream into the store first (section wallclock-stream)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def save() -> None:
        atomic_write_bytes(path, json.dumps(results, indent=1).encode())

    if "evolved" not in results:
        results["evolved"] = evolved(args.out / "evolved", args.images, args.budget, args.seed, args.after_stream,
                                     args.task)
        save()
    seconds = float(results["evolved"]["wall"])
    store = Store.open(args.out / "evolved", read_only=True)
    for method, grid in GRID.items():
        for lr in grid:
            key = f"{method}@{lr:g}"
            if key not in results:
                results[key] = timed_baseline(store, args.task, method, lr, seconds, args.seed)
                save()
                print(key, results[key], flush=True)
    report(results, args)


def best_baseline(results: dict[str, Any], method: str) -> dict[str, Any]:
    """The run of `method` at its validation-chosen learning rate (ties: the first in the grid)."""
    return max((results[f"{method}@{lr:g}"] for lr in GRID[method]), key=lambda r: r["val"])


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    ev = results["evolved"]
    rows: list[list[object]] = [["evolved", f"time budget {args.budget:g} s", f"{ev['val']:.4f}",
                                 f"**{ev['test']:.4f}**", f"{ev['wall']:.0f}", "-", f"{ev['accounted'] / 1e3:,.1f}k"]]
    for method, grid in GRID.items():
        runs = [results[f"{method}@{lr:g}"] for lr in grid]
        best = best_baseline(results, method)
        grid_cost = sum(r["wall"] for r in runs) - best["wall"]
        tried = ", ".join(f"{r['lr']:g}: {r['val']:.4f}" for r in runs)
        rows.append([method, f"lr {best['lr']:g} (val {tried})", f"{best['val']:.4f}", f"**{best['test']:.4f}**",
                     f"{best['wall']:.0f}", f"+{grid_cost:.0f}", f"{best['trainable'] / 1e3:,.1f}k"])
    where = ("in a store that first evolved the built-in stream (fashion_mnist, mnist, digits, lfw_faces; "
             f"`time_budget={BUDGET:g}` each, this seed) from the default root" if args.after_stream
             else "from the default root")
    body = "\n".join([
        f"## Equal wall-clock on a task outside the built-in set{', after the stream' if args.after_stream else ''} "
        f"(one seed){task_suffix(args.task, ': ')}", "", environment().rstrip(), "",
        f"{args.task} ({args.images} images rendered from matplotlib's fonts, never seen by mupath), seed {args.seed}, "
        f"{where} (EfficientNet-Lite0, ImageNet-pretrained, 64 px); evolved with `time_budget="
        f"{args.budget:g}, max_params={MAX_PARAMS:g}` (the built-in stream's benchmark's settings). The evolved "
        "task's wall time "
        "(candidates, commit, no-forgetting check) is every baseline's, per learning rate; the learning rate is "
        "chosen on validation, and the other rates' time is the grid's extra cost. Parameters: the evolved task's "
        "accounted parameters (µ2Net rule), a baseline's trainable ones (finetune-all: its whole model).", "",
        table(["method", "learning rate", "val acc", "test acc", "wall s", "grid extra s", "params"], rows),
        "", f"Components of other tasks the evolved task's path reuses: {', '.join(ev.get('reused', [])) or 'none'}; "
        "tasks re-checked bit-identical after it: "
        f"{', '.join(ev.get('checked', [])) or 'none'}."])
    write_section("benchmarks.md", section_name(args.after_stream, args.task), body)


def section_name(after_stream: bool, task: str) -> str:
    """The docs/benchmarks.md section of a run: "wallclock", "-stream" after the stream, "-<task>" for a
    font task other than the digits."""
    return "wallclock" + ("-stream" if after_stream else "") + task_suffix(task)


if __name__ == "__main__":
    main()
