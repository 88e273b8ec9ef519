"""Modules at every depth (issue 31): what a candidate patched at block k costs per step, what the
activation cache holds for it, and whether mupath's own low-rank delta is right before the search uses it.

    python -m benchmarks.modules steps        # step times and cache sizes (~3 min, nothing else running)
    python -m benchmarks.modules sanity       # deltas:8 by mupath's loop vs peft lora:8 (~15 min, seed 0)
    python -m benchmarks.modules report       # section "modules" of docs/benchmarks.md from OUT/results.json

Step times: the demo's root (ImageNet-pretrained EfficientNet-Lite0 at 64 px, batch 64, AdamW, torch at
the machine's cores), a path with a fresh low-rank delta at block k and a new head. "cached" trains from
the activations entering block k (what the activation cache serves a candidate whose longest frozen
prefix ends there); "uncached" runs the same candidate from the images; "finetune-all" is a full step
with every component trainable. Each figure is the median of timed steps after warm-up, all in one run.

Sanity: the built-in stream (fashion_mnist, mnist, digits, lfw_faces) at the pretrained-root quality
run's budget (15,360 training images per task), the search space's default learning rate (AdamW 1e-3,
what the peft baseline trains at), seed 0: `deltas:8` (a rank-8 `lora_i` before every block, the neck
and head trained, committed into a store by the evolution's worker) against `lora:8` (peft on every plain
conv and linear layer of the body, the head trained). Resumes: each method is kept in OUT/results.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from benchmarks.quality import TASKS, fmt_k
from benchmarks.quality_efficientnet import FULL, LORA_METHOD, ROOT, Results, run_pool_methods, run_store_methods
from benchmarks.report import environment, table, write_section
from mupath.data import load_task
from mupath.model.components import ComponentSpec, build_component, new_component_tensors
from mupath.model.path_model import PathModel, root_modules
from mupath.model.root import DEFAULT_ROOT, RootSpec, create_root, cut_root
from mupath.train.pipeline import to_model_input

DELTAS_METHOD = "deltas:8"
BUDGET = 15_360                     #: training images per task: the pretrained-root quality run's
DEPTHS = [0, 3, 6, 9, 12, 15]       #: blocks a candidate is patched at (Lite0 has 16)
BATCH, WARMUP, TIMED = 64, 5, 30
DEFAULT_CACHE_MB = 1024             #: EvolveSettings.cache_mb's default (per worker)


def root_spec() -> RootSpec:
    """The demo's root (what `System.create` picks when none is named)."""
    return RootSpec(name=DEFAULT_ROOT.name, kwargs={"img_size": DEFAULT_ROOT.image_size},
                    weights=str(DEFAULT_ROOT.weights))


# ---- step times -----------------------------------------------------------------------------------
def patched(spec: RootSpec, base: dict[str, nn.Module], configs: dict[str, dict], k: int) -> PathModel:
    """The root's components (frozen) with a fresh rank-8 delta before block k and a new head (trainable)."""
    lora = ComponentSpec("lora", {"block": configs[f"block_{k}"], "rank": 8})
    delta = build_component(lora, spec)
    delta.load_state_dict(new_component_tensors(lora, seed=0, root=spec))
    head = nn.Linear(base["head"].in_features, 10)
    modules = {**base, f"lora_{k}": delta, "head": head}
    for slot, module in modules.items():
        module.requires_grad_(slot in (f"lora_{k}", "head"))
    return PathModel(modules).train(False)


def median_step(model: PathModel, trainable: list[nn.Parameter], x: torch.Tensor, y: torch.Tensor,
                start: int | None) -> float:
    """Median seconds of one AdamW step: from cached activations `x` entering body slot `start`, or
    from the images `x` (start None)."""
    opt = torch.optim.AdamW(trainable, lr=1e-3)
    times = []
    for i in range(WARMUP + TIMED):
        t0 = time.perf_counter()
        out = model(x) if start is None else model.head_logits(model.forward_tokens(x, start))
        loss = nn.functional.cross_entropy(out, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= WARMUP:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def step_times() -> dict[str, Any]:
    spec = root_spec()
    size = spec.image_size
    torch.manual_seed(0)
    images = to_model_input(torch.randint(0, 256, (BATCH, 3, size, size), dtype=torch.uint8), size)
    labels = torch.randint(0, 10, (BATCH,))
    configs = {slot: config for slot, _, config, _ in cut_root(create_root(spec))}
    base = root_modules(spec, 10)
    rows = []
    for k in DEPTHS:
        model = patched(spec, base, configs, k)
        trainable = [p for p in model.parameters() if p.requires_grad]
        start = model.body.index(f"lora_{k}")
        with torch.no_grad():
            cached = _prefix(model, images, start)
        rows.append({"k": k, "cached_s": median_step(model, trainable, cached, labels, start),
                     "uncached_s": median_step(model, trainable, images, labels, None),
                     "trainable": sum(p.numel() for p in trainable),
                     "bytes_per_image": cached[0].numel() * cached.element_size()})
    full = PathModel({**base, "head": nn.Linear(base["head"].in_features, 10)})
    full.requires_grad_(True)
    finetune = median_step(full, list(full.parameters()), images, labels, None)
    return {"rows": rows, "finetune_all_s": finetune, "threads": torch.get_num_threads(), "batch": BATCH}


def _prefix(model: PathModel, images: torch.Tensor, start: int) -> torch.Tensor:
    """The activations entering body slot `start`: what the cache keeps for a prefix ending there."""
    x = model.family.activations(model.embed(images))
    for slot in model.body[:start]:
        x = model.run(slot, x)
    return x


# ---- the sanity row -------------------------------------------------------------------------------
def sanity(out: Path, workers: int) -> None:
    results = Results(out, {"budget": BUDGET, "tasks": TASKS, "root": ROOT})
    tasks = {name: load_task(name) for name in TASKS}
    budgets = {t: BUDGET for t in TASKS}
    if not results.has(DELTAS_METHOD, 0):
        entry = run_store_methods(out, tasks, [DELTAS_METHOD], budgets, 0, FULL, workers)[DELTAS_METHOD]
        results.put(DELTAS_METHOD, 0, entry)
    if not results.has(LORA_METHOD, 0):
        from benchmarks.quality_efficientnet import open_store
        store = open_store(out / "seed0" / "data", tasks)
        folder = store.path
        store.close()
        results.put(LORA_METHOD, 0, run_pool_methods(folder, [LORA_METHOD], budgets, 0, FULL, workers)[LORA_METHOD])


# ---- the report -----------------------------------------------------------------------------------
def report(out: Path) -> None:
    data = json.loads((out / "results.json").read_text()) if (out / "results.json").exists() else {"runs": {}}
    steps = json.loads((out / "steps.json").read_text()) if (out / "steps.json").exists() else None
    parts = ["## Modules at every depth", "", environment().rstrip(), ""]
    if steps:
        rows = []
        for r in steps["rows"]:
            fits = (DEFAULT_CACHE_MB << 20) // max(1, r["bytes_per_image"])
            rows.append([r["k"], f"{1e3 * r['cached_s']:.0f}", f"{1e3 * r['uncached_s']:.0f}",
                         f"{r['uncached_s'] / r['cached_s']:.1f}x", f"{steps['finetune_all_s'] / r['cached_s']:.1f}x",
                         fmt_k(r["trainable"]), f"{r['bytes_per_image'] / 1024:.0f} KiB", f"{fits:,}"])
        parts += [f"### Step time of a candidate patched at block k (batch {steps['batch']}, "
                  f"{steps['threads']} threads; finetune-all step {1e3 * steps['finetune_all_s']:.0f} ms)", "",
                  "Measured by `python -m benchmarks.modules steps` (nothing else running). "
                  "A rank-8 delta before block k and a new head train; the stem and blocks below k are frozen and "
                  "served by the activation cache (\"cached\") or run from the images (\"uncached\"). The cache "
                  f"keeps a prefix's activations while they fit its bound ({DEFAULT_CACHE_MB} MiB per worker by "
                  "default, `--cache-mb`); the last column is how many training images that is at k.", "",
                  table(["k", "cached ms", "uncached ms", "uncached / cached", "finetune-all / cached",
                         "trainable", "activations / image", f"images in {DEFAULT_CACHE_MB} MiB"], rows), ""]
    runs = data.get("runs", {})
    if runs:
        rows = []
        for method in (DELTAS_METHOD, LORA_METHOD):
            entry = runs.get(f"{method}/seed0")
            if entry is None:
                continue
            accs = [entry["tasks"][t]["test_accuracy"] for t in TASKS]
            params = [entry["tasks"][t]["accounted_params"] for t in TASKS]
            rows.append([method, *[f"{a:.4f}" for a in accs], f"**{statistics.mean(accs):.4f}**",
                         fmt_k(statistics.mean(params))])
        parts += ["### Sanity: mupath's low-rank delta against peft's LoRA (seed 0, 15,360 images per task, "
                  "AdamW 1e-3)", "", table(["method", *TASKS, "mean", "params/task"], rows), ""]
        both = [runs.get(f"{m}/seed0") for m in (DELTAS_METHOD, LORA_METHOD)]
        if all(both):
            gap = statistics.mean(both[0]["tasks"][t]["test_accuracy"] for t in TASKS) - statistics.mean(
                both[1]["tasks"][t]["test_accuracy"] for t in TASKS)
            parts.append(f"deltas:8 - lora:8 = {100 * gap:+.2f} points (target: within 0.5). Run by "
                         f"`python -m benchmarks.modules sanity` on this machine (deltas:8 "
                         f"{both[0]['phase_wall']:.0f} s, lora:8 {both[1]['phase_wall']:.0f} s, 2 workers). deltas:8 "
                         "also trains the neck (0.41M, as every store baseline does), where peft's lora:8 puts a "
                         "LoRA on the neck's conv: hence its larger size.")
    write_section("benchmarks.md", "modules", "\n".join(parts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["steps", "sanity", "report"])
    parser.add_argument("--out", type=Path, default=Path("runs/modules"))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.what == "steps":
        path = args.out / "steps.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(step_times(), indent=1))
        os.replace(tmp, path)
    elif args.what == "sanity":
        sanity(args.out, args.workers)
    report(args.out)


if __name__ == "__main__":
    main()
