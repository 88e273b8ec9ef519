"""Serving benchmark (issue 22): `mupath serve` on loopback, every figure measured in this run. Results
go to docs/benchmarks.md (section "serve").

    .venv/bin/python benchmarks/serve.py [--quick] [--requests N] [--seconds S] [--clients C]
    .venv/bin/python benchmarks/serve.py --only overhead     # phase 2 alone (about a minute)

1. Eight tasks whose paths share their first half (a 6-block ViT, 32 px: patch/class/position
   embeddings and blocks 0-2 shared, blocks 3-5, norm and head owned), mixed-task traffic (half the
   requests ask one task, half ask all eight): throughput and p50/p99 latency of the server (cross-task
   prefix trie) against one model per task with per-task batching, in the same run, and the bound
   prefix sharing allows for this mix, computed from in-process timings of the same models.
2. HTTP overhead: one-image latency through the server, by the v1 predict route and by the Open
   Inference Protocol's `/v2/models/{task}/infer` (binary tensor data), against in-process
   `System.predict`. `--only overhead` runs this phase alone and rewrites only its subsection of the
   section (which then names its own date and command; the rest stays from the last full run).
3. Under load while another process evolves two new tasks into the store: failed requests, answers
   that differ from the offline prediction of the version they name, time from commit to first answer.
The load generator stops by itself: at most --requests requests and --seconds seconds per phase."""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import io
import json
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from benchmarks.report import DOCS, environment, section_doc, table, write_section  # noqa: E402

ROOT = dict(root="vit_tiny_patch16_224", image_size=32, patch_size=4, depth=6, embed_dim=192, num_heads=3, seed=0)
TASKS = [f"t{i}" for i in range(8)]
SHARED = 3                      #: blocks 0..SHARED-1 (and the embeddings) shared by all eight tasks
HPARAMS = {"_mu_": 0.2, "num_layers": 6, "adapter_dim": 16, "adapter_layers": [], "opt_name": "adamw",
           "opt_lr": 0.0005, "opt_lr_schedule": "cosine", "opt_lr_warmup_ratio": 0.05, "opt_momentum": 0.9,
           "opt_nesterov": False, "ds_image_size": 32, "ds_crop": False, "ds_area_range_min": 1.0,
           "ds_aspect_ratio_range_min": 1.0, "ds_flip_left_right": False, "ds_brightness_delta": 0.0,
           "ds_contrast_delta": 0.0, "ds_saturation_delta": 0.0, "ds_hue_delta": 0.0, "num_classes": 10}
WRITER = """
import sys
from mupath import System, Task
from mupath.data import load_task
d = load_task('digits', max_train=300)
p = Task.from_arrays('parity', d.train.images, d.train.labels % 2, val=(d.validation.images, d.validation.labels % 2),
                     test=(d.test.images, d.test.labels % 2), class_names=['even', 'odd'])
s = System.open(sys.argv[1])
s.add_task(d)
s.add_task(p)
s.evolve(['digits', 'parity'], workers=1, generations=1, candidates=1, steps_per_validation=10, validations=1,
         batch_size=32, val_limit=100, check_scope='shared')
"""


# ---- the store: 8 forged paths sharing their first half, committed through Store.commit -------------
def build_store(folder: Path) -> None:
    from mupath import System, Task
    system = System.create(folder, **ROOT)
    rng = np.random.default_rng(0)
    for name in TASKS:
        images = rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8)
        labels = np.arange(120) % 10
        system.add_task(Task.from_arrays(name, images[:40], labels[:40], val=(images[40:70], labels[40:70]),
                                         test=(images[70:], labels[70:])))
    store = system.store
    run_id, _ = store.start_run("bench-serve-forge")
    for i, name in enumerate(TASKS):
        forge_path(store, name, i, run_id)
    store.finish_run(run_id)
    system.close()


def forge_path(store, task: str, index: int, run_id: str) -> None:
    """Commit a path that shares the root's embeddings and blocks 0..SHARED-1 and owns perturbed
    copies of the rest plus a random head: what an evolved system sharing its first half looks like."""
    from safetensors.torch import save_file

    from mupath.store.records import ROOT_TASK, CandidateComponent, PathRecord
    from mupath.store.store import CommitRequest
    snap = store.snapshot()
    root = snap.retained[ROOT_TASK].components
    gen = torch.Generator().manual_seed(100 + index)
    owned = [f"block_{b}" for b in range(SHARED, 6)] + ["norm"]
    tensors: dict[str, torch.Tensor] = {}
    comps: dict[str, CandidateComponent] = {}
    slots = {s: cid for s, cid in root.items() if s != "head" and s not in owned}
    for slot in owned + ["head"]:
        cid = f"bench-{task}-{slot}"
        if slot == "head":
            parts = {"weight": torch.randn(10, 192, generator=gen) * 0.1, "bias": torch.zeros(10)}
            kind, config = "head", {"dim": 192, "num_classes": 10}
        else:
            rec = snap.components[root[slot]]
            parts = {k: v + 0.02 * torch.randn(v.shape, generator=gen)
                     for k, v in store.blobs.get_tensors(rec.blob).items()}
            kind, config = rec.kind, rec.config
        tensors.update({f"{cid}/{k}": v.contiguous() for k, v in parts.items()})
        comps[cid] = CandidateComponent(cid, kind, slot, config, sum(v.numel() for v in parts.values()))
        slots[slot] = cid
    scratch = store.scratch_dir(run_id) / f"{task}.safetensors"
    scratch.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(scratch))
    comps = {cid: dataclasses.replace(c, scratch=str(scratch)) for cid, c in comps.items()}
    best = PathRecord(f"bench-{task}", task, "root", slots, dict(HPARAMS), 0.1, {})
    store.commit(CommitRequest(task, best, comps, {}, run_id, 0, True, {"forged": "benchmarks/serve.py"}))


# ---- servers and the load generator ---------------------------------------------------------------
def start_server(folder: Path, port: int, config: dict) -> subprocess.Popen:
    """A server in a process of its own (as `mupath serve` runs), so the load generator's threads do
    not share its interpreter lock."""
    proc = subprocess.Popen([sys.executable, __file__, "--child", str(folder), str(port), json.dumps(config)],
                            cwd=REPO)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("server did not start")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()


def child(folder: str, port: str, config: str) -> None:
    import uvicorn

    from mupath.serve import ServeConfig, create_app
    uvicorn.run(create_app(folder, ServeConfig(**json.loads(config))), host="127.0.0.1", port=int(port),
                log_level="warning")


@dataclasses.dataclass(frozen=True)
class Ask:
    tasks: tuple[str, ...] | None       #: None: POST /v1/predict without tasks (all served)
    image: int


@dataclasses.dataclass(frozen=True)
class Outcome:
    ask: Ask
    status: int                          #: 0: no answer (connection failed)
    latency: float
    finished: float                      #: time.time() when the answer arrived
    answers: dict[str, tuple[str, list[int], np.ndarray]]      #: task -> (version, ids, probabilities)


def plan_mixed(n: int, seed: int, images: int) -> list[Ask]:
    rng = random.Random(seed)
    return [Ask(tuple(TASKS) if rng.random() < 0.5 else (rng.choice(TASKS),), rng.randrange(images)) for _ in range(n)]


def npy_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, image[None])
    return buf.getvalue()


def send(client: httpx.Client, base: str, ask: Ask, payloads: list[bytes]) -> Outcome:
    files = [("files", ("image.npy", payloads[ask.image], "application/octet-stream"))]
    if ask.tasks is not None and len(ask.tasks) == 1:
        url = f"{base}/v1/tasks/{ask.tasks[0]}/predict"
    else:
        url = f"{base}/v1/predict" + (f"?tasks={','.join(ask.tasks)}" if ask.tasks else "")
    t0 = time.perf_counter()
    try:
        r = client.post(url, files=files)
    except httpx.HTTPError:
        return Outcome(ask, 0, time.perf_counter() - t0, time.time(), {})
    latency = time.perf_counter() - t0
    if r.status_code != 200:
        return Outcome(ask, r.status_code, latency, time.time(), {})
    body = r.json()
    objs = body["results"].values() if "results" in body else [body]
    answers = {o["task"]: (o["version"], [p["class_id"] for p in o["predictions"]],
                           np.array([list(p["probabilities"].values()) for p in o["predictions"]], np.float32))
               for o in objs}
    return Outcome(ask, 200, latency, time.time(), answers)


def run_load(base: str, plan: list[Ask], payloads: list[bytes], clients: int, seconds: float,
             keep_going=None) -> tuple[list[Outcome], float]:
    """Send `plan` from `clients` threads (each its own keep-alive connection) until it is used up or
    `seconds` pass; `keep_going()` (optional) ends it early when it returns False. Returns the
    outcomes and the wall time."""
    queue = list(reversed(plan))
    deadline = time.monotonic() + seconds
    outcomes: list[Outcome] = []

    def worker() -> None:
        with httpx.Client(timeout=60) as client:
            while time.monotonic() < deadline and (keep_going is None or keep_going()):
                try:
                    ask = queue.pop()
                except IndexError:
                    return
                outcomes.append(send(client, base, ask, payloads))

    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(worker) for _ in range(clients)]:
            f.result()
    return outcomes, time.perf_counter() - t0


# ---- references --------------------------------------------------------------------------------------
class Offline:
    """Offline answers (System.logits of one image, as each request sends it) of each task's
    current version, computed once per (task, image)."""

    def __init__(self, folder: Path, images: np.ndarray) -> None:
        from mupath import System
        self.system = System.open(folder, read_only=True)
        self.images = images
        self._cache: dict[tuple[str, int], tuple[str, list[int], np.ndarray]] = {}

    def answer(self, task: str, image: int) -> tuple[str, list[int], np.ndarray]:
        key = (task, image)
        if key not in self._cache:
            x = self.images[image][None]
            logits = self.system.logits(task, x)
            self._cache[key] = (self.system.store.retained_path(task).id, logits.argmax(1).tolist(),
                                torch.softmax(logits, dim=1).numpy())
        return self._cache[key]


def compare(outcomes: list[Outcome], offline: Offline) -> tuple[int, int, int]:
    """(answers checked, answers whose bits differ, answers whose classes differ) against the offline
    answer of the version they name; an answer naming a version the store no longer retains counts
    as differing (it cannot be checked)."""
    checked = bits = classes = 0
    for o in outcomes:
        for task, (version, ids, probs) in o.answers.items():
            ref_version, ref_ids, ref_probs = offline.answer(task, o.ask.image)
            checked += 1
            if version != ref_version or ids != ref_ids:
                classes += 1
                bits += 1
            elif not np.array_equal(probs, ref_probs):
                bits += 1
    return checked, bits, classes


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


def median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---- the phases --------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Bound:
    single: float            #: seconds: one task's model on one image
    per_task_all: float      #: eight models one after the other on one image
    trie_all: float          #: the prefix trie (shared_forward) of the eight on one image

    @property
    def all_tasks(self) -> float:
        return self.per_task_all / self.trie_all

    @property
    def mixed(self) -> float:
        """Half the requests one task, half all eight (the traffic of phase 1)."""
        return (self.single + self.per_task_all) / (self.single + self.trie_all)


def measure_bound(folder: Path, image: np.ndarray, repeats: int) -> Bound:
    from mupath import System
    from mupath.model.multipath import shared_forward
    from mupath.train.evaluate import fixed_threads
    from mupath.train.pipeline import as_nchw, to_model_input
    system = System.open(folder, read_only=True)
    models = {t: system.model(t) for t in TASKS}
    ids = {t: system.store.retained_path(t).components for t in TASKS}
    x = to_model_input(as_nchw(image[None]), 32)
    with fixed_threads(1), torch.inference_mode():
        for _ in range(3):
            shared_forward(models, ids, x), [m(x) for m in models.values()]
        single = statistics.median(median_time(lambda m=m: m(x), repeats) for m in models.values())
        per_task = median_time(lambda: [m(x) for m in models.values()], repeats)
        trie = median_time(lambda: shared_forward(models, ids, x), repeats)
    system.close()
    return Bound(single, per_task, trie)


CONFIGS = {   # name -> ServeConfig fields
    "prefix trie, exact (default)": {},
    "prefix trie, rows batched": {"batching": "rows"},
    "one model per task, per-task batching": {"batching": "rows", "prefix_sharing": False},
    "one model per task, per request": {"batching": "requests", "prefix_sharing": False},
}


@dataclasses.dataclass(frozen=True)
class Throughput:
    name: str
    requests: int
    failed: int
    wall: float
    task_images: int
    p50: float
    p99: float
    checked: int
    bits_differ: int
    classes_differ: int
    round_rates: tuple[float, ...]      #: task-images/s of each round

    @property
    def rate(self) -> float:
        return self.task_images / self.wall


def round_ratio(a: Throughput, b: Throughput) -> float:
    """Median over rounds of a's rate over b's: a slower minute of the shared machine hits both servers
    of a round alike, so this is steadier than the ratio of the totals."""
    return statistics.median(x / y for x, y in zip(a.round_rates, b.round_rates))


def measure_throughput(folder: Path, payloads: list[bytes], offline: Offline, args) -> list[Throughput]:
    """Every server runs the same request sequence, in rounds that alternate between the servers (all
    started at once, on ports of their own), so a slower minute of the shared machine hits them alike."""
    plan = plan_mixed(args.requests, 1, len(payloads))
    ports = {name: free_port() for name in CONFIGS}
    procs = [start_server(folder, ports[name], {"max_wait_ms": args.max_wait_ms, **c}) for name, c in CONFIGS.items()]
    results: dict[str, list[tuple[list[Outcome], float]]] = {name: [] for name in CONFIGS}
    try:
        for name in CONFIGS:
            run_load(f"http://127.0.0.1:{ports[name]}", plan[:20], payloads, args.clients, 30)       # warm-up
        step = max(1, args.requests // args.rounds)
        for start in range(0, len(plan), step):
            for name in CONFIGS:
                got, wall = run_load(f"http://127.0.0.1:{ports[name]}", plan[start:start + step], payloads,
                                     args.clients, args.seconds / args.rounds)
                results[name].append((got, wall))
    finally:
        for proc in procs:
            stop_server(proc)
    rows = []
    for name, rounds in results.items():
        outcomes = [o for got, _ in rounds for o in got]
        ok = [o for o in outcomes if o.status == 200]
        checked, bits, classes = compare(ok, offline)
        rates = tuple(sum(len(o.answers) for o in got if o.status == 200) / wall for got, wall in rounds)
        rows.append(Throughput(name, len(outcomes), len(outcomes) - len(ok), sum(w for _, w in rounds),
                               sum(len(o.answers) for o in ok), pct([o.latency for o in ok], 0.5),
                               pct([o.latency for o in ok], 0.99), checked, bits, classes, rates))
        print(rows[-1], flush=True)
    return rows


V2_HEADER = "Inference-Header-Content-Length"


def v2_payload(image: np.ndarray) -> tuple[bytes, int]:
    """An Open Inference Protocol request for one image, binary tensor data both ways (as
    `tritonclient.http` sends it): (body, length of its JSON header)."""
    head = json.dumps({"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, *image.shape],
                                   "parameters": {"binary_data_size": image.size}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return head + image.tobytes(), len(head)


def send_v2(client: httpx.Client, base: str, task: str, payload: tuple[bytes, int]) -> float:
    """Seconds for one binary `/v2/models/{task}/infer`, the answer's class id decoded (as `send`
    decodes the v1 JSON answer)."""
    body, length = payload
    t0 = time.perf_counter()
    r = client.post(f"{base}/v2/models/{task}/infer", content=body, headers={V2_HEADER: str(length)})
    r.raise_for_status()
    head = int(r.headers[V2_HEADER])
    sizes = [o["parameters"]["binary_data_size"] for o in json.loads(r.content[:head])["outputs"]]
    np.frombuffer(r.content[head + sum(sizes[:2]):], "<i8")          # class_id, the last output
    return time.perf_counter() - t0


@dataclasses.dataclass(frozen=True)
class Overhead:
    """Median seconds for one image of one task, one request at a time."""

    v1: float            #: POST /v1/tasks/{task}/predict, multipart .npy, JSON answer
    v2: float            #: POST /v2/models/{task}/infer, binary tensor data in and out
    local: float         #: in-process System.predict


def measure_overhead(folder: Path, images: np.ndarray, payloads: list[bytes], repeats: int) -> Overhead:
    """The three measured alternately, image after image, on one server (5 warm-up rounds dropped)."""
    from mupath import System
    system = System.open(folder, read_only=True)
    port = free_port()
    proc = start_server(folder, port, {})
    v2_payloads = [v2_payload(img) for img in images]
    v1, v2, local = [], [], []
    try:
        with httpx.Client(timeout=30) as client:
            base = f"http://127.0.0.1:{port}"
            for i in range(repeats + 5):
                t0 = time.perf_counter()
                system.predict("t0", images[i % len(images)][None])
                local.append(time.perf_counter() - t0)
                v1.append(send(client, base, Ask(("t0",), i % len(payloads)), payloads).latency)
                v2.append(send_v2(client, base, "t0", v2_payloads[i % len(v2_payloads)]))
    finally:
        stop_server(proc)
        system.close()
    return Overhead(statistics.median(v1[5:]), statistics.median(v2[5:]), statistics.median(local[5:]))


@dataclasses.dataclass(frozen=True)
class UnderLoad:
    requests: int
    failed: int
    wall: float
    checked: int
    bits_differ: int
    classes_differ: int
    commit_to_answer: dict[str, float]      #: new task -> seconds from its commit to its first answer
    p50: float
    p99: float
    reloads: int                            #: versions the server swapped in
    reload_mean: float                      #: seconds to build one (snapshot, models, probe)


def measure_under_load(base_folder: Path, work: Path, images: np.ndarray, payloads: list[bytes], args,
                       port: int) -> UnderLoad:
    """Serve while a writer process evolves two new tasks; every answer is checked afterwards against
    the offline prediction of the version it names."""
    folder = work / "under-load"
    shutil.copytree(base_folder, folder)
    proc = start_server(folder, port, {"max_wait_ms": args.max_wait_ms})
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(folder)], cwd=REPO, stdout=subprocess.DEVNULL)
    rng = random.Random(2)
    plan = [Ask(None if rng.random() < 0.5 else (rng.choice(TASKS),), rng.randrange(len(payloads)))
            for _ in range(args.load_requests)]
    finished: list[float] = []

    def keep_going() -> bool:
        if writer.poll() is None:
            return True
        if not finished:
            finished.append(time.monotonic())
        return time.monotonic() - finished[0] < 3          # a few seconds more after the last commit

    try:
        outcomes, wall = run_load(f"http://127.0.0.1:{port}", plan, payloads, args.clients, args.load_seconds,
                                  keep_going)
        metrics = scrape(f"http://127.0.0.1:{port}/metrics")
    finally:
        stop_server(proc)
        if writer.poll() is None:
            writer.kill()
    if writer.wait() != 0:
        print(f"the writer did not finish within --load-seconds {args.load_seconds:g} (rc {writer.returncode})")
    ok = [o for o in outcomes if o.status == 200]
    checked, bits, classes = compare(ok, Offline(folder, images))
    reloads = int(metrics.get("mupath_reload_seconds_count", 0))
    return UnderLoad(len(outcomes), len(outcomes) - len(ok), wall, checked, bits, classes,
                     commit_delays(folder, ok), pct([o.latency for o in ok], 0.5), pct([o.latency for o in ok], 0.99),
                     reloads, metrics.get("mupath_reload_seconds_sum", float("nan")) / max(1, reloads))


def scrape(url: str) -> dict[str, float]:
    """Unlabelled samples of a Prometheus text page."""
    text = httpx.get(url, timeout=10).text
    return {line.split()[0]: float(line.split()[-1]) for line in text.splitlines()
            if line and not line.startswith("#") and "{" not in line}


def commit_delays(folder: Path, outcomes: list[Outcome]) -> dict[str, float]:
    from mupath import System
    system = System.open(folder, read_only=True)
    delays = {}
    for task in ("digits", "parity"):
        committed = min(c.time for c in system.history(task))
        first = [o.finished for o in outcomes if task in o.answers]
        delays[task] = (min(first) - committed) if first else float("nan")
    system.close()
    return delays


# ---- the report --------------------------------------------------------------------------------------
OVERHEAD_HEADING = "### HTTP overhead"


def overhead_subsection(overhead: Overhead, alone: bool) -> str:
    """Phase 2's subsection; measured `alone` (`--only overhead`), it names its own date and command."""
    rows = [["through the server, `/v1/tasks/{task}/predict` (multipart .npy, JSON answer)",
             f"{overhead.v1 * 1e3:.2f}"],
            ["through the server, `/v2/models/{task}/infer` (Open Inference Protocol, binary tensor data)",
             f"{overhead.v2 * 1e3:.2f}"],
            ["in-process `System.predict`", f"{overhead.local * 1e3:.2f}"],
            ["ratio v1 / in-process (target <= 2x)", f"**{overhead.v1 / overhead.local:.2f}x**"],
            ["ratio v2 / in-process", f"**{overhead.v2 / overhead.local:.2f}x**"]]
    note = ("Measured alone (`--only overhead`), after the rest of this section:\n\n" + environment() + "\n"
            if alone else "")
    return f"{OVERHEAD_HEADING}\n\n{note}" + table(["one image, one task", "median ms"], rows) + "\n"


def replace_overhead(section_text: str, subsection: str) -> str:
    """The section with its HTTP overhead subsection (up to the next ### heading) replaced."""
    pattern = re.compile(re.escape(OVERHEAD_HEADING) + r"\n.*?(?=^### |\Z)", re.S | re.M)
    if not pattern.search(section_text):
        raise SystemExit(f"the serve section has no '{OVERHEAD_HEADING}' subsection: run the full benchmark")
    return pattern.sub(lambda _: subsection + "\n", section_text, count=1)


def current_section(quick: bool) -> str:
    """The serve section the last run wrote (what `--only overhead` keeps but for its subsection)."""
    path = DOCS / section_doc("benchmarks.md", quick)
    found = re.search(r"<!-- serve:begin -->\n(.*?)<!-- serve:end -->", path.read_text() if path.exists() else "",
                      re.S)
    if not found:
        raise SystemExit(f"{path} has no serve section yet: run the full benchmark first")
    return found.group(1)


def section(bound: Bound, rows: list[Throughput], overhead: Overhead, load: UnderLoad, args,
            t_start: float) -> str:
    exact, rowwise, per_task, per_request = rows
    analytic = 8 * 6 / (SHARED + 8 * (6 - SHARED))
    tput = table(["server", "requests", "failed", "task-images/s", "p50 ms", "p99 ms", "answers checked",
                  "bits differ", "classes differ"],
                 [[r.name, r.requests, r.failed, f"{r.rate:.0f}", f"{r.p50 * 1e3:.1f}", f"{r.p99 * 1e3:.1f}",
                   r.checked, r.bits_differ, r.classes_differ] for r in rows])
    ratios = table(["comparison", "speed-up (median of rounds)", "of the bound", "speed-up (totals)"],
                   [[f"{a.name} / {b.name}", f"**{round_ratio(a, b):.2f}x**",
                     f"**{round_ratio(a, b) / bound.mixed:.0%}**", f"{a.rate / b.rate:.2f}x"]
                    for a, b in ((rowwise, per_task), (exact, per_request), (exact, per_task))])
    delays = ", ".join(f"{t} {d:.1f} s" for t, d in load.commit_to_answer.items())
    return ("## Serving: `mupath serve` on loopback\n\n" + environment()
            + f"- wall time: {time.perf_counter() - t_start:.0f} s; {args.clients} client threads, "
            f"--max-wait-ms {args.max_wait_ms:g}, one torch thread per server (CHECK_THREADS)\n\n"
            "### Cross-task batching against one model per task\n\n"
            "8 tasks on a 6-block ViT (dim 192, 32 px, patch 4) sharing embeddings and blocks 0-2, owning "
            "blocks 3-5, norm and head; half the requests ask one task, half all eight (`/v1/predict`), one "
            f"image each, {args.requests} requests per server, the same sequence for each, in {args.rounds} "
            "rounds alternating between the servers. \"bits differ\": answers not bit-identical to "
            "`System.predict` / softmax of `System.logits` on the request's image.\n\n" + tput
            + "\n\n" + ratios
            + f"\n\nThe bound prefix sharing allows for this mix, from in-process timings of the same models on "
            f"one image (one model {bound.single * 1e3:.2f} ms, eight models {bound.per_task_all * 1e3:.2f} ms, the "
            f"trie of the eight {bound.trie_all * 1e3:.2f} ms): **{bound.mixed:.2f}x** (all-eight requests alone "
            f"{bound.all_tasks:.2f}x; counting block runs only, 8n / (s + 8(n - s)) = {analytic:.2f}x). "
            "Rows batched = images of different requests in the same tensors (the issue's cross-task batching); "
            "on this machine that changes low bits (MKL picks other kernels for other row counts), so the "
            "default (`--batching auto`) keeps each request in tensors of its own and is bit-identical; the "
            "last line is what that exactness costs against a per-task batching server.\n\n"
            + overhead_subsection(overhead, alone=False)
            + "\n### Under load while another process evolves two new tasks\n\n"
            + table(["requests", "failed", "answers checked", "differ from the offline answer of their version",
                     "classes differ", "p50 ms", "p99 ms", "commit to first served answer"],
                    [[load.requests, f"**{load.failed}**", load.checked, f"**{load.bits_differ}**",
                      load.classes_differ, f"{load.p50 * 1e3:.1f}", f"{load.p99 * 1e3:.1f}", delays]])
            + f"\n\n{load.wall:.0f} s of load (default server settings); {load.reloads} new versions swapped in, "
            f"{load.reload_mean:.2f} s on average to build one; the writer (`System.evolve` of digits "
            "and parity in a second process, 1 generation of 1 candidate each) shares the two cores with the "
            "server and the load generator. The time to the first answer includes the poll interval "
            "(--poll-s 1) and building the new version; requests keep being answered by the old version "
            "meanwhile.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer requests (smoke run; docs/benchmarks-quick.md)")
    parser.add_argument("--requests", type=int, default=240, help="requests per server of phase 1")
    parser.add_argument("--seconds", type=float, default=90, help="time limit per server of phase 1")
    parser.add_argument("--clients", type=int, default=4, help="concurrent client threads")
    parser.add_argument("--rounds", type=int, default=8, help="phase 1 alternates between the servers this often")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--load-requests", type=int, default=20000, help="request limit of phase 3")
    parser.add_argument("--load-seconds", type=float, default=300, help="time limit of phase 3")
    parser.add_argument("--port", type=int, default=0, help="loopback port (0: a free one)")
    parser.add_argument("--only", choices=["overhead"],
                        help="run phase 2 alone and rewrite only its subsection of the section")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(*args.child)
    if args.quick:
        args.requests, args.seconds, args.load_seconds, args.rounds = 40, 20, 240, 2
    if args.only == "overhead":
        return overhead_only(args)
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mupath-bench-serve-") as tmp:
        work = Path(tmp)
        build_store(work / "store")
        images = bench_images()
        payloads = [npy_bytes(img) for img in images]
        bound = measure_bound(work / "store", images[0], 20 if args.quick else 50)
        print(bound, bound.mixed, flush=True)
        rows = measure_throughput(work / "store", payloads, Offline(work / "store", images), args)
        overhead = measure_overhead(work / "store", images, payloads, 20 if args.quick else 60)
        print("overhead", overhead, flush=True)
        load = measure_under_load(work / "store", work, images, payloads, args, args.port or free_port())
        print(load, flush=True)
    body = section(bound, rows, overhead, load, args, t_start)
    print(write_section("benchmarks.md", "serve", body, quick=args.quick))


def bench_images() -> np.ndarray:
    return np.random.default_rng(5).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)


def overhead_only(args) -> None:
    """Phase 2 alone, on the store every run builds; its subsection replaces the one in the section."""
    kept = current_section(args.quick)                 # before a minute of work: is there a section?
    with tempfile.TemporaryDirectory(prefix="mupath-bench-serve-") as tmp:
        build_store(Path(tmp) / "store")
        images = bench_images()
        overhead = measure_overhead(Path(tmp) / "store", images, [npy_bytes(img) for img in images],
                                    20 if args.quick else 60)
    print(overhead, flush=True)
    body = replace_overhead(kept, overhead_subsection(overhead, alone=True))
    print(write_section("benchmarks.md", "serve", body, quick=args.quick))


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
