"""Quality benchmark (issue "Evidence: measure the evolved system against the reference's baselines on
the offline task stream"). One random-init root (the demo's), the task stream fashion_mnist, mnist,
digits, lfw_faces, two task iterations. The evolved system (project default s) is compared with the
reference's baselines, each given, per task, exactly the training images the evolution spent on it
(`mupath/search/baselines.py`); a sweep of the scale factor s shows accuracy against parameters per
task. Results go to docs/benchmarks.md (section "quality") and docs/img/quality_*.png; raw numbers to
OUT/results.json.

    .venv/bin/python benchmarks/quality.py [--quick] [--workers 2] [--out DIR]
    .venv/bin/python benchmarks/quality.py --root efficientnet [--seeds 0,1,2] [--budget 75] [--out DIR]
    .venv/bin/python benchmarks/quality.py --root efficientnet --equal-images [--seeds 0,1,2] [--quick]

`--root efficientnet` runs the same stream from the pretrained EfficientNet-Lite0 (64 px), three seeds,
resuming if cut short: at equal wall-clock against finetune-all, lora:8 (peft) and adapters:32 at
learning rates chosen on validation (benchmarks/quality_wallclock.py, section "quality-wallclock"), or
with `--equal-images` at equal training images against finetune-all, freeze-bottom:12, adapters:32,
lora:8 and sequential (benchmarks/quality_efficientnet.py, section "quality-efficientnet").

Every run starts from fresh stores in the work folder (default runs/bench-quality[-quick]). Full mode
takes about 35 minutes with --workers 2 on the project's 2-core machine, --quick about 7 minutes;
--report-only re-renders the docs section and plots from OUT/results.json.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import dataclasses
import json
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import DOCS, environment, img_suffix, table, write_section  # noqa: E402
from mupath import System  # noqa: E402
from mupath.cli.demo import VIT_DEMO_ROOT, DEMO_TASKS  # noqa: E402
from mupath.data import Task, load_task  # noqa: E402
from mupath.data.carve import stratified_subset  # noqa: E402
from mupath.runtime.executors import _init_worker  # noqa: E402
from mupath.runtime.worker import run_job  # noqa: E402
from mupath.search.baselines import (SEQUENTIAL, BaselineResult, budgets_from_commits, finish_store_baselines,  # noqa: E402
                                     forgetting, prepare_store_baselines, sequential_from_dict, sequential_job,
                                     total_params)
from mupath.search.settings import EvolveSettings  # noqa: E402
from mupath.store.records import ROOT_TASK  # noqa: E402

TASKS = list(DEMO_TASKS)                    # fashion_mnist, mnist, digits, lfw_faces
MAIN_SCALE = EvolveSettings().scale_factor  # the project default (0.99)
BASELINES = ["finetune-all", "freeze-bottom:2", "adapters:32", SEQUENTIAL]
TOLERANCE = 0.005                           # "within 0.5 points" for the choice of the default s
IMG = DOCS / "img"


@dataclasses.dataclass(frozen=True)
class Mode:
    name: str
    evolve: dict[str, Any]
    scales: list[float]
    max_train: dict[str, int]
    max_test: dict[str, int]


# Budgets: full = 2 iterations x 4 generations x 1 candidate of 200 steps of 64 = 102,400 training images
# per task; quick = 25,600. One candidate per generation: the lineage of the retained path then gets the
# whole budget instead of 1/candidates of it (with 2 candidates per generation the same full budget gave
# 0.904 average test accuracy instead of 0.919 in the exploration runs; docs/benchmarks.md).
FULL = Mode("full", dict(iterations=2, generations=4, candidates=1, steps_per_validation=100, validations=2,
                         batch_size=64, val_limit=1000, seed=0),
            [1.0, 0.99, 0.95, 0.9, 0.7], {}, {})
QUICK = Mode("quick", dict(iterations=2, generations=4, candidates=1, steps_per_validation=25, validations=2,
                           batch_size=64, val_limit=500, seed=0),
             [1.0, 0.99, 0.9], {"fashion_mnist": 3000}, {"fashion_mnist": 2000})


def log(*parts: Any) -> None:
    print(f"[{time.strftime('%H:%M:%S')}]", *parts, flush=True)


def load_tasks(mode: Mode) -> dict[str, Task]:
    out = {}
    for name in TASKS:
        task = load_task(name, max_train=mode.max_train.get(name))
        if name in mode.max_test and mode.max_test[name] < len(task.test):
            keep = stratified_subset(task.test.labels, mode.max_test[name], np.random.default_rng(0))
            task = dataclasses.replace(task, test=task.test.take(keep))
        out[name] = task
    return out


def new_store(folder: Path, tasks: dict[str, Task]) -> System:
    system = System.create(folder, **VIT_DEMO_ROOT)
    for task in tasks.values():
        system.add_task(task)
    return system


# ---- the evolved systems ------------------------------------------------------------------------
class History:
    """Evolve progress hook: after every commit, re-test every committed task (accuracy over time)."""

    def __init__(self, system: System | None) -> None:
        self.system = system
        self.events: list[dict[str, Any]] = []

    def task_started(self, task: str, iteration: int, candidates: int) -> None:
        log(f"  evolve {task} (iteration {iteration}, {candidates} candidates)")

    def candidate_step(self, index: int, step: int, total: int) -> None:
        pass

    def candidate_done(self, result: dict[str, Any]) -> None:
        pass

    def task_done(self, entry: Any) -> None:
        accs: dict[str, float] = {}
        if self.system is not None:
            checks = self.system.manifest.checks()
            accs = {t: self.system.evaluate(t) for t in self.system.tasks if t in checks}
        self.events.append({"task": entry.task, "iteration": entry.iteration, "changed": entry.changed,
                            "accuracies": accs})
        log(f"  {entry.task} it{entry.iteration}: test {entry.test_accuracy:.4f} changed={entry.changed} "
            f"images={entry.train_images} {entry.wall_time:.0f}s")


def evolve_workers(mode: Mode, workers: int) -> int:
    """Never more workers than candidates per generation: the cores go to threads instead."""
    return max(1, min(workers, int(mode.evolve["candidates"])))


def evolve_system(folder: Path, tasks: dict[str, Task], mode: Mode, scale: float, workers: int,
                  track: bool) -> dict[str, Any]:
    workers = evolve_workers(mode, workers)
    system = new_store(folder, tasks)
    history = History(system if track else None)
    t0 = time.perf_counter()
    report = system.evolve(TASKS, progress=history, workers=workers, scale_factor=scale, **mode.evolve)
    wall = time.perf_counter() - t0
    checked = system.check_immutability()
    per_task = store_rows(system, report.run_id)
    worst, per = forgetting((e["task"], e["accuracies"]) for e in history.events) if track else (None, {})
    out = {"scale_factor": scale, "store": str(system.path), "run_id": report.run_id, "wall_time": wall,
           "tasks": per_task, "total_params": total_params(system.store), "root_params": system.root_params,
           "immutability_checked": checked, "history": history.events, "forgetting": worst,
           "forgetting_per_task": per}
    if track:
        out["reuse"] = reuse_rows(system)
        out["second_iteration"] = second_iteration_rows(system, report.run_id)
    system.close()
    return out


def store_rows(system: System, run_id: str | None) -> dict[str, dict[str, Any]]:
    """Per task, from `System.status()` and the commits: what the evolved system and the store
    baselines report alike."""
    status = {s.task: s for s in system.status()}
    rows: dict[str, dict[str, Any]] = {}
    for task in TASKS:
        st = status[task]
        commits = system.manifest.commit_records(run_id, task)
        rows[task] = {"test_accuracy": st.test_accuracy, "val_quality": st.val_quality,
                      "accounted_params": st.accounted_params, "params_owned": st.params_owned,
                      "params_shared": st.params_shared, "reused_from": st.reused_from,
                      "num_layers": st.num_layers, "adapters": st.adapters,
                      "train_images": sum(c.info.train_images for c in commits),
                      "train_time": sum(c.info.train_time for c in commits),
                      "wall_time": sum(c.info.wall_time for c in commits)}
    return rows


def reuse_rows(system: System) -> dict[str, dict[str, Any]]:
    """Per task: its retained path's components grouped by the task that created them."""
    retained = system.manifest.retained()
    comps = system.manifest.components()
    out = {}
    for task in TASKS:
        groups: dict[str, dict[str, Any]] = {}
        for slot, cid in retained[task].components.items():
            creator = comps[cid].task
            g = groups.setdefault(creator, {"components": 0, "params": 0, "slots": []})
            g["components"] += 1
            g["params"] += comps[cid].num_params
            g["slots"].append(slot)
        out[task] = groups
    return out


def path_record(system: System, path_id: str) -> Any:
    return system.manifest.get_path(path_id)


def second_iteration_rows(system: System, run_id: str) -> list[dict[str, Any]]:
    commits = system.manifest.commit_records(run_id)
    first = {c.task: c for c in commits if c.iteration == 0}
    rows = []
    for c in commits:
        if c.iteration != 1:
            continue
        before = first.get(c.task)
        path = path_record(system, c.path_id)
        old = path_record(system, before.path_id) if before else None
        changed = c.info.changed
        rows.append({"task": c.task, "changed": changed,
                     "test_before": before.test_accuracy if before else None, "test_after": c.test_accuracy,
                     "val_before": old.quality if old else None, "val_after": path.quality if path else None,
                     "improved_children": c.info.improved,
                     "parent_task": path.metrics.get("parent_task") if path and changed else None,
                     "mutations": path.metrics.get("mutations", {}) if path and changed else {}})
    return rows


# ---- the baselines --------------------------------------------------------------------------------
def run_baselines(out: Path, tasks: dict[str, Task], budgets: dict[str, int], mode: Mode,
                  workers: int) -> dict[str, Any]:
    """All store baselines' candidates and the sequential run go to one process pool (1 thread each,
    as the evolution's candidates); store candidates are committed afterwards in task order."""
    store_methods = [m for m in BASELINES if m != SEQUENTIAL]
    systems = {m: new_store(out / m.replace(":", "-"), tasks) for m in store_methods}
    settings = {k: v for k, v in mode.evolve.items() if k in ("steps_per_validation", "batch_size", "val_limit")}
    seed = int(mode.evolve["seed"])
    pending, runs = prepare_store_baselines({m: s.store for m, s in systems.items()}, TASKS, budgets, seed, **settings)
    t0 = time.perf_counter()
    seq_job = {"store": str(systems[store_methods[0]].path), "tasks": TASKS, "budgets": budgets, "seed": seed,
               "settings": settings}
    pool = cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                  initializer=_init_worker, initargs=(1, os.getpid()))
    try:
        seq_future = pool.submit(sequential_job, seq_job)   # the longest job first
        futures = [pool.submit(run_job, p.job) for p in pending]
        done = 0
        for fut in cf.as_completed(futures):
            done += 1
            res = fut.result()
            quality = res.val_accuracy if res.val_accuracy is not None else float("nan")
            log(f"  baseline candidate {done}/{len(futures)}: quality {quality:.4f} "
                f"{res.wall_time:.0f}s {res.failure or ''}")
        results = [f.result() for f in futures]
        seq = sequential_from_dict(seq_future.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    wall = time.perf_counter() - t0
    committed = finish_store_baselines(pending, results, runs, {m: s.store for m, s in systems.items()})
    by_method: dict[str, Any] = {}
    for method, system in systems.items():
        rows = store_rows(system, runs[method])
        results_of = {r.task: r for r in committed[method]}
        final = {t: system.evaluate(t) for t in TASKS}
        for t in TASKS:
            r: BaselineResult | None = results_of.get(t)
            if r is not None:
                rows[t].update({"wall_time": r.wall_time, "budget_images": r.budget_images,
                                "trainable": r.trainable, "validations": r.validations,
                                "steps_per_validation": r.steps_per_validation})
        drops = {t: max(0.0, rows[t]["test_accuracy"] - final[t]) for t in TASKS}
        by_method[method] = {"store": str(system.path), "tasks": rows, "total_params": total_params(system.store),
                             "root_params": system.root_params, "immutability_checked": system.check_immutability(),
                             "forgetting": max(drops.values()), "forgetting_per_task": drops}
        system.close()
    root_params = by_method[store_methods[0]]["root_params"]
    accounted = seq.accounted_params()
    by_method[SEQUENTIAL] = {
        "tasks": {t: {"test_accuracy": seq.final[t], "test_after_own": seq.after_own[t], "val_quality": seq.val_quality[t],
                      "accounted_params": accounted[t], "train_images": seq.images[t], "budget_images": seq.budget_images[t],
                      "train_time": seq.train_time[t], "wall_time": seq.wall_time[t]} for t in TASKS},
        "total_params": seq.total_params, "root_params": root_params, "forgetting": seq.forgetting,
        "forgetting_per_task": seq.forgetting_per_task,
        "history": [{"task": t, "accuracies": a} for t, a in seq.history]}
    return {"methods": by_method, "wall_time": wall}


# ---- summaries ------------------------------------------------------------------------------------
def summary(entry: dict[str, Any]) -> dict[str, float]:
    rows = entry["tasks"]
    return {"accuracy": statistics.mean(rows[t]["test_accuracy"] for t in TASKS),
            "params_per_task": statistics.mean(rows[t]["accounted_params"] for t in TASKS),
            "total_over_root": entry["total_params"] / entry["root_params"],
            "images": sum(rows[t]["train_images"] for t in TASKS),
            "train_time": sum(rows[t].get("train_time", 0.0) for t in TASKS),
            "wall_time": sum(rows[t].get("wall_time", 0.0) for t in TASKS)}


def choose_scale(sweep: dict[float, dict[str, float]]) -> tuple[float, str]:
    """The smallest s (largest penalty) whose average test accuracy stays within TOLERANCE of the
    unpenalised system's (s = 1.0, else the best of the sweep)."""
    ref_s = 1.0 if 1.0 in sweep else max(sweep, key=lambda s: sweep[s]["accuracy"])
    ref = sweep[ref_s]["accuracy"]
    ok = [s for s in sweep if sweep[s]["accuracy"] >= ref - TOLERANCE]
    chosen = min(ok)
    c, r = sweep[chosen], sweep[ref_s]
    if chosen == ref_s:
        reason = (f"No s below {ref_s:g} keeps the average test accuracy within {TOLERANCE * 100:.1f} points of "
                  f"s = {ref_s:g} ({r['accuracy']:.4f}, {r['params_per_task'] / 1e3:.1f}k parameters per task).")
    else:
        reason = (f"s = {chosen:g} is the smallest s of the sweep whose average test accuracy ({c['accuracy']:.4f}) "
                  f"stays within {TOLERANCE * 100:.1f} points of s = {ref_s:g} ({r['accuracy']:.4f}); it accounts "
                  f"{c['params_per_task'] / 1e3:.1f}k parameters per task against {r['params_per_task'] / 1e3:.1f}k "
                  f"({(c['params_per_task'] / r['params_per_task'] - 1) * 100:+.0f}%).")
    rejected = sorted((s for s in sweep if s not in ok), reverse=True)
    if rejected:
        reason += " Rejected (more than 0.5 points below): " + ", ".join(
            f"s = {s:g} ({sweep[s]['accuracy']:.4f})" for s in rejected) + "."
    return chosen, reason


def fmt_k(n: float) -> str:
    return f"{n / 1e3:.1f}k"


def fmt_mut(m: dict[str, Any]) -> str:
    parts = []
    for k, v in sorted(m.items()):
        if isinstance(v, list) and len(v) == 2 and k not in ("cloned", "adapters_added"):
            parts.append(f"{k} {v[0]}→{v[1]}")
        else:
            parts.append(f"{k} {v}")
    return "; ".join(parts) or "-"


# ---- plots ----------------------------------------------------------------------------------------
def sweep_points(sweep: dict[float, dict[str, Any]]) -> list[tuple[list[float], float, float]]:
    """(s values, params per task, accuracy), s values that gave the same point grouped (one label)."""
    points: dict[tuple[float, float], list[float]] = {}
    for s in sorted(sweep, reverse=True):
        sm = summary(sweep[s])
        points.setdefault((round(sm["params_per_task"], 1), round(sm["accuracy"], 6)), []).append(s)
    return [(ss, x, y) for (x, y), ss in points.items()]


def s_label(ss: list[float]) -> str:
    return "s=" + ", ".join(f"{s:g}" for s in ss)


MARKERS = {"evolved": ("*", "tab:red"), "finetune-all": ("o", "tab:blue"), "freeze-bottom:2": ("s", "tab:green"),
           "adapters:32": ("^", "tab:purple"), SEQUENTIAL: ("D", "tab:orange")}


def plot_accuracy_params(entries: dict[str, dict[str, Any]], sweep: dict[float, dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(TASKS) + 1, figsize=(4 * (len(TASKS) + 1), 3.8))
    for ax, task in zip(axes, TASKS + ["average"]):
        for name, entry in entries.items():
            marker, colour = MARKERS.get(name, ("x", "black"))
            if task == "average":
                s = summary(entry)
                x, y = s["params_per_task"], s["accuracy"]
            else:
                x, y = entry["tasks"][task]["accounted_params"], entry["tasks"][task]["test_accuracy"]
            ax.scatter([x / 1e3], [y], marker=marker, color=colour, s=120 if marker == "*" else 55, label=name,
                       zorder=3)
        if task == "average":
            for ss, x, y in sweep_points(sweep):
                ax.scatter([x / 1e3], [y], marker=".", color="grey", zorder=2)
                ax.annotate(s_label(ss), (x / 1e3, y), fontsize=7, xytext=(3, -9), textcoords="offset points",
                            color="grey")
        ax.set_title(task, fontsize=10)
        ax.set_xlabel("parameters accounted per task (k)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle("Test accuracy vs parameters per task (µ2Net accounting), same training images per task; "
                 "grey: evolved at other s", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_over_time(evolved: dict[str, Any], seq: dict[str, Any], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.9), sharey=True)
    for ax, events, title in ((axes[0], evolved["history"], f"evolved (s={MAIN_SCALE:g})"),
                              (axes[1], seq["history"], "sequential fine-tuning")):
        labels = [f"{e['task']}" + (f" it{e['iteration']}" if "iteration" in e else "") for e in events]
        for i, task in enumerate(TASKS):
            xs = [k for k, e in enumerate(events) if task in e["accuracies"]]
            ys = [events[k]["accuracies"][task] for k in xs]
            ax.plot(xs, ys, marker="o", label=task, color=plt.get_cmap("tab10")(i))
        ax.set_xticks(range(len(events)))
        ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=8)
        ax.set_xlabel("after training")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy")
    axes[1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_sweep(sweep: dict[float, dict[str, Any]], chosen: float, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    pts = sorted((s, summary(e)) for s, e in sweep.items())
    ax.plot([p[1]["params_per_task"] / 1e3 for p in pts], [p[1]["accuracy"] for p in pts], color="grey", alpha=0.5)
    for ss, x, y in sweep_points(sweep):
        ax.scatter([x / 1e3], [y], color="tab:red" if chosen in ss else "tab:blue", zorder=3)
        ax.annotate(s_label(ss), (x / 1e3, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
    ax.set_xlabel("average parameters accounted per task (k)")
    ax.set_ylabel("average test accuracy")
    ax.set_title(f"Scale factor sweep (red: chosen s={chosen:g})", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---- the report -----------------------------------------------------------------------------------
def write_report(res: dict[str, Any], mode: Mode, args: argparse.Namespace) -> Path:
    from mupath.viz import draw_system_graph
    IMG.mkdir(parents=True, exist_ok=True)
    evolved = res["sweep"][str(MAIN_SCALE)]
    methods = res["baselines"]["methods"]
    entries = {"evolved": evolved, **{m: methods[m] for m in BASELINES}}
    sweep = {float(s): e for s, e in res["sweep"].items()}
    chosen, reason = choose_scale({s: summary(e) for s, e in sweep.items()})
    quick = mode.name == "quick"
    sfx = img_suffix(quick)
    plot_accuracy_params(entries, sweep, IMG / f"quality_accuracy_params{sfx}.png")
    plot_over_time(evolved, methods[SEQUENTIAL], IMG / f"quality_over_time{sfx}.png")
    plot_sweep(sweep, chosen, IMG / f"quality_scale_sweep{sfx}.png")
    system = System.open(evolved["store"])
    draw_system_graph(system, IMG / f"quality_system_graph{sfx}.png")
    system.close()

    sums = {name: summary(e) for name, e in entries.items()}
    ev, ft = sums["evolved"], sums["finetune-all"]
    acc_ok = ev["accuracy"] >= ft["accuracy"]
    par_ok = ev["params_per_task"] <= 0.5 * ft["params_per_task"]
    forget_ok = evolved["forgetting"] == 0.0 and sorted(evolved["immutability_checked"]) == sorted(TASKS)
    holds = acc_ok and par_ok and forget_ok
    yes = {True: "yes", False: "**no**"}
    target = table(["condition", "evolved", "finetune-all", "holds"], [
        ["average test accuracy ≥ finetune-all's", f"{ev['accuracy']:.4f}", f"{ft['accuracy']:.4f}", yes[acc_ok]],
        ["parameters per task ≤ ½ finetune-all's", fmt_k(ev["params_per_task"]), fmt_k(ft["params_per_task"])
         + f" (½ = {fmt_k(ft['params_per_task'] / 2)})", yes[par_ok]],
        ["forgetting exactly 0 (`check_immutability()` re-ran "
         + ", ".join(sorted(evolved["immutability_checked"])) + " bit-exactly)", f"{evolved['forgetting']:.4f}",
         f"{methods['finetune-all']['forgetting']:.4f}", yes[forget_ok]]])

    method_rows = []
    for name, e in entries.items():
        s = sums[name]
        method_rows.append([name, f"{s['accuracy']:.4f}", fmt_k(s["params_per_task"]),
                            f"{s['params_per_task'] / e['root_params']:.2f}", f"{s['total_over_root']:.2f}",
                            f"{e['forgetting']:.4f}", f"{s['images']:,}", f"{s['train_time']:.0f}",
                            f"{s['wall_time']:.0f}"])
    task_rows = []
    for task in TASKS:
        for name, e in entries.items():
            r = e["tasks"][task]
            acc = f"{r['test_accuracy']:.4f}"
            if name == SEQUENTIAL:
                acc += f" (right after own: {r['test_after_own']:.4f})"
            task_rows.append([task, name, acc, fmt_k(r["accounted_params"]), f"{r['train_images']:,}",
                              f"{r.get('train_time', 0.0):.0f}", f"{r.get('wall_time', 0.0):.0f}"])

    reuse = []
    for task in TASKS:
        groups = evolved["reuse"][task]
        own = groups.get(task, {"components": 0, "params": 0})
        root = groups.get(ROOT_TASK, {"components": 0, "params": 0, "slots": []})
        others = [f"{t}: {g['components']} ({', '.join(g['slots'])}; {fmt_k(g['params'])})"
                  for t, g in groups.items() if t not in (task, ROOT_TASK)]
        r = evolved["tasks"][task]
        reuse.append([task, f"{own['components']} ({fmt_k(own['params'])})",
                      f"{root['components']} ({', '.join(root.get('slots', [])) or '-'})",
                      "; ".join(others) or "-", str(r["num_layers"]), str(r["adapters"])])
    second = [[r["task"], "yes" if r["changed"] else "no",
               f"{r['test_before']:.4f} → {r['test_after']:.4f}",
               f"{r['val_before']:.4f} → {r['val_after']:.4f}" if r["val_before"] is not None else "-",
               str(r["improved_children"]), r["parent_task"] or "-", fmt_mut(r["mutations"]) if r["changed"] else "-"]
              for r in evolved["second_iteration"]]
    seq = methods[SEQUENTIAL]
    seq_rows = [[e["task"]] + [f"{e['accuracies'][t]:.4f}" if t in e["accuracies"] else "" for t in TASKS]
                for e in seq["history"]]
    ev_rows = [[f"{e['task']} it{e['iteration']}"] + [f"{e['accuracies'][t]:.4f}" if t in e["accuracies"] else ""
                                                      for t in TASKS] for e in evolved["history"]]
    sweep_rows = []
    for s in sorted(sweep, reverse=True):
        sm = summary(sweep[s])
        sweep_rows.append([f"{s:g}" + (" (project default)" if s == MAIN_SCALE else ""), f"{sm['accuracy']:.4f}",
                           fmt_k(sm["params_per_task"]), f"{sm['params_per_task'] / sweep[s]['root_params']:.2f}",
                           f"{sm['total_over_root']:.2f}", f"{sweep[s]['wall_time']:.0f}"])
    sizes = res["task_sizes"]
    title = "## Quality" + (" — QUICK MODE (smoke run: small budgets, not the evidence run)" if mode.name == "quick" else "")
    s_ev = mode.evolve
    evo_workers = evolve_workers(mode, args.workers)
    evo_threads = max(1, args.workers // evo_workers)
    body = "\n\n".join([
        title + "\n\n" + res["environment"] + (f"- report re-rendered from results.json: "
                                                 f"{time.strftime('%Y-%m-%d %H:%M')}\n" if args.report_only else "")
        + f"- mode: **{mode.name}**; workers: {args.workers}; total wall time: "
        f"{res['wall_time']:.0f} s (evolution at s = {MAIN_SCALE:g}: {evolved['wall_time']:.0f} s; baselines: "
        f"{res['baselines']['wall_time']:.0f} s; the other s values: "
        f"{sum(e['wall_time'] for s, e in sweep.items() if s != MAIN_SCALE):.0f} s)\n"
        f"- root: random-init `{VIT_DEMO_ROOT['root']}` with image size {VIT_DEMO_ROOT['image_size']}, patch "
        f"{VIT_DEMO_ROOT['patch_size']}, depth {VIT_DEMO_ROOT['depth']}, width {VIT_DEMO_ROOT['embed_dim']}, "
        f"{VIT_DEMO_ROOT['num_heads']} heads, seed {VIT_DEMO_ROOT['seed']}: **{res['root_params']:,} parameters**\n"
        f"- task stream (train/val/test images): " + ", ".join(
            f"{t} {sizes[t]['train']}/{sizes[t]['validation']}/{sizes[t]['test']}" for t in TASKS) + "\n"
        f"- evolution: {s_ev['iterations']} task iterations × {s_ev['generations']} generations × "
        f"{s_ev['candidates']} candidates × {s_ev['validations']} validations × {s_ev['steps_per_validation']} steps, "
        f"batch {s_ev['batch_size']}, validation subset {s_ev['val_limit']}, seed {s_ev['seed']}\n"
        f"- baselines: per task one path whose parent is the root, trained as one candidate with exactly the "
        f"training images the evolution spent on that task (Σ `train_images` of its commits), validations every "
        f"{s_ev['steps_per_validation']} steps, best snapshot kept; search-space default hyperparameters; store "
        f"baselines committed with `System.commit` (same test evaluation and accounting). Baseline candidates and "
        f"the sequential run train on 1 thread each, {args.workers} at a time; evolution candidates on "
        f"{evo_threads} thread(s) each, {evo_workers} at a time ({s_ev['candidates']} per generation).",
        "### Target\n\nAt the same training images per task: evolved average test accuracy ≥ finetune-all's, "
        "parameters per task ≤ half of finetune-all's, forgetting exactly 0.\n\n" + target
        + f"\n\n**Target {'holds' if holds else 'does not hold'}** in this {mode.name} run.",
        "### Per method (averages over the 4 tasks)\n\n"
        "Parameters per task: µ2Net accounting (a component used by k tasks costs |c|/k to each; for "
        "`sequential` the shared body costs |body|/4 to each task plus its head). Total / root: every stored "
        "component (the root's included) over the root's size. Forgetting: the largest drop of a task's test "
        "accuracy after later tasks were trained. Train s: summed candidate training time (baselines: 1 "
        f"thread, evolved: {evo_threads}); wall s: summed per-task wall time of the candidates (evolved: "
        f"elapsed time of the task iterations with {evo_workers} worker(s)).\n\n"
        + table(["method", "avg test acc", "params / task", "params / task ÷ root", "total / root", "forgetting",
                 "train images", "train s", "wall s"], method_rows),
        "### Per task\n\n" + table(["task", "method", "test acc", "params accounted", "train images", "train s",
                                    "wall s"], task_rows),
        f"### Evolved system (s = {MAIN_SCALE:g}): reuse\n\nComponents of each task's retained path by the task "
        "that created them.\n\n" + table(["task", "own (trained)", "root (frozen)", "from other tasks", "layers",
                                          "adapters"], reuse)
        + f"\n\n![system graph](img/quality_system_graph{sfx}.png)",
        "### Evolved system: what the second task iteration changed\n\n" + table(
            ["task", "changed", "test acc it0 → it1", "val acc it0 → it1", "children that beat it", "parent of new path",
             "mutations of the new path"], second),
        "### Accuracy over time: evolved vs sequential fine-tuning\n\nEvery committed task re-tested after each "
        "task's training.\n\nEvolved:\n\n" + table(["after training"] + TASKS, ev_rows)
        + "\n\nSequential:\n\n" + table(["after training"] + TASKS, seq_rows)
        + f"\n\nSequential forgetting (largest drop): **{seq['forgetting']:.4f}** ("
        + ", ".join(f"{t} {v:.4f}" for t, v in seq["forgetting_per_task"].items()) + "); evolved: "
        f"**{evolved['forgetting']:.4f}**.\n\n![accuracy over time](img/quality_over_time{sfx}.png)",
        "### Scale factor sweep\n\n" + table(["s", "avg test acc", "params / task", "params / task ÷ root",
                                              "total / root", "wall s"], sweep_rows)
        + f"\n\n**Chosen default: s = {chosen:g}.** {reason}\n\n![scale sweep](img/quality_scale_sweep{sfx}.png)",
        f"### Accuracy vs parameters per task\n\n![accuracy vs parameters](img/quality_accuracy_params{sfx}.png)",
    ])
    return write_section("benchmarks.md", "quality", body, title="mupath benchmarks", quick=quick)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small budgets (smoke run, about 10 minutes)")
    parser.add_argument("--workers", type=int, default=2, help="processes training candidates at once")
    parser.add_argument("--out", type=Path, default=None, help="work folder (default runs/bench-quality[-quick])")
    parser.add_argument("--report-only", action="store_true",
                        help="only rewrite the docs section and plots from OUT/results.json of an earlier run")
    parser.add_argument("--root", choices=["vit", "efficientnet"], default="vit",
                        help="vit: the random-init ViT run (section 'quality'); efficientnet: the pretrained "
                             "root run (section 'quality-efficientnet', resumable)")
    parser.add_argument("--seeds", default="0,1,2", help="efficientnet run: comma-separated seeds")
    parser.add_argument("--equal-images", action="store_true",
                        help="efficientnet run: every method gets the evolution's training images (section "
                             "'quality-efficientnet') instead of its wall-clock (section 'quality-wallclock')")
    parser.add_argument("--budget", type=float, default=None,
                        help="efficientnet run at equal wall-clock: evolve's time budget per task, seconds")
    args = parser.parse_args()
    if args.root == "efficientnet":
        if args.equal_images:
            from benchmarks import quality_efficientnet
            quality_efficientnet.main(args)
        else:
            from benchmarks import quality_wallclock
            quality_wallclock.main(args)
        return
    mode = QUICK if args.quick else FULL
    out = (args.out or Path("runs") / ("bench-quality-quick" if args.quick else "bench-quality")).resolve()
    if args.report_only:
        res = json.loads((out / "results.json").read_text())
        args.workers = res.get("workers", args.workers)
        mode = QUICK if res.get("mode") == "quick" else FULL     # the run's mode, whatever the flag says
        log(f"report: {write_report(res, mode, args)}")
        return
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, args.workers))
    t_start = time.perf_counter()
    tasks = load_tasks(mode)
    log(f"{mode.name} mode, work folder {out}")
    scales = [MAIN_SCALE] + [s for s in mode.scales if s != MAIN_SCALE]
    sweep: dict[str, Any] = {}
    for s in scales:
        log(f"evolve s = {s:g}")
        sweep[str(s)] = evolve_system(out / f"evolved-s{s:g}", tasks, mode, s, args.workers, track=(s == MAIN_SCALE))
        if s == MAIN_SCALE:
            main_entry = sweep[str(s)]
            main_system = System.open(main_entry["store"])
            budgets = budgets_from_commits(main_system.store, main_entry["run_id"])
            main_system.close()
            log(f"budgets (training images per task): {budgets}")
            log("baselines: " + ", ".join(BASELINES))
            baselines = run_baselines(out, tasks, budgets, mode, args.workers)
    res = {"mode": mode.name, "environment": environment(), "workers": args.workers, "settings": mode.evolve,
           "root": VIT_DEMO_ROOT, "root_params": main_entry["root_params"],
           "task_sizes": {t: {"train": len(k.train), "validation": len(k.validation), "test": len(k.test)}
                          for t, k in tasks.items()},
           "budgets": budgets, "sweep": sweep, "baselines": baselines}
    res["wall_time"] = time.perf_counter() - t_start
    (out / "results.json").write_text(json.dumps(res, indent=1, default=str))
    doc = write_report(res, mode, args)
    log(f"results: {out / 'results.json'}; report: {doc}; total {res['wall_time']:.0f} s")


if __name__ == "__main__":
    main()
