"""Speed benchmarks (issue "Speed"): every figure is a ratio measured in this run against a baseline
run in the same process, median over repeats. Results go to docs/benchmarks.md (section "speed").

    .venv/bin/python benchmarks/speed.py [--quick]
"""
from __future__ import annotations

import argparse
import copy
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import environment, table, write_section  # noqa: E402
from mupath.model import PathModel, RootSpec, create_root, root_modules  # noqa: E402
from mupath.model.multipath import shared_forward  # noqa: E402
from mupath.train.cache import ActivationCache, frozen_prefix  # noqa: E402
from mupath.train.loop import TrainConfig, train_path  # noqa: E402
from mupath.train.pipeline import to_model_input  # noqa: E402

# The reference configuration: 6-block ViT-Ti (dim 192), 32 px, patch 4, batch 128.
BENCH = RootSpec(kwargs=dict(img_size=32, patch_size=4, depth=6, embed_dim=192, num_heads=3))
BATCH = 128
HP = dict(ds_image_size=32, opt_name="adamw", opt_lr=1e-3, opt_momentum=0.9, opt_nesterov=False,
          opt_lr_warmup_ratio=0.05)


def build(spec: RootSpec, owned_slots: list[str], classes: int = 10):
    modules = root_modules(spec, classes)
    for slot, m in modules.items():
        m.requires_grad_(slot in owned_slots)
    return PathModel(modules), {s: modules[s] for s in owned_slots}, {s: f"id-{s}" for s in modules}


def data(n: int, size: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
            torch.randint(0, 10, (n,), generator=g))


def ours(owned_slots, steps, x, y, use_cache=False, spec=BENCH, size=32, batch=BATCH):
    """Images per second of mupath's candidate loop (train time only), and cache fill seconds."""
    model, owned, ids = build(spec, owned_slots)
    val = to_model_input(x[:batch], size)
    prefix, fill = None, 0.0
    if use_cache:
        t0 = time.perf_counter()
        prefix = ActivationCache(8 << 30).prefix(model, frozen_prefix(model, {id(m) for m in owned.values()}, ids),
                                                 "bench", size, x, val)
        fill = time.perf_counter() - t0
    out = train_path(model, owned, dict(HP, ds_image_size=size), TrainConfig(steps, 1, batch, 0), (x, y),
                     (val, y[:batch]), score_of=lambda q: q, bar=float("-inf"), prefix=prefix)
    return steps * batch / out.train_time, fill


def hand_written(owned_blocks: list[int], steps, x, y):
    """A plain timm training loop with the same trainable set (the baseline for framework overhead)."""
    model = create_root(BENCH)
    head = torch.nn.Linear(192, 10)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    model.requires_grad_(False)
    for i in owned_blocks:
        model.blocks[i].requires_grad_(True)
    model.norm.requires_grad_(True)
    params = [p for p in model.parameters() if p.requires_grad] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=1e-3, betas=(0.9, 0.999), weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (BATCH,), generator=g)
        inp = x[idx].float().div_(127.5).sub_(1.0)
        loss = torch.nn.functional.cross_entropy(head(model.forward_features(inp)[:, 0]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
    return steps * BATCH / (time.perf_counter() - t0)


def median_of(fn, repeats):
    return statistics.median(fn() for _ in range(repeats))


def bench_overhead(steps, repeats):
    x, y = data(4096)
    owned = ["block_3", "block_4", "block_5", "norm", "head"]
    ours(owned, 3, x, y)
    hand_written([3, 4, 5], 3, x, y)
    a = median_of(lambda: ours(owned, steps, x, y)[0], repeats)
    b = median_of(lambda: hand_written([3, 4, 5], steps, x, y), repeats)
    return a, b


LITE0 = RootSpec(name="tf_efficientnet_lite0", kwargs={"img_size": 64}, weights="package")


def bench_cache_cnn(steps, repeats):
    """The EfficientNet demo's paths (pretrained Lite0, 64 px, batch 64): the frozen bottom is most of
    the compute, so the cache pays off far more than on the 6-block ViT."""
    x, y = data(2048, size=64)
    rows = []
    for frozen in (12, 14):
        owned = [f"block_{i}" for i in range(frozen, 16)] + ["neck", "head"]
        run = lambda cache: ours(owned, steps, x, y, use_cache=cache, spec=LITE0, size=64, batch=64)  # noqa: E731
        plain = median_of(lambda: run(False)[0], repeats)
        runs = [run(True) for _ in range(repeats)]
        cached = statistics.median(r[0] for r in runs)
        fill = statistics.median(r[1] for r in runs)
        rows.append((frozen, plain, cached, cached / plain, fill))
    return rows


def cnn_cache_table(rows) -> str:
    return ("### Frozen-prefix cache vs uncached, EfficientNet-Lite0 demo paths (64 px, batch 64)\n\n" + table(
        ["frozen blocks", "uncached img/s", "cached img/s", "speed-up", "cache fill (2,048 images)"],
        [[f"{f}/16", f"{p:.0f}", f"{c:.0f}", f"**{r:.2f}x**", f"{fill:.1f}s"] for f, p, c, r, fill in rows])
        + "\n\nTarget >= 4x for a path with at least half its blocks frozen and no augmentation. The cache "
        "removes only the frozen part's forward: with k of n equally costly blocks trained, the gain is "
        "about (n + 2k) / 3k (2.7x for 1 of 6 ViT blocks). In Lite0 at 64 px the top blocks hold most "
        "of the parameters and much of the compute, so the gain stays below 3x here as well.")


def bench_cache(steps, repeats, spec=BENCH, frozens=(3, 5, 6), images=4096):
    """Cached vs uncached candidate training of a path whose first k blocks are frozen, per k."""
    depth = int(spec.kwargs["depth"])
    x, y = data(images)
    rows = []
    for frozen in frozens:
        owned = [f"block_{i}" for i in range(frozen, depth)] + ["norm", "head"]
        plain = median_of(lambda: ours(owned, steps, x, y, spec=spec)[0], repeats)
        runs = [ours(owned, steps, x, y, use_cache=True, spec=spec) for _ in range(repeats)]
        cached = statistics.median(r[0] for r in runs)
        fill = statistics.median(r[1] for r in runs)
        # amortised: one candidate of 800 steps paying the whole fill itself (the worst case)
        per_img = 1 / cached + fill / (800 * BATCH)
        rows.append((frozen, plain, cached, cached / plain, (1 / per_img) / plain, fill))
    return rows


def cache_estimate(frozen: int, depth: int, backward: float = 2.0) -> float:
    """Speed-up of the cache when k of n equally costly blocks are frozen: it removes their forward (k)
    from a step that also runs each trainable block's forward and backward (1 + `backward` forwards).
    backward = 2 (weights and inputs) is the usual estimate; backward = 1 (weights only, the least
    a backward can cost) gives an upper bound."""
    return float("inf") if frozen >= depth else 1 + frozen / ((1 + backward) * (depth - frozen))


def cache_table(rows, depth: int, images: int) -> str:
    def fmt(v: float) -> str:
        return "none" if v == float("inf") else f"{v:.2f}x"
    return table(
        ["frozen blocks", "uncached img/s", "cached img/s", "speed-up", "estimate 1 + k / 3(n - k)",
         "bound 1 + k / 2(n - k)", "speed-up incl. fill (800-step candidate)", f"cache fill ({images:,} images)"],
        [[f"{f}/{depth}", f"{p:.0f}", f"{c:.0f}", f"**{r:.2f}x**", fmt(cache_estimate(f, depth)),
          fmt(cache_estimate(f, depth, backward=1.0)), f"{ra:.2f}x", f"{fill:.1f}s"]
         for f, p, c, r, ra, fill in rows])


def inference_bound(shared: int, depth: int = 6, tasks: int = 8) -> float:
    """The most a shared prefix can give: tasks x depth block runs become shared + tasks x (depth - shared)."""
    return tasks * depth / (shared + tasks * (depth - shared))


def bench_inference(repeats, shared_blocks: int = 3):
    torch.manual_seed(0)
    base, _, ids = build(BENCH, [])
    models, slot_ids = {}, {}
    own = [f"block_{i}" for i in range(shared_blocks, 6)] + ["norm", "head"]
    for t in range(8):
        parts = dict(base.parts.items())
        for slot in own:
            parts[slot] = copy.deepcopy(parts[slot])
            for p in parts[slot].parameters():
                p.data.add_(torch.randn_like(p) * 0.01)
        models[f"t{t}"] = PathModel(parts).eval()
        slot_ids[f"t{t}"] = {s: (f"{ids[s]}-{t}" if s in own else ids[s]) for s in parts}
    x = to_model_input(data(1000)[0], 32)

    def per_task():
        t0 = time.perf_counter()
        with torch.inference_mode():
            for m in models.values():
                for i in range(0, 1000, 250):
                    m(x[i:i + 250])
        return time.perf_counter() - t0

    def shared():
        t0 = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, 1000, 250):
                shared_forward(models, slot_ids, x[i:i + 250])
        return time.perf_counter() - t0

    with torch.inference_mode():
        ref = {t: m(x[:250]) for t, m in models.items()}
        got = shared_forward(models, slot_ids, x[:250])
    assert all(torch.equal(ref[t], got[t]) for t in models)
    per_task(), shared()
    a = median_of(per_task, repeats)
    b = median_of(shared, repeats)
    return 8000 / a, 8000 / b


def bench_flops(repeats):
    from torch.utils.flop_counter import FlopCounterMode
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    gemm = median_of(lambda: (lambda t0: (a @ b, time.perf_counter() - t0)[1])(time.perf_counter()), repeats)
    peak = 2 * n ** 3 / gemm
    model, owned, _ = build(BENCH, ["patch_embed", "cls_token", "pos_embed"] + [f"block_{i}" for i in range(6)]
                            + ["norm", "head"])
    x, y = data(BATCH)
    inp = to_model_input(x, 32)
    with FlopCounterMode(display=False) as counter:
        torch.nn.functional.cross_entropy(model(inp), y).backward()
    flops = counter.get_total_flops()
    xs, ys = data(2048)
    rate = median_of(lambda: ours(list(owned), 20, xs, ys)[0], repeats)     # images/s, all trainable
    achieved = flops / BATCH * rate
    return peak, achieved, rate


class _GenerationClock:
    """Progress hook timing one generation: from the task's start to its last candidate's result
    (the commit and the no-forgetting check that follow are not part of a generation)."""

    def __init__(self) -> None:
        self.start = self.end = 0.0

    def task_started(self, *args) -> None:
        self.start = time.perf_counter()

    def candidate_step(self, *args) -> None:
        pass

    def candidate_done(self, result) -> None:
        self.end = time.perf_counter()

    def task_done(self, entry) -> None:
        pass


def bench_generation(steps):
    """One generation of 4 candidates on the ViT demo root: 1 worker x 1 thread, 2 workers x 1 thread,
    1 worker x 2 threads. 'warm' = the persistent worker pool is already up (every evolve call after the
    first in a process); 'cold' includes spawning the workers and importing torch in them."""
    from mupath import System
    from mupath.cli.demo import VIT_DEMO_ROOT
    from mupath.data import load_task
    from mupath.runtime.executors import shutdown_workers
    task = load_task("digits")
    out = {}
    cases = (("1 worker x 1 thread", 1, 1, False), ("2 workers x 1 thread, cold pool", 2, 1, True),
             ("2 workers x 1 thread", 2, 1, False), ("1 worker x 2 threads", 1, 2, False))
    for label, workers, threads, cold in cases:
        folder = Path(tempfile.mkdtemp())
        try:
            if cold:
                shutdown_workers()
            system = System.create(folder / "s", **VIT_DEMO_ROOT)
            system.add_task(task)
            executor = "inprocess" if workers == 1 else "process"
            clock = _GenerationClock()
            system.evolve(["digits"], generations=1, candidates=4, workers=workers, threads_per_worker=threads,
                          executor=executor, steps_per_validation=steps, validations=1, cache_mb=0,
                          check_immutability=False, progress=clock)
            out[label] = clock.end - clock.start
        finally:
            torch.set_num_threads(2)
            shutil.rmtree(folder, ignore_errors=True)
    shutdown_workers()
    return out


def generation_table(gen: dict[str, float]) -> str:
    base = gen["1 worker x 1 thread"]
    return (table(["executor", "wall s", "speed-up vs 1x1"], [[k, f"{v:.1f}", f"{base / v:.2f}x"] for k, v in gen.items()])
            + "\n\nA generation = from the task's start to its last candidate's result (the commit follows). "
            "The process pool persists between evolve calls in a process, so only the first call pays the "
            "'cold pool' start-up (spawn + torch import). Target: 2 workers x 1 thread >= 1.7x.")


def bench_growth(steps, tasks):
    """Wall time per task as the system grows (same budget per task)."""
    from mupath import System, Task
    from mupath.cli.demo import VIT_DEMO_ROOT
    from mupath.data import load_task
    d = load_task("digits")
    maps = [lambda y: y, lambda y: y % 2, lambda y: (y >= 5).astype(np.int64), lambda y: y % 3,
            lambda y: (y == 0).astype(np.int64), lambda y: y // 2, lambda y: (y % 4 == 0).astype(np.int64),
            lambda y: 9 - y]
    folder = Path(tempfile.mkdtemp())
    times = []
    try:
        system = System.create(folder / "s", **VIT_DEMO_ROOT)
        for i in range(tasks):
            f = maps[i % len(maps)]
            system.add_task(Task.from_arrays(f"t{i}", d.train.images, f(d.train.labels),
                                             val=(d.validation.images, f(d.validation.labels)),
                                             test=(d.test.images, f(d.test.labels))))
            rep = system.evolve([f"t{i}"], generations=1, candidates=2, steps_per_validation=steps,
                                validations=1)
            times.append(rep.tasks[0].wall_time)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return times


DEEP = RootSpec(kwargs=dict(img_size=32, patch_size=4, depth=12, embed_dim=192, num_heads=3))


def bounds_section(steps, repeats, t_start) -> str:
    """The two targets of the issue whose bound on the 6-block configuration is below the target:
    measured against that bound, and on configurations where the bound is above the target."""
    deep = bench_cache(steps, repeats, spec=DEEP, frozens=(9, 11), images=2048)
    print("cache deep", deep, flush=True)
    inf = []
    for shared in (3, 5):
        per_task, both = bench_inference(repeats, shared)
        inf.append((shared, per_task, both))
        print("inference", shared, per_task, both, flush=True)
    return ("### Speed targets against their bounds (cache: 12-block ViT-Ti; inference: 8 tasks, 6 blocks)\n\n"
            + environment() + f"- wall time: {time.perf_counter() - t_start:.0f} s\n\n"
            + "Frozen-prefix cache, ViT-Ti at its standard depth of 12 blocks (dim 192, 32 px, patch 4, batch 128, "
            "no augmentation):\n\n" + cache_table(deep, 12, 2048)
            + "\n\nThe cache removes only the frozen blocks' forward. With k of n blocks frozen, a step still runs "
            "each trainable block's forward and backward: about 3 forwards (1 + k / 3(n - k): "
            f"{cache_estimate(5, 6):.2f}x for 5/6, {cache_estimate(11, 12):.2f}x for 11/12), at least 2 when the "
            f"backward computes weight gradients only (the bound 1 + k / 2(n - k): "
            f"{cache_estimate(5, 6, backward=1.0):.1f}x for 5/6, {cache_estimate(11, 12, backward=1.0):.1f}x for "
            "11/12). On the issue's 6-block ViT-Ti no path with a "
            "trainable block can reach 4x; at the standard depth of 12, 11 frozen blocks do.\n\nShared-prefix "
            "inference, 8 tasks of 6 blocks (1,000 images each):\n\n"
            + table(["shared blocks", "one pass per task, task-images/s", "shared prefix, task-images/s", "speed-up",
                     "bound 8n / (s + 8(n - s))", "of the bound"],
                    [[f"{s}/6", f"{a:.0f}", f"{b:.0f}", f"**{b / a:.2f}x**", f"{inference_bound(s):.2f}x",
                      f"{b / a / inference_bound(s):.0%}"] for s, a, b in inf])
            + f"\n\nWith the first half shared (3/6) the bound is {inference_bound(3):.2f}x even if embeddings and heads cost nothing, "
            "so the issue's 1.8x is out of reach for that configuration; 5/6 shared shows the trie's gain where "
            "the bound allows more.")


def memory_table() -> str:
    """Peak memory of one candidate (fresh processes) and the activation cache's size."""
    mem = candidate_memory()
    cache_mb = 4096 * 65 * 192 * 4 / 2 ** 20
    return "Memory of one candidate (6-block path, 5 blocks frozen, batch 128, 4,096 images):\n\n" + table(
        ["measure", "value"], [
            ["a fresh process after importing torch and mupath", f"{mem['import']:.0f} MiB"],
            ["one candidate, uncached: peak, above the import",
             f"{mem['uncached']:.0f} MiB, +{mem['uncached'] - mem['import']:.0f} MiB"],
            ["the same candidate with the activation cache: peak, above the import",
             f"{mem['cached']:.0f} MiB, +{mem['cached'] - mem['import']:.0f} MiB"],
            ["activation cache for 4,096 images (65 tokens x 192, fp32)", f"{cache_mb:.0f} MiB"],
            ["default cache bound per worker (`cache_mb`)", "1024 MiB"]])


def _peak_rss_mib(job: str) -> float:
    """Peak resident memory of this (fresh) process after `job`: "import" (torch + mupath only) or one
    candidate of the 6-block path with 5 blocks frozen, "uncached" or "cached" (4,096 images). Read
    from VmHWM: getrusage's ru_maxrss survives exec, so a spawned child would report its parent's peak."""
    torch.set_num_threads(1)
    if job != "import":
        x, y = data(4096)
        ours(["block_5", "norm", "head"], 10, x, y, use_cache=job == "cached")
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def candidate_memory() -> dict[str, float]:
    """Peak memory of one candidate, each in a fresh spawned process (so earlier runs do not count)."""
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    out = {}
    for job in ("import", "uncached", "cached"):
        with ctx.Pool(1) as pool:
            out[job] = pool.apply(_peak_rss_mib, (job,))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer steps and repeats (smoke run)")
    parser.add_argument("--only", choices=["generation", "cache-cnn", "bounds", "memory"], help="run one measurement; it gets its own "
                        "section (speed-<name>) and the full section is left as it is")
    args = parser.parse_args()
    torch.set_num_threads(2)
    steps, repeats = (10, 1) if args.quick else (40, 3)
    t_start = time.perf_counter()
    sections = []

    def alone(name: str, title: str, content: str) -> None:
        """Write one measurement re-run on its own into its section speed-<name>."""
        body = (f"### {title} (re-measured alone)\n\n" + environment()
                + f"- wall time: {time.perf_counter() - t_start:.0f} s\n\n" + content)
        print(write_section("benchmarks.md", f"speed-{name}", body, quick=args.quick))

    if args.only == "generation":
        alone("generation", "One generation by executor, persistent pool",
              generation_table(bench_generation(60 if args.quick else 250)))
        return
    if args.only == "memory":
        alone("memory", "Memory of one candidate", memory_table())
        return
    if args.only == "bounds":
        print(write_section("benchmarks.md", "speed-bounds", bounds_section(steps, repeats, t_start),
                            quick=args.quick))
        return
    if args.only == "cache-cnn":
        rows = bench_cache_cnn(steps, repeats)
        body = (cnn_cache_table(rows).replace("\n\n", "\n\n" + environment()
                + f"- wall time: {time.perf_counter() - t_start:.0f} s\n\n", 1))
        print(write_section("benchmarks.md", "speed-cache-cnn", body, quick=args.quick))
        return

    a, b = bench_overhead(steps, repeats)
    sections.append("### Candidate training vs a hand-written timm loop (same trainable set)\n\n" + table(
        ["loop", "img/s"], [["mupath candidate loop", f"{a:.1f}"], ["hand-written timm loop", f"{b:.1f}"],
                            ["**ratio**", f"**{a / b:.2f}x** (target >= 0.95x)"]]))
    print("overhead", a, b, a / b, flush=True)

    rows = bench_cache(steps, repeats)
    sections.append("### Frozen-prefix cache vs uncached (6 blocks, no augmentation)\n\n" + cache_table(rows, 6, 4096)
                    + "\n\nTarget >= 4x for a path with at least half its blocks frozen. On 6 blocks the bound is "
                    f"below 4x for every path that trains a block ({cache_estimate(5, 6, backward=1.0):.1f}x at 5/6); section speed-bounds measures the "
                    "12-block ViT-Ti, where 11/12 frozen allows it.")
    print("cache", rows, flush=True)

    cnn_rows = bench_cache_cnn(steps, repeats)
    sections.append(cnn_cache_table(cnn_rows))
    print("cache cnn", cnn_rows, flush=True)

    per_task, shared = bench_inference(repeats)
    sections.append("### Inference, 8 tasks sharing the first half of their paths (1,000 images each)\n\n" + table(
        ["mode", "task-images/s"], [["one pass per task", f"{per_task:.0f}"], ["shared prefix (trie)", f"{shared:.0f}"],
                                    ["**ratio**", f"**{shared / per_task:.2f}x** (target >= 1.8x)"]]))
    print("inference", per_task, shared, flush=True)

    peak, achieved, rate = bench_flops(repeats)
    sections.append("### Achieved training FLOP/s (all components trainable, batch 128)\n\n" + table(
        ["measure", "value"], [["fp32 GEMM peak (2048^3, 2 threads)", f"{peak / 1e9:.1f} GFLOP/s"],
                               ["training throughput", f"{rate:.1f} img/s"],
                               ["achieved", f"{achieved / 1e9:.1f} GFLOP/s = **{achieved / peak:.0%}** of peak"]]))
    print("flops", peak, achieved, flush=True)

    gen = bench_generation(60 if args.quick else 250)
    sections.append("### One generation (4 candidates, ViT demo root, digits) by executor\n\n" + generation_table(gen))
    print("generation", gen, flush=True)

    times = bench_growth(40 if args.quick else 150, 4 if args.quick else 8)
    slope = np.polyfit(np.arange(len(times)), times, 1)[0]
    sections.append("### Time per task as the system grows (same budget per task)\n\n" + table(
        ["tasks already in the system"] + [str(i) for i in range(len(times))],
        [["wall s"] + [f"{t:.1f}" for t in times]])
        + f"\n\nLinear fit slope: {slope:+.2f} s per added task (mean {np.mean(times):.1f} s).")
    print("growth", times, flush=True)

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sections.append("### Memory\n\n" + f"Peak resident memory of this benchmark process: {rss:.0f} MiB.\n\n"
                    + memory_table())
    body = ("## Speed\n\n" + environment() + f"- wall time: {time.perf_counter() - t_start:.0f} s\n\n"
            + "\n\n".join(sections))
    print(write_section("benchmarks.md", "speed", body, title="mupath benchmarks", quick=args.quick))


if __name__ == "__main__":
    main()
