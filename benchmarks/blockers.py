"""What blocks the pretrained-root targets (issue 25, item 3): the evolved system of
`benchmarks/quality_efficientnet.py` with one setting changed at a time, same stream, budget and seeds.

The quality run (docs/benchmarks.md "quality-efficientnet") misses three targets: mean test accuracy at
least finetune-all's and LoRA's, at most 0.3x finetune-all's parameters per task. Each variant lifts
or tightens one bound of the search, so its result says how far that bound alone is from a target:

- `adapters-only`: the top blocks and the neck are never cloned (`_mu_|clone:block_12..15` =
  `_mu_|clone:neck` = 0): a path is the frozen root + adapters in blocks 12-15 + a head, the only
  kind of path whose parameters can fit under 0.3x (the frozen root alone costs |root|/4 = 0.25x per
  task). How accurate is the search inside the parameter target?
- `bound-lifted`: the compute bound removed (no `_mu_|clone:*` / `_mu_|add:adapter_*` overrides):
  every block may be cloned or adapted with probability µ, as in the reference; each step then runs a
  full backward pass at 64 px. How accurate is the search without the frozen bottom?

Each (variant, seed) is one resumable store under OUT/VARIANT/seedN with its result in
OUT/VARIANT-seedN.json; every invocation ends by writing the section from every result present (without
`--variant` it only writes it), so variants can run as separate processes, one per core.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.quality import fmt_k, load_tasks, log, store_rows
from benchmarks.quality_efficientnet import FULL, TASKS, finished_run, open_store, reused, seed_summary, spread
from benchmarks.report import environment, table, write_section
from mupath.cli.demo import FROZEN_BOTTOM
from mupath.store.atomic import atomic_write_bytes

TOP_BLOCKS = range(FROZEN_BOTTOM, 16)   #: the blocks of lite0's 16 the quality run's evolution may clone


def variant_hparams(variant: str) -> dict[str, float]:
    """The `hparams` (per-action µ overrides) of a variant, from the quality run's."""
    base = dict(FULL.evolve["hparams"])
    if variant == "adapters-only":
        return {**base, "_mu_|clone:neck": 0.0, **{f"_mu_|clone:block_{i}": 0.0 for i in TOP_BLOCKS}}
    if variant == "bound-lifted":
        return {}
    raise SystemExit(f"unknown variant '{variant}'; use one of: {', '.join(VARIANTS)}")


VARIANTS = {
    "adapters-only": "top blocks and neck never cloned: frozen root + adapters (blocks 12-15) + head",
    "bound-lifted": "no frozen bottom: every block may be cloned or adapted (full backward at 64 px)",
}


def run_one(out: Path, variant: str, seed: int) -> dict[str, Any]:
    """Evolve (or resume) one variant and seed; its result is saved next to the store."""
    result = out / f"{variant}-seed{seed}.json"
    if result.exists():
        return dict(json.loads(result.read_text()))
    tasks = load_tasks(FULL)
    system = open_store(out / variant / f"seed{seed}", tasks)
    settings = dict(FULL.evolve, hparams=variant_hparams(variant))
    t0 = time.perf_counter()
    run_id = finished_run(system)
    if run_id is None:
        run_id = system.evolve(TASKS, workers=1, seed=seed, **settings).run_id
    wall = time.perf_counter() - t0
    checked = system.check_immutability()
    entry = {"variant": variant, "seed": seed, "tasks": store_rows(system, run_id), "wall": wall,
             "forgetting": 0.0 if sorted(checked) == sorted(TASKS) else None, "reused": reused(system),
             "root_params": system.root_params}
    system.close()
    atomic_write_bytes(result, json.dumps(entry, indent=1, default=str).encode())
    return entry


def write_report(out: Path) -> Path:
    entries = [json.loads(p.read_text()) for p in sorted(out.glob("*-seed*.json"))]
    rows, task_rows = [], []
    for variant, what in VARIANTS.items():
        runs = [e for e in entries if e["variant"] == variant]
        if not runs:
            continue
        summaries = [seed_summary(e) for e in runs]
        par = statistics.mean(s["params"] for s in summaries)
        rows.append([f"`{variant}`", what, ", ".join(str(e["seed"]) for e in runs),
                     spread([s["accuracy"] for s in summaries]), fmt_k(par), f"{par / runs[0]['root_params']:.2f}",
                     spread([e["wall"] for e in runs], ".0f"),
                     "0 (measured)" if all(e["forgetting"] == 0.0 for e in runs) else "not checked"])
        for task in TASKS:
            task_rows.append([task, f"`{variant}`", spread([e["tasks"][task]["test_accuracy"] for e in runs]),
                              fmt_k(statistics.mean(e["tasks"][task]["accounted_params"] for e in runs)),
                              ", ".join(sorted({s for e in runs for s in e["reused"].get(task, [])})) or "-"])
    body = "\n\n".join([
        "## What blocks the pretrained-root targets (evolved variants)",
        "".join(line + "\n" for line in environment().splitlines() if not line.startswith("- command"))
        + "- command: `make bench-blockers` (adapters-only seeds 0, 1, 2 on one core; bound-lifted seed 0 on the "
        "other: its full backward passes cost about 4x the cached top's, so one seed fits the session)\n"
        "- stream, root, budget (4 gen x 1 cand x 2 val x 30 steps x 64 = 15,360 training images per task) and "
        "every other setting: those of section \"quality-efficientnet\"; one setting changed per variant. "
        "Parameters per task by the µ2Net rule; the frozen root's share alone is |root|/4 = 0.25x the root. "
        "Wall: the whole evolve + check of one seed (variants run one per core, side by side).",
        table(["variant", "what changes", "seeds", "avg test acc: mean [min–max]", "params / task",
               "÷ root", "wall s per seed", "forgetting"], rows),
        "### Per task\n\n" + table(["task", "variant", "test acc", "params accounted", "reused (slot<-task)"],
                                   task_rows),
    ])
    return write_section("benchmarks.md", "quality-efficientnet-blockers", body, title="mupath benchmarks")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variant", choices=list(VARIANTS), help="run this variant (default: report only)")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--out", type=Path, default=Path("runs") / "bench-blockers")
    args = ap.parse_args()
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    if args.variant:
        for seed in [int(s) for s in args.seeds.split(",") if s.strip()]:
            log(f"{args.variant} seed {seed}")
            entry = run_one(out, args.variant, seed)
            log(f"{args.variant} seed {seed}: {entry['wall']:.0f} s")
    log(f"report: {write_report(out)}")


if __name__ == "__main__":
    main()
