"""What a pretrained root buys (issue "Pretrained roots"): the demo's task stream (fashion_mnist, mnist,
digits, lfw_faces) grown from the ImageNet-pretrained EfficientNet-Lite0 (the demo root), from the same
architecture randomly initialised (a root of exactly the same size), and from the random-init ViT demo
root, each with its demo settings. Per task: test accuracy, parameters accounted to the task, training
images processed (compute) and wall time. Resumable (each root's store is kept under --runs).

    .venv/bin/python benchmarks/roots.py [--quick] [--runs runs/roots] [--workers 2] [--roots a,b,c]

Writes the section "roots" of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import environment, table, write_section  # noqa: E402

ROOTS = ("efficientnet-pretrained", "efficientnet-random", "vit-random")


def configs(quick: bool) -> dict[str, tuple[dict[str, Any], dict[str, Any]]]:
    """(System.create kwargs, evolve settings) of each root: the demo's, shortened with --quick."""
    from mupath.cli.demo import DEMO_ROOTS, DEMO_SETTINGS
    out = {
        "efficientnet-pretrained": (dict(DEMO_ROOTS["efficientnet"]), dict(DEMO_SETTINGS["efficientnet"])),
        "efficientnet-random": ({**DEMO_ROOTS["efficientnet"], "weights": None}, dict(DEMO_SETTINGS["efficientnet"])),
        "vit-random": (dict(DEMO_ROOTS["vit"]), dict(DEMO_SETTINGS["vit"])),
    }
    if quick:
        for _, settings in out.values():
            settings.update(generations=1, steps_per_validation=20, validations=2)
    return out


def run_root(store: Path, create: dict[str, Any], settings: dict[str, Any], workers: int,
             max_train: int | None) -> dict[str, Any]:
    from mupath import System, load_task
    from mupath.cli.demo import DEMO_TASKS
    from mupath.system import MANIFEST
    system = System.open(store) if (store / MANIFEST).exists() else System.create(store, **create)
    for name in DEMO_TASKS:
        if name not in system.tasks:
            system.add_task(load_task(name, max_train=max_train))
    if not set(DEMO_TASKS) <= {c.task for c in system.manifest.commit_records()}:   # else: already grown
        system.evolve(DEMO_TASKS, workers=workers, **settings)
    commits = {c.task: c for c in system.manifest.commit_records()}
    wall = sum(c.info.wall_time for c in commits.values())
    rows = {}
    for st in system.status():
        info = commits[st.task].info
        rows[st.task] = dict(acc=st.test_accuracy, accounted=st.accounted_params, owned=st.params_owned,
                             images=info.train_images, wall=info.wall_time,
                             reused=", ".join(st.reused_from) or "-")
    total = sum(c.num_params for c in system.manifest.components().values())
    return dict(rows=rows, root_params=system.root_params, total=total, wall=wall, name=system.root_spec.name,
                weights=system.root_spec.weights)


def report(results: dict[str, dict[str, Any]], quick: bool) -> str:
    from mupath.cli.demo import DEMO_TASKS
    lines = [("**QUICK MODE: smoke run with tiny budgets, not the evidence.**\n" if quick else ""),
             environment(), ""]
    header = ["root", "weights", "root params"] + [f"{t} acc" for t in DEMO_TASKS] + ["avg acc",
              "accounted params / task", "system params / root", "train images", "evolve wall time"]
    rows = []
    for key, r in results.items():
        accs = [r["rows"][t]["acc"] for t in DEMO_TASKS]
        per_task = sum(r["rows"][t]["accounted"] for t in DEMO_TASKS) / len(DEMO_TASKS)
        rows.append([key, r["weights"].split("/")[-1], f"{r['root_params']:,}"] + [f"{a:.4f}" for a in accs]
                    + [f"{sum(accs) / len(accs):.4f}", f"{per_task / 1e3:,.0f}k ({per_task / r['root_params']:.2f} root)",
                       f"{r['total'] / r['root_params']:.2f}",
                       f"{sum(r['rows'][t]['images'] for t in DEMO_TASKS):,}", f"{r['wall']:.0f} s"])
    lines.append(table(header, rows))
    avg = {k: sum(r["rows"][t]["acc"] for t in DEMO_TASKS) / len(DEMO_TASKS) for k, r in results.items()}
    if {"efficientnet-pretrained", "efficientnet-random"} <= set(avg):
        gain = avg["efficientnet-pretrained"] - avg["efficientnet-random"]
        worst = min(DEMO_TASKS, key=lambda t: results["efficientnet-random"]["rows"][t]["acc"]
                    - results["efficientnet-pretrained"]["rows"][t]["acc"])
        lines.append(f"\nSame architecture, same settings and compute: the ImageNet weights add **{gain * 100:+.1f} "
                     f"points** of average test accuracy; the largest gain is on {worst} "
                     f"({results['efficientnet-random']['rows'][worst]['acc']:.4f} -> "
                     f"{results['efficientnet-pretrained']['rows'][worst]['acc']:.4f}).")
    lines.append("\nEvolve wall time = sum of the task iterations' wall times (training, commit, no-forgetting "
                 "check). A store that is already grown is reported, not re-run (`--runs` keeps them).\n")
    lines.append("\nPer task (accounted parameters follow the µ2Net rule: shared components divided by "
                 "their users; train images = images processed by all candidates of the task):\n")
    detail = []
    for key, r in results.items():
        for t in DEMO_TASKS:
            x = r["rows"][t]
            detail.append([key, t, f"{x['acc']:.4f}", f"{x['accounted'] / 1e3:,.1f}k", f"{x['owned'] / 1e3:,.1f}k",
                           f"{x['images']:,}", f"{x['wall']:.0f} s", x["reused"]])
    lines.append(table(["root", "task", "test acc", "accounted params", "owned params", "train images",
                        "wall time", "reuses components of"], detail))
    return "## Pretrained vs random-init roots\n\n" + "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny budgets and 600 training images per task")
    ap.add_argument("--runs", type=Path, default=Path("runs/roots"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--roots", default=",".join(ROOTS), help=f"comma list of {', '.join(ROOTS)}")
    args = ap.parse_args()
    wanted = [r.strip() for r in args.roots.split(",") if r.strip()]
    unknown = [r for r in wanted if r not in ROOTS]
    if unknown:
        sys.exit(f"error: unknown root '{unknown[0]}'; choose from {', '.join(ROOTS)}")
    cfg = configs(args.quick)
    results = {}
    for key in wanted:
        create, settings = cfg[key]
        store = args.runs / (key + ("-quick" if args.quick else ""))
        print(f"== {key}: {store}", flush=True)
        results[key] = run_root(store, create, settings, args.workers, 600 if args.quick else None)
        print({t: round(v["acc"], 4) for t, v in results[key]["rows"].items()}, flush=True)
        path = write_section("benchmarks.md", "roots", report(results, args.quick), quick=args.quick)   # after each root
        print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
