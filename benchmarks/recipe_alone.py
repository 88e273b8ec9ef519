"""What the search's exploration costs a small task at a short budget (issue 32, the outside target): the
first wave's every-block adapters recipe trained alone, as one run, for the wall time the evolved task
took, beside the evolved task and the baselines of the same `benchmarks/wallclock.py` runs.

    .venv/bin/python -m benchmarks.recipe_alone --runs runs/wallclock90 runs/wallclock90-seed1 ... \\
        --seeds 0,1,... [--task font_letters]

- For each run folder (an output of `benchmarks/wallclock.py` from an empty store, with its seed): the
  model the search's recipe `Recipe("adapter", 0.0, lr)` builds (a residual adapter of the search's width
  before every block, a new head, the root's neck frozen as in every path the search builds under the
  benchmarks' cap) trained at the recipe's learning rate by `benchmarks/timed.timed_baseline`, given the
  evolved task's wall time (build, calibration, training, validations and test included). No learning rate
  grid: it is the search's own starting point, not a tuned baseline.
- Reported per seed and as mean [min-max]: the evolved task's test (val) accuracy and the shape its path
  ended with, the recipe alone's, and the baselines' (each at its validation-chosen learning rate).
Section "recipe-alone" ("recipe-alone-<task>" for a font task other than the digits) of docs/benchmarks.md;
results in OUT/results.json (resumable).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks.defaults import GLYPHS, NAME, task_suffix
from benchmarks.quality_efficientnet import spread
from benchmarks.quality_wallclock import GRID
from benchmarks.report import environment, table, write_section
from benchmarks.timed import timed_baseline
from benchmarks.wallclock import best_baseline
from mupath.search.task_search import RECIPES
from mupath.store.atomic import atomic_write_bytes
from mupath.store.store import Store

#: the recipe trained alone: the first wave's adapters on every block
RECIPE = next(r for r in RECIPES if r.kind == "adapter" and r.start == 0.0)


def evolved_shape(hp: dict[str, Any]) -> str:
    """The kinds and blocks of a path with hyperparameters `hp`, e.g. `adapters 0-15`."""
    parts = []
    for key, name in (("adapter_layers", "adapters"), ("lora_layers", "deltas"), ("ssf_layers", "ssf")):
        blocks = sorted(hp.get(key) or [])
        if blocks:
            parts.append(f"{name} {blocks[0]}-{blocks[-1]}")
    return ", ".join(parts) or "head only"


def measure(folder: Path, seed: int, task: str = NAME) -> dict[str, Any]:
    """The recipe alone for the evolved wall time of the wallclock run of `task` in `folder`, and that run's
    figures."""
    run = json.loads((folder / "results.json").read_text())
    store = Store.open(folder / "evolved", read_only=True)
    hp = store.manifest.retained()[task].hparams
    alone = timed_baseline(store, task, f"adapters:{int(hp['adapter_dim'])}", RECIPE.lr, float(run["evolved"]["wall"]),
                           seed, frozen_neck=True)
    return {"seed": seed, "evolved": run["evolved"], "shape": evolved_shape(hp), "alone": alone,
            "baselines": {m: best_baseline(run, m) for m in GRID}}


def report(rows: list[dict[str, Any]], task: str = NAME) -> None:
    lines = [[r["seed"], f"{r['evolved']['test']:.4f} ({r['evolved']['val']:.4f})", r["shape"],
              f"{r['evolved']['wall']:.0f}", f"{r['alone']['test']:.4f} ({r['alone']['val']:.4f})",
              r["alone"]["steps"], *(f"{r['baselines'][m]['test']:.4f}" for m in GRID)] for r in rows]
    lines.append(["mean [min-max]", spread([r["evolved"]["test"] for r in rows]), "", "",
                  spread([r["alone"]["test"] for r in rows]), "",
                  *(spread([r["baselines"][m]["test"] for r in rows]) for m in GRID)])
    body = "\n".join([
        "## The search's exploration at a short budget: its every-block recipe trained alone"
        + task_suffix(task, ": "), "",
        environment().rstrip(), "",
        f"{task} from an empty store, the runs of `benchmarks/wallclock.py` (one per seed). \"recipe alone\": the "
        f"search's first-wave recipe `adapter` on every block at lr {RECIPE.lr:g} (the root's neck frozen, as in "
        "every searched path) trained as one run for the evolved task's wall time; no learning-rate grid. "
        "Baselines: each at its validation-chosen learning rate, from the same runs. Test accuracy (validation).",
        "", table(["seed", "evolved", "evolved path", "wall s", "recipe alone", "its steps",
                   *(f"{m}" for m in GRID)], lines)])
    write_section("benchmarks.md", "recipe-alone" + task_suffix(task), body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, nargs="+", required=True, help="benchmarks/wallclock.py output folders")
    parser.add_argument("--seeds", required=True, help="each run's seed, in the same order (e.g. 0,1,2)")
    parser.add_argument("--task", choices=sorted(GLYPHS), default=NAME, help="the runs' font task")
    parser.add_argument("--out", type=Path, default=Path("runs/recipe-alone"))
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if len(seeds) != len(args.runs):
        parser.error(f"{len(args.runs)} run folders but {len(seeds)} seeds; give one seed per folder")
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "results.json"
    results: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    for folder, seed in zip(args.runs, seeds):
        if str(folder) not in results:
            results[str(folder)] = measure(folder, seed, args.task)
            atomic_write_bytes(path, json.dumps(results, indent=1).encode())
            print(folder, results[str(folder)]["alone"], flush=True)
    report([results[str(f)] for f in args.runs], args.task)


if __name__ == "__main__":
    main()
