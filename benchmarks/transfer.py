"""Transfer probe for the quality benchmark (issue "Evidence"): what does sharing another task's trained
body cost? On a copy of the quality run's evolved store (s = project default), each probe trains one
path for a task: the donor task's retained path, frozen except its top block, its norm and a new head
(no adapters), with the same training images the evolution spent on the task. Its test accuracy and
accounted parameters show the trade-off the search faces between a full copy and a shared body.

    .venv/bin/python benchmarks/transfer.py [--quality runs/bench-quality] [--work runs/bench-transfer]

Needs a finished `benchmarks/quality.py` run. Writes the section "transfer" of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import environment, table, write_section  # noqa: E402
from mupath import System  # noqa: E402
from mupath.runtime.worker import run_job  # noqa: E402
from mupath.search.baselines import baseline_job, budgets_from_commits, commit_baseline  # noqa: E402
from mupath.search.space import search_space  # noqa: E402
from mupath.search.ids import id_stream  # noqa: E402
from mupath.search.mutation import Lineage, committed_infos, make_child  # noqa: E402
from mupath.search.settings import EvolveSettings  # noqa: E402
from mupath.search.space import customise, is_data_key  # noqa: E402
from mupath.store.records import ROOT_TASK  # noqa: E402

PROBES = [("mnist", "fashion_mnist"), ("digits", "mnist"), ("digits", "fashion_mnist")]


def top_block(path_components: dict[str, str]) -> str:
    return max((s for s in path_components if s.startswith("block_")), key=lambda s: int(s.split("_")[1]))


def probe(source: Path, work: Path, task: str, donor: str, settings: EvolveSettings, seed: int) -> dict[str, Any]:
    """Train `task` on `donor`'s retained path (top block, norm, new head trainable) in a copy of `source`."""
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(source, work)
    system = System.open(work)
    store = system.store
    budget = budgets_from_commits(store)[task]
    retained = system.manifest.retained()
    parent = retained[donor]
    top = top_block(parent.components)
    comps = committed_infos(system.manifest.components())
    base = search_space(store, settings)
    # no hyperparameter moves, no adapters; clone exactly the top block (norm and head always are)
    actions = {f"_mu_|clone:{s}": float(s == top) for s in parent.components
               if not s.startswith("adapter") and s != "head"}
    actions.update({f"_mu_|add:adapter_{i}": 0.0 for i in range(store.depth)})
    space = customise(base, actions, {k: [] for k in base.ranges if not is_data_key(k)})
    lineage = Lineage({p.id: p for p in retained.values()}, comps, lambda cid: False, retained[ROOT_TASK],
                      id_stream(random.Random(seed)), store.family, store.root_meta)
    data_hp = {k: v for k, v in parent.hparams.items() if is_data_key(k)}
    plan = make_child(parent, task, system.task_record(task).num_classes, data_hp, space, lineage,
                      rng=random.Random(seed), mutate_adapters=False)
    plan.path.metrics["baseline"] = f"shared body of {donor}"
    run_id, _ = store.start_run(f"transfer-probe:{task}:{donor}")
    job = baseline_job(store, plan, budget, settings, run_id, seed)
    result = commit_baseline(store, plan, run_job(job), job, budget, run_id, check=False)
    status = {s.task: s for s in system.status()}[task]
    system.close()
    original = System.open(source)
    source_status = {s.task: s for s in original.status()}[task]
    original.close()
    return {"task": task, "donor": donor, "test": result.test_accuracy, "accounted": status.accounted_params,
            "root_params": system.root_params, "trained": result.trainable, "images": result.images,
            "evolved_test": source_status.test_accuracy, "evolved_accounted": source_status.accounted_params}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quality", type=Path, default=Path("runs/bench-quality"))
    ap.add_argument("--work", type=Path, default=Path("runs/bench-transfer"))
    args = ap.parse_args()
    results_file = args.quality / "results.json"
    if not results_file.exists():
        sys.exit(f"error: no quality run at {args.quality}; run `make bench-quality` first")
    res = json.loads(results_file.read_text())
    store = Path(res["sweep"][str(EvolveSettings().scale_factor)]["store"])
    finetune = res["baselines"]["methods"]["finetune-all"]["tasks"]
    settings = EvolveSettings(**{k: v for k, v in res["settings"].items()
                                 if k in ("steps_per_validation", "batch_size", "val_limit")})
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    rows = []
    for task, donor in PROBES:
        r = probe(store, args.work / f"{task}-from-{donor}", task, donor, settings, seed=0)
        print(json.dumps(r), flush=True)
        rows.append([task, donor, ", ".join(r["trained"]), f"{r['images']:,}", f"**{r['test']:.4f}**",
                     f"{r['evolved_test']:.4f}", f"{finetune[task]['test_accuracy']:.4f}",
                     f"{r['accounted'] / r['root_params']:.2f}", f"{r['evolved_accounted'] / r['root_params']:.2f}"])
    body = ("## Transfer probe: the price of sharing a trained body (quality stream)\n\n" + environment()
            + f"- source: the quality run's evolved store at s = {EvolveSettings().scale_factor:g} ({store}); "
              f"wall time {time.perf_counter() - t0:.0f} s\n"
            + "- probe: the donor's retained path, frozen except its top block, norm and a new head, trained "
              "as one candidate with the training images the evolution spent on the task\n\n"
            + table(["task", "donor body", "trained", "train images", "probe test acc", "evolved test acc",
                     "finetune-all test acc", "probe params ÷ root", "evolved params ÷ root"], rows)
            + "\n\nA shared body is what halves the parameters per task; this is the accuracy it costs at this "
              "budget, from the random-init root.\n")
    print(write_section("benchmarks.md", "transfer", body, title="mupath benchmarks"))


if __name__ == "__main__":
    main()
