"""`mupath demo`: the main job on the built-in offline tasks. A random-init ViT is the only offline
ViT root, so the root is small (4 blocks, width 96, 7x7 patches of 28 px images) and the budgets are
sized for a 2-core machine (see docs/benchmarks.md for the measured run)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

DEMO_TASKS = ["fashion_mnist", "mnist", "digits", "lfw_faces"]
DEMO_ROOT: dict[str, Any] = dict(root="vit_tiny_patch16_224", image_size=28, patch_size=7, depth=4,
                                 embed_dim=96, num_heads=3, seed=0)
DEMO_SETTINGS: dict[str, Any] = dict(iterations=1, generations=3, candidates=2, steps_per_validation=250,
                                     validations=4, batch_size=64, val_limit=1000, scale_factor=0.99, seed=0)


def run_demo(store: Path, workers: int, console: Console) -> None:
    from mupath.cli.progress import RichProgress
    from mupath.cli.tables import status_table
    from mupath.data import load_task
    from mupath.system import MANIFEST, System

    store = Path(store)
    if (store / MANIFEST).exists():
        system = System.open(store)
        console.print(f"resuming the demo in {system.path}")
    else:
        system = System.create(store, **DEMO_ROOT)
        console.print(f"created {system.path}: random-init ViT, {system.root_params:,} parameters")
    for name in DEMO_TASKS:
        if name not in system.tasks:
            task = load_task(name)
            system.add_task(task)
            console.print(f"added {name}: {len(task.train)}/{len(task.validation)}/{len(task.test)} "
                          f"train/val/test images")
    with RichProgress(console) as progress:
        system.evolve(DEMO_TASKS, progress=progress, workers=workers, **DEMO_SETTINGS)
    times: dict[str, float] = {}
    for commit in system.manifest.commits():
        times[commit["task"]] = times.get(commit["task"], 0.0) + float(commit["info"].get("wall_time", 0.0))
    console.print(status_table(system, times))
    from mupath.viz import draw_system_graph
    png = draw_system_graph(system, store / "graph.png")
    console.print(f"system graph: {png}")
