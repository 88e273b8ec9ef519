"""Export benchmark (issue 24, part 3): the exported ONNX model in onnxruntime against mupath's own
`System.predict`, for one task and for a two-task export (shared prefix computed once), at batch 1
and 64, all in one run on one thread each. The torch.export (pt2) program is timed alongside. Also
checks, on the tasks' test images, that the exports give predict's classes. Results go to
docs/benchmarks.md (section "export").

The system: the demo's root (pretrained EfficientNet-Lite0 at 64 px) with mnist and a parity task on
the same images, evolved with a tiny budget (speed does not depend on accuracy); both paths keep the
root's stem and blocks 0-13 with no adapter among them, so the two-task export shares that prefix
(the section says what the two paths share).

    .venv/bin/python benchmarks/export.py [--quick] [--store runs/bench-export]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import environment, table, write_section  # noqa: E402
from mupath import System, Task, load_exported, load_task  # noqa: E402

TASKS = ["mnist", "mnist_parity"]
ROOT = dict(root="tf_efficientnet_lite0", image_size=64, weights="package", seed=0)
FROZEN = ({f"_mu_|clone:block_{i}": 0.0 for i in range(14)} | {f"_mu_|add:adapter_{i}": 0.0 for i in range(14)}
          | {"_mu_|clone:stem": 0.0})
SETTINGS = dict(generations=1, candidates=2, steps_per_validation=20, validations=1, batch_size=32,
                val_limit=200, hparams=FROZEN | {"_mu_|clone:block_15": 1.0}, ranges={"ds_image_size": []})
BATCHES = (1, 64)
CHECK_IMAGES = 500


def make_store(folder: Path) -> System:
    """The benchmark's system, reused when a previous run left it complete."""
    if (folder / "manifest.sqlite").exists():
        system = System.open(folder)
        if all(s.path_id for s in system.status()) and system.tasks == TASKS:
            return system
        raise SystemExit(f"{folder} holds another or an unfinished system; remove it or pass --store")
    system = System.create(folder, **ROOT)
    mnist = load_task("mnist")
    system.add_task(mnist)
    system.add_task(Task.from_arrays("mnist_parity", mnist.train.images, mnist.train.labels % 2,
                                     val=(mnist.validation.images, mnist.validation.labels % 2),
                                     test=(mnist.test.images, mnist.test.labels % 2), class_names=["even", "odd"]))
    system.evolve(TASKS, **SETTINGS)
    return system


@dataclasses.dataclass(frozen=True)
class Timing:
    runner: str
    tasks: str
    batch: int
    median_ms: float

    @property
    def images_per_s(self) -> float:
        return self.batch / (self.median_ms / 1000)


def interleaved_ms(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median wall time of each of `fns` after two warm-up calls each. The calls are interleaved (one
    of each per round), so a change in the machine's load hits every runner alike."""
    for fn in fns:
        fn(), fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn()
            times[i].append((time.perf_counter() - t0) * 1000)
    return [statistics.median(t) for t in times]


def session(path: Path) -> Any:
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def export_all(system: System, out: Path) -> dict[str, float]:
    """Export one task and both tasks as ONNX and pt2; seconds per export."""
    seconds = {}
    for fmt in ("onnx", "pt2"):
        for name, tasks in (("one", TASKS[:1]), ("both", TASKS)):
            t0 = time.perf_counter()
            system.export(tasks, fmt, out / f"{name}.{fmt}", force=True)
            seconds[f"{name}.{fmt}"] = time.perf_counter() - t0
    return seconds


def parity(system: System, out: Path) -> list[list[object]]:
    """Same classes as System.predict on the test images; the largest logit difference."""
    images = system.store.task_data(TASKS[0])["test.x"][:CHECK_IMAGES].permute(0, 2, 3, 1).contiguous().numpy()
    rows = []
    both = session(out / "both.onnx").run(None, {"images": images})
    for name, outputs in (("one task", session(out / "one.onnx").run(None, {"images": images})), ("two tasks", both)):
        for task, logits in zip(TASKS, outputs):
            ref = system.logits(task, images).numpy()
            agree = float((logits.argmax(1) == system.predict(task, images)).mean())
            rows.append([f"ONNX, {name}", task, f"{agree:.1%} of {len(images)}", f"{np.abs(logits - ref).max():.2g}"])
    return rows


Case = tuple[str, str, Callable[[], object]]


def timings(system: System, out: Path, repeats: dict[int, int]) -> list[Timing]:
    """Each runner at each batch size, one thread each."""
    torch.set_num_threads(1)
    pool = system.store.task_data(TASKS[0])["test.x"][:max(BATCHES)].permute(0, 2, 3, 1).contiguous().numpy()
    runners = Runners(session(out / "one.onnx"), session(out / "both.onnx"), session_for(system, out, TASKS[1]),
                      load_exported(out / "one.pt2"), load_exported(out / "both.pt2"))
    rows = []
    for batch in BATCHES:
        cases = runners.cases(system, pool[:batch])
        for (runner, tasks, _), ms in zip(cases, interleaved_ms([c[2] for c in cases], repeats[batch])):
            rows.append(Timing(runner, tasks, batch, ms))
            print(rows[-1], flush=True)
    return rows


@dataclasses.dataclass(frozen=True)
class Runners:
    """The exported models, loaded once."""

    one: Any                 #: onnxruntime session of the one-task export
    both: Any                #: ... of the two-task export
    second: Any              #: ... of the second task alone
    pt2_one: torch.nn.Module
    pt2_both: torch.nn.Module

    def cases(self, system: System, x: np.ndarray) -> list[Case]:
        """(runner, tasks, call) for one batch; every call returns class ids."""
        xt = torch.from_numpy(x)
        return [
            ("mupath System.predict", "one", lambda: system.predict(TASKS[0], x)),
            ("onnxruntime", "one", lambda: self.one.run(None, {"images": x})[0].argmax(1)),
            ("pt2 (torch.export)", "one", lambda: _no_grad(lambda: self.pt2_one(xt).argmax(1))),
            ("mupath System.predict (shared prefix)", "two", lambda: system.predict(TASKS, x)),
            ("onnxruntime, two-task export", "two",
             lambda: [o.argmax(1) for o in self.both.run(None, {"images": x})]),
            ("onnxruntime, two single-task exports", "two",
             lambda: [s.run(None, {"images": x})[0].argmax(1) for s in (self.one, self.second)]),
            ("pt2 (torch.export), two-task export", "two",
             lambda: _no_grad(lambda: [v.argmax(1) for v in self.pt2_both(xt).values()])),
        ]


def session_for(system: System, out: Path, task: str) -> Any:
    path = out / f"{task}.onnx"
    system.export(task, "onnx", path, force=True)
    return session(path)


def _no_grad(fn: Callable[[], object]) -> object:
    with torch.inference_mode():
        return fn()


def shared_prefix(system: System) -> str:
    """The slots (in forward order) whose component the two paths share before they diverge."""
    from mupath.model.components import slot_order
    a, b = (system.store.retained_path(t).components for t in TASKS)
    shared = []
    for slot in sorted(a, key=slot_order):
        if b.get(slot) != a[slot]:
            break
        shared.append(slot)
    return f"{shared[0]}..{shared[-1]} ({len(shared)} of {len(a)} / {len(b)} slots)" if shared else "nothing"


def speed_table(rows: list[Timing]) -> str:
    base = {(r.tasks, r.batch): r.median_ms for r in rows if r.runner.startswith("mupath")}
    return table(["tasks", "runner", "batch", "ms per batch", "images/s", "vs System.predict"],
                 [[r.tasks, r.runner, r.batch, f"{r.median_ms:.2f}", f"{r.images_per_s:.0f}",
                   f"{base[(r.tasks, r.batch)] / r.median_ms:.2f}x"] for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats (smoke run)")
    parser.add_argument("--store", type=Path, default=Path("runs/bench-export"))
    args = parser.parse_args()
    t_start = time.perf_counter()
    load_before = os.getloadavg()[0]
    torch.set_num_threads(2)
    system = make_store(args.store)
    repeats = {1: 10, 64: 3} if args.quick else {1: 100, 64: 15}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        seconds = export_all(system, out)
        sizes = {name: (out / name).stat().st_size for name in seconds}
        checks = parity(system, out)
        rows = timings(system, out, repeats)
    body = ("## Export: onnxruntime vs System.predict\n\n" + environment()
            + f"- wall time: {time.perf_counter() - t_start:.0f} s\n"
            + "- system: EfficientNet-Lite0 (packaged ImageNet weights) at 64 px; tasks mnist (28x28 grey, 10 "
              "classes) and mnist_parity (same images, 2 classes); the two paths share their prefix "
              f"{shared_prefix(system)}; inputs are uint8 28x28x1, resized to 64 px inside every runner\n"
            + "- one thread everywhere (torch.set_num_threads(1); onnxruntime intra/inter-op threads 1, CPU "
              f"provider); median of {repeats[1]} (batch 1) / {repeats[64]} (batch 64) calls after 2 warm-ups, "
              "the runners' calls interleaved; every runner returns class ids (argmax included)\n"
            + f"- machine load (1-min load average, other processes included): {load_before:.1f} at the start, "
              f"{os.getloadavg()[0]:.1f} at the end; absolute times move with it, ratios less\n\n"
            + "### Time per batch\n\n" + speed_table(rows)
            + "\n\n### The exports give System.predict's classes (mnist test images)\n\n"
            + table(["export", "task", "same class", "largest logit difference"], checks)
            + "\n\n### Export cost\n\n"
            + table(["export", "seconds", "MB"],
                    [[k, f"{v:.1f}", f"{sizes[k] / 1e6:.1f}"] for k, v in seconds.items()]))
    print(write_section("benchmarks.md", "export", body, quick=args.quick))


if __name__ == "__main__":
    main()
