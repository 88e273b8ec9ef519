"""What a new kind of input shift costs (issue 9: why the last 20 tasks of stream69 add blocks).

The scale run's first task of each new kind of shift (mnist_inverted, mnist_mirrored, mnist_tinted, ...)
cloned a transformer block with its stem, about a quarter of the root each. Inverted and tinted pixels
are an affine map of the originals, so a retrained stem alone could in principle absorb them. This
benchmark measures what each cheaper adaptation reaches with the scale run's budget per task.

On a system grown from the random-init ViT demo root over fashion_mnist and mnist (the scale run's
settings), each shifted task is evolved on its own copy of that system, with the scale run's budget
(3 generations x 2 candidates, head_first, probe order), restricted to one set of mutation actions:
head only; stem (patch embedding) only; stem + adapters; stem + the first block; and the unrestricted
search of the scale run. Restricted variants keep the parent's hyperparameters (no model-key moves), so
they differ only in what they train. Each row is one seed (the scale run saw a few points of seed noise
per task).

    .venv/bin/python benchmarks/shift.py [--tasks mnist_inverted,...] [--work runs/bench-shift] [--quick]

Default tasks: the first inverted, mirrored and tinted tasks of stream69, and fashion_mnist_inverted, the
scale run's one sampled task below 0.9 of its single-task accuracy. About 14 minutes on 2 cores. Writes
the section "shift" of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import environment, table, write_section  # noqa: E402
from mupath.search.space import search_space  # noqa: E402
from benchmarks.scale import adaptations, footprint, settings as scale_settings  # noqa: E402

BASE_TASKS = ["fashion_mnist", "mnist"]
#: variant: (clone the stem, blocks to clone, add adapters); None = the scale run's unrestricted search
VARIANTS: dict[str, tuple[bool, tuple[int, ...], bool] | None] = {
    "head only": (False, (), False),
    "stem": (True, (), False),
    "stem + adapters": (True, (), True),
    "stem + block 0": (True, (0,), False),
    "search (scale settings)": None,
}


def restricted(kw: dict[str, Any], slots: list[str], depth: int, model_keys: list[str], stem: bool,
               blocks: tuple[int, ...], adapters: bool) -> dict[str, Any]:
    """The scale settings with every mutation action fixed to 0 or 1 and no model-key moves."""
    hp = {f"_mu_|clone:{s}": 0.0 for s in slots if s not in ("head", "norm")}
    hp.update({f"_mu_|clone:adapter_{i}": 0.0 for i in range(depth)})   # a parent's adapters stay shared
    hp["_mu_|clone:patch_embed"] = float(stem)
    hp.update({f"_mu_|clone:block_{i}": 1.0 for i in blocks})
    hp.update({f"_mu_|add:adapter_{i}": float(adapters) for i in range(depth)})
    return {**kw, "hparams": hp, "ranges": {**kw["ranges"], **{k: [] for k in model_keys}}}


def base_system(work: Path, kw: dict[str, Any]) -> Path:
    """fashion_mnist and mnist grown from the ViT demo root (reused when already there)."""
    from mupath import System, load_task
    from mupath.cli.demo import VIT_DEMO_ROOT
    from mupath.system import MANIFEST
    base = work / "base"
    system = System.open(base) if (base / MANIFEST).exists() else System.create(base, **VIT_DEMO_ROOT)
    for name in BASE_TASKS:
        if name not in system.tasks:
            system.add_task(load_task(name))
        if name not in system.manifest.retained():
            system.evolve([name], **kw)
    return base


def run_variant(base: Path, work: Path, task: str, kw: dict[str, Any]) -> dict[str, Any]:
    """Evolve `task` on a copy of the base system; its test accuracy, owned parameters and score."""
    from mupath import System, load_task
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(base, work)
    system = System.open(work)
    system.add_task(load_task(task))
    t0 = time.perf_counter()
    system.evolve([task], **kw)
    commit = system.history(task)[-1]
    owned, added, reuses = footprint(system, task)
    shutil.rmtree(work, ignore_errors=True)
    return dict(test=commit.test_accuracy, score=commit.info.score, added=added, reuses=reuses,
                owned=adaptations(owned), wall=time.perf_counter() - t0)


def verdicts(results: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """Per task: the variant the search's score prefers, and the best one that clones no block."""
    out = []
    for task in dict.fromkeys(t for t, _ in results):
        mine = {v: r for (t, v), r in results.items() if t == task}
        best = max(mine, key=lambda v: mine[v]["score"])
        cheap = {v: r for v, r in mine.items() if not any(s.startswith("block_") for s in r["owned"])}
        alt = max(cheap, key=lambda v: cheap[v]["score"])
        out.append(f"- {task}: highest score **{best}** (test {mine[best]['test']:.3f}, {mine[best]['added']:,} "
                   f"params); best without a cloned block: {alt} (test {cheap[alt]['test']:.3f}, "
                   f"{cheap[alt]['added']:,} params, score {cheap[alt]['score']:.3f} vs {mine[best]['score']:.3f})")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="mnist_inverted,mnist_mirrored,mnist_tinted,fashion_mnist_inverted")
    parser.add_argument("--work", type=Path, default=Path("runs/bench-shift"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="mnist_inverted only, small budgets (smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.tasks, args.work = "mnist_inverted", args.work.with_name(args.work.name + "-quick")
    from mupath import System
    from mupath.search.settings import make_settings
    from mupath.search.space import is_model_key
    from mupath.store.records import ROOT_TASK
    t0 = time.perf_counter()
    kw = scale_settings(args.quick, args.workers)
    base = base_system(args.work, kw)
    system = System.open(base)
    slots = list(system.manifest.retained()[ROOT_TASK].components)
    model_keys = [k for k in search_space(system.store, make_settings(**kw)).ranges if is_model_key(k)]
    base_acc = {c.task: c.test_accuracy for c in system.manifest.commit_records()}
    rows, results = [], {}
    for task in args.tasks.split(","):
        for name, spec in VARIANTS.items():
            run_kw = kw if spec is None else restricted(kw, slots, system.store.depth, model_keys, *spec)
            r = run_variant(base, args.work / "run", task, run_kw)
            print(f"{task:18s} {name:24s} test {r['test']:.3f} added {r['added']:7,d} score {r['score']:.3f} "
                  f"reuses {r['reuses']} owns {r['owned']} {r['wall']:.0f}s", flush=True)
            results[(task, name)] = r
            rows.append([task, name, f"{r['test']:.3f}", f"{r['added']:,}", f"{r['score']:.3f}",
                         ", ".join(r["reuses"]), ", ".join(r["owned"]) or "(head, norm)"])
    body = ("## What a new kind of input shift costs\n\n" + environment()
            + f"- mode: {'QUICK (mnist_inverted, small budgets)' if args.quick else 'full'}\n"
            + f"- base system: {', '.join(f'{n} (test {base_acc[n]:.3f})' for n in BASE_TASKS)}; settings of the "
              f"scale run {kw}; wall time {time.perf_counter() - t0:.0f} s\n"
            + "- score: the search's own, test-free (validation accuracy x s^(accounted params / root params), "
              "s = 0.7); the search keeps the candidate with the highest score\n\n"
            + "\n".join(verdicts(results)) + "\n\n"
            + table(["task", "variant", "test acc", "params added", "score", "reuses components of", "owns besides head and norm"], rows))
    print(write_section("benchmarks.md", "shift", body, title="mupath benchmarks", quick=args.quick))


if __name__ == "__main__":
    main()
