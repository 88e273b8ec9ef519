"""Ray executor overhead (issue "Scale out"): the same generations of 4 candidates (demo root, task
digits) with the process pool and with Ray, 2 workers x 1 thread each, on this machine; plus the
numbers a multi-node plan rests on: per-candidate time, per-generation object-store traffic (the
sum of the distinct blob / scratch sizes the generation's jobs reference, which is what
`ship_blobs` puts into the object store) and commit latency (from the manifest's commit rows).
Results go to docs/benchmarks.md (section "ray").

    .venv/bin/python benchmarks/ray_overhead.py [--steps 150] [--generations 2] [--repeats 2]
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import environment, table, write_section  # noqa: E402
from mupath.runtime.jobs import CandidateJob  # noqa: E402

WORKERS, THREADS, CANDIDATES = 2, 1, 4


class Timed:
    """Wraps an executor: times its construction and every generation, records the results and the
    bytes the generation's jobs reference."""

    def __init__(self, make: Any) -> None:
        t0 = time.perf_counter()
        self.inner = make()
        self.init_s = time.perf_counter() - t0
        self.gens: list[dict[str, Any]] = []

    def run(self, jobs, on_done=None, on_step=None):
        t0 = time.perf_counter()
        results = self.inner.run(jobs, on_done, on_step)
        wall = time.perf_counter() - t0
        self.gens.append({"wall": wall, "end": time.time(), "results": results,
                          "bytes": referenced_bytes(jobs)})
        return results

    def close(self) -> None:
        t0 = time.perf_counter()
        self.inner.close()
        self.close_s = time.perf_counter() - t0


def referenced_bytes(jobs: list[CandidateJob]) -> dict[str, int]:
    """Distinct bytes a generation's jobs reference, by kind (what ship_blobs puts once)."""
    from mupath.store.blobs import BlobStore
    blobs = BlobStore(Path(jobs[0].store) / "blobs")
    seen: dict[tuple[str, str], tuple[str, int]] = {}
    for job in jobs:
        seen[("blob", job.task_blob)] = ("task data", blobs.path_of(job.task_blob).stat().st_size)
        for cid, ref in job.refs.items():
            if ref.blob:
                kind = "root components" if cid.startswith("root-") else "committed components"
                seen[("blob", ref.blob)] = (kind, blobs.path_of(ref.blob).stat().st_size)
            else:
                seen[("scratch", str(ref.scratch))] = ("scratch files", Path(str(ref.scratch)).stat().st_size)
    out: dict[str, int] = {}
    for kind, size in seen.values():
        out[kind] = out.get(kind, 0) + size
    out["total"] = sum(size for _, size in seen.values())
    out["objects"] = len(seen)
    return out


@contextlib.contextmanager
def lock_timer(holds: list[float]):
    """Times how long each manifest transaction holds SQLite's write lock (BEGIN IMMEDIATE..COMMIT)."""
    from mupath.store import manifest as manifest_module
    original = manifest_module.Manifest.transaction

    @contextlib.contextmanager
    def timed(self):
        with original(self) as con:
            t0 = time.perf_counter()
            yield con
        holds.append(time.perf_counter() - t0)

    manifest_module.Manifest.transaction = timed
    try:
        yield
    finally:
        manifest_module.Manifest.transaction = original


def run(base: Path, label: str, make: Any, steps: int, generations: int) -> dict[str, Any]:
    import mupath.search.evolve as evolve_module
    from mupath import System
    folder = Path(tempfile.mkdtemp())
    try:
        shutil.copytree(base, folder / "s")
        system = System.open(folder / "s")
        holder: dict[str, Timed] = {}

        def factory(*args: Any, **kwargs: Any) -> Timed:
            holder["x"] = Timed(make)
            return holder["x"]

        original = evolve_module.make_executor
        evolve_module.make_executor = factory
        holds: list[float] = []
        t0 = time.perf_counter()
        try:
            with lock_timer(holds):
                system.evolve(["digits"], generations=generations, candidates=CANDIDATES, workers=WORKERS,
                              threads_per_worker=THREADS, steps_per_validation=steps, validations=1,
                              seed=0, check_immutability=False)
        finally:
            evolve_module.make_executor = original
        total = time.perf_counter() - t0
        ex = holder["x"]
        [commit] = system.manifest.commit_records()
        out = {"label": label, "total": total, "init": ex.init_s, "close": getattr(ex, "close_s", 0.0),
               "gens": [g["wall"] for g in ex.gens],
               "cand": [r.wall_time for g in ex.gens for r in g["results"]],
               "failures": [r.failure for g in ex.gens for r in g["results"] if r.failure],
               "bytes": [g["bytes"] for g in ex.gens],
               "commit_latency": commit.time - ex.gens[-1]["end"],
               "lock_hold": max(holds or [0.0]),   # the commit transaction is the longest
               "quality": system.manifest.retained()["digits"].quality,
               "traffic": list(getattr(ex.inner, "traffic", []))}
        print(label, {k: v for k, v in out.items() if k not in ("bytes", "traffic")}, flush=True)
        return out
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def mb(n: float) -> str:
    return f"{n / 2 ** 20:.2f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="training steps per candidate")
    parser.add_argument("--generations", type=int, default=2, help="generations (the first is cold)")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved repeats; the fastest is kept")
    args = parser.parse_args()
    from mupath import System
    from mupath.cli.demo import VIT_DEMO_ROOT
    from mupath.data import load_task
    from mupath.runtime.executors import ProcessPoolExecutor
    from mupath.runtime.ray_executor import RayExecutor
    t_start = time.perf_counter()
    torch.set_num_threads(1)
    base_dir = Path(tempfile.mkdtemp())
    base = base_dir / "base"
    system = System.create(base, **VIT_DEMO_ROOT)
    system.add_task(load_task("digits"))
    root_params = system.root_params
    system.close()
    configs = [("process pool", lambda: ProcessPoolExecutor(WORKERS, THREADS)),
               ("Ray, local cluster", lambda: RayExecutor(WORKERS, THREADS)),
               ("Ray, ship_blobs", lambda: RayExecutor(WORKERS, THREADS, ship_blobs=True))]
    best: dict[str, dict[str, Any]] = {}
    load_before = os.getloadavg()[0]
    try:        # interleaved repeats, the fastest of each kept: the machine may be shared
        for _ in range(args.repeats):
            for label, make in configs:
                out = run(base, label, make, args.steps, args.generations)
                if label not in best or out["total"] < best[label]["total"]:
                    best[label] = out
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)
    pool, local, ship = (best[label] for label, _ in configs)

    rows = []
    for r in (pool, local, ship):
        rows.append([r["label"], f"{r['init']:.1f}", f"{r['gens'][0]:.1f}",
                     " / ".join(f"{g:.1f}" for g in r["gens"][1:]) or "-", f"{r['close']:.1f}",
                     f"{r['total']:.1f}", f"{statistics.mean(r['cand']):.2f}", f"{r['quality']:.3f}",
                     len(r["failures"])])
    warm = lambda r: sum(r["gens"][1:]) or r["gens"][0]  # noqa: E731
    cold = lambda r: r["init"] + r["gens"][0]  # noqa: E731
    ratios = table(["measure", "Ray local / process pool", "Ray ship_blobs / process pool"], [
        ["executor start + first (cold) generation", f"**{cold(local) / cold(pool):.2f}x**",
         f"{cold(ship) / cold(pool):.2f}x"],
        ["later (warm) generations", f"**{warm(local) / warm(pool):.2f}x**", f"{warm(ship) / warm(pool):.2f}x"],
        ["whole evolve call", f"{local['total'] / pool['total']:.2f}x", f"{ship['total'] / pool['total']:.2f}x"]])
    kinds = ["task data", "root components", "committed components", "scratch files"]
    traffic_rows = []
    for g, b in enumerate(ship["bytes"]):
        put = ship["traffic"][g]["put_bytes"] if g < len(ship["traffic"]) else 0
        traffic_rows.append([str(g)] + [mb(b.get(k, 0)) for k in kinds] + [f"**{mb(b['total'])}**", b["objects"], mb(put)])
    traffic = table(["generation"] + kinds + ["total distinct", "objects", "put (new this generation)"], traffic_rows)
    cand = statistics.mean(pool["cand"] + local["cand"])
    per_gen = max(b["total"] for b in ship["bytes"])
    commit = statistics.mean([pool["commit_latency"], local["commit_latency"], ship["commit_latency"]])
    hold = max(pool["lock_hold"], local["lock_hold"], ship["lock_hold"])
    ray_gap = max(0.0, warm(local) / max(1, len(local["gens"]) - 1) - warm(pool) / max(1, len(pool["gens"]) - 1))
    # 32 workers: 4 nodes x 8 cores, 1 thread per worker; one generation = 32 candidates in one wave
    gen32 = cand + max(ray_gap, 0.05)
    here = CANDIDATES / (warm(local) / max(1, len(local["gens"]) - 1))
    plan = f"""### Plan: 32 workers on a multi-node cluster

The numbers it rests on (this run, demo root of {root_params:,} parameters, {args.steps} steps/candidate):

- per-candidate time: **{cand:.1f} s** (1 thread, training and validation inside the worker, mean over
  every candidate of the process-pool and local-Ray runs, cold generation included);
- per-generation object-store traffic with `ship_blobs`: at most **{mb(per_gen)}** of distinct blobs and
  scratch files (table above); each node fetches each object once per generation at most;
- commit latency (last generation's end to the commit row's time in the manifest): **{commit:.2f} s**,
  of which the SQLite write lock is held **{hold * 1000:.0f} ms** (one `BEGIN IMMEDIATE` transaction);
- Ray's own cost per warm generation over the process pool: {ray_gap:.2f} s.

Layout: `ray start --head` on the node holding the store, `ray start --address HEAD:6379` on 3 more
8-core nodes (mupath installed on each, same versions); 32 workers x 1 thread. Without a shared file
system use `ship_blobs` (the default with `--ray-address`); with one (NFS), turn it off and every
worker reads the blobs itself.

- **One agent**: `mupath evolve STORE --executor ray --ray-address HEAD:6379 --workers 32
  --threads-per-worker 1 --candidates 32`: one generation is one wave of 32 candidates, about
  {gen32:.1f} s at this budget (one candidate plus the scheduling cost above), i.e. ~{32 / gen32:.1f}
  candidates/s against {here:.2f} candidates/s measured here with 2 workers. Candidates that are not a
  multiple of 32 leave workers idle: keep `candidates` a multiple of `workers`.
- **Object store**: {mb(per_gen)} per generation x 4 nodes = {mb(4 * per_gen)} of transfers per
  generation, negligible against the candidate time on any LAN (1 Gbit/s moves it in
  {4 * per_gen * 8 / 1e9:.2f} s). With a pretrained ViT-B root (86M parameters, 344 MB fp32) the root's
  blobs dominate: ~344 MB x 4 nodes once (objects still referenced are not put again by the next
  generation), then only the changed components and scratch files of the population.
- **Several agents (µ3Net)**: 4 processes `mupath evolve STORE --tasks T --executor ray --ray-address
  HEAD:6379 --workers 8` share the cluster (Ray queues what does not fit). Commits serialise on the
  SQLite lock: {hold * 1000:.0f} ms per commit (measured without contention on a small manifest) allows
  ~{1 / max(hold, 1e-6):,.0f} commits/s, far above 4 agents x one commit per task iteration; with 2 agents
  on this machine, 20 concurrent commits all landed (tests/test_agents.py). The driver-side work that does not scale out is per commit: the
  commit itself ({commit:.2f} s here: writing owned blobs, test logits on 1 thread) and the
  no-forgetting check, which re-runs every other task's test set on 1 thread and grows with the number
  of tasks; with many tasks it, not the workers, bounds an agent's iteration rate (run it with
  `--no-check` on all but one agent, or check only tasks whose components the commit touched).
- **Failures**: a lost node costs only the candidates running on it (retried once elsewhere, then
  dropped with the reason in the commit's `failures`); the store is on the head node, so losing the
  head stops the run, which `evolve` resumes from its last commit.
"""
    body = ("## Ray executor overhead\n\n" + environment() + f"- wall time: {time.perf_counter() - t_start:.0f} s\n"
            f"- workload: {args.generations} generation(s) x {CANDIDATES} candidates, demo root, task digits, "
            f"{args.steps} steps per candidate, {WORKERS} workers x {THREADS} thread, same seed for every executor; "
            f"{args.repeats} interleaved repeats, the fastest evolve call of each executor kept (load average "
            f"{load_before:.1f} before, {os.getloadavg()[0]:.1f} after)\n\n"
            + table(["executor", "start s", "generation 1 (cold) s", "later generations s", "close s",
                     "evolve call s", "mean candidate s", "retained quality", "failures"], rows)
            + "\n\nStart = creating the executor (Ray: `ray.init` of a local cluster; process pool: the pool object, "
            "its processes spawn on the first generation). Cold generation = workers importing torch and mupath.\n\n"
            + ratios + "\n\n### Object-store traffic per generation (`ship_blobs`)\n\n" + traffic + "\n\n" + plan)
    print(write_section("benchmarks.md", "ray", body, title="mupath benchmarks"))


if __name__ == "__main__":
    main()
