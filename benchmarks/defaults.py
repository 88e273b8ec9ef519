"""What a newcomer gets from the defaults (issue 25, item 5), on a task outside the built-in set.

    .venv/bin/python benchmarks/defaults.py [--images 3000] [--quick]

The task: 10-class digits rendered from the fonts that ship with matplotlib (DejaVu Sans / Serif / Mono
in their weights and slants), each at a random size, rotation and offset, with pixel noise, at 28 px
grey: nothing mupath has seen and nothing downloaded. Carved by `Task.from_arrays` (70/10/20).

A user's first session, twice: `System.create(path)` with no root named (the default root, the
pretrained Lite0 since issue 25) and, beside it, the root the default used to be (`vit_tiny_patch16_224`
random-init at 32 px); on each `add_task` and `evolve([task])` with every evolve setting at its default.
Section "defaults" of docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks.report import environment, table, write_section  # noqa: E402
from mupath import System, Task  # noqa: E402
from mupath.search.settings import EvolveSettings  # noqa: E402

NAME = "font_digits"
#: the glyphs of each font task: the newcomer's and the outside benchmark's digits, and capital letters, a
#: harder outside task (26 classes, several pairs alike once rotated: the digits sit at 99.5-100% test
#: accuracy for every method, where 600 test images cannot tell methods apart)
GLYPHS = {NAME: "0123456789", "font_letters": "ABCDEFGHIJKLMNOPQRSTUVWXYZ"}
OLD_DEFAULT_ROOT = dict(root="vit_tiny_patch16_224", image_size=32)   #: `System.create`'s default before issue 25


def font_files() -> list[Path]:
    """The DejaVu TrueType fonts matplotlib ships (its own data folder: always there, never downloaded)."""
    import matplotlib
    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    fonts = sorted(p for p in folder.glob("DejaVu*.ttf") if "Display" not in p.name)
    if not fonts:
        raise SystemExit(f"no DejaVu fonts under {folder}; reinstall matplotlib")
    return fonts


def font_glyphs(chars: str, n: int, seed: int = 0, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """`n` grey images (uint8, size x size) of the characters `chars` and their labels (indices into
    `chars`), balanced over the classes."""
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(seed)
    fonts = font_files()
    images = np.zeros((n, size, size), np.uint8)
    labels = np.arange(n) % len(chars)
    rng.shuffle(labels)
    for i, label in enumerate(labels):
        font = ImageFont.truetype(str(fonts[rng.integers(len(fonts))]), int(rng.integers(14, 25)))
        canvas = Image.new("L", (2 * size, 2 * size), 0)
        ImageDraw.Draw(canvas).text((size, size), chars[label], fill=255, font=font, anchor="mm")
        canvas = canvas.rotate(float(rng.uniform(-25, 25)), resample=Image.BILINEAR)
        dx, dy = rng.integers(-4, 5, size=2)
        left, top = size // 2 + dx, size // 2 + dy
        img = np.asarray(canvas.crop((left, top, left + size, top + size)), np.float32)
        img += rng.normal(0, 25, img.shape)
        images[i] = np.clip(img, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def task_suffix(task: str, sep: str = "-") -> str:
    """What a font task's section names and titles append: nothing for the digits (their sections keep their
    names), `sep` and the task's name otherwise."""
    return "" if task == NAME else f"{sep}{task}"


def font_digits(n: int, seed: int = 0, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """`n` grey digit images (uint8, size x size) and their labels, balanced over the 10 classes."""
    return font_glyphs(GLYPHS[NAME], n, seed, size)


def font_task(n: int, name: str = NAME) -> Task:
    """The font task `name` (a key of GLYPHS) of `n` images (carved 70/10/20)."""
    chars = GLYPHS[name]
    x, y = font_glyphs(chars, n)
    return Task.from_arrays(name, x, y, class_names=list(chars))


@dataclasses.dataclass(frozen=True)
class Outcome:
    root: str
    test_accuracy: float
    val_accuracy: float
    accounted_params: float
    root_params: int
    candidates: int
    wall_time: float


def first_session(folder: Path, task: Task, root: dict[str, object] | None, workers: int) -> Outcome:
    """create (with `root`, or none named), add the task, evolve it with the default settings."""
    shutil.rmtree(folder, ignore_errors=True)
    t0 = time.perf_counter()
    system = System.create(folder, **(root or {}))
    system.add_task(task)
    report = system.evolve([task.name], workers=workers, log=False)
    wall = time.perf_counter() - t0
    status = {s.task: s for s in system.status()}[task.name]
    out = Outcome(system.root_spec.name + f" ({system.root_spec.weights}, {system.root_spec.image_size} px)",
                  float(status.test_accuracy or 0.0), float(status.val_accuracy or 0.0),
                  float(status.accounted_params), system.root_params, report.tasks[0].candidates, wall)
    system.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--workers", type=int, default=1, help="evolve's default is 1")
    parser.add_argument("--quick", action="store_true", help="300 images (a smoke run; writes docs/*-quick.md)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-defaults"))
    args = parser.parse_args()
    n = 300 if args.quick else args.images
    task = font_task(n)
    runs = [("default (no root named)", None), ("old default (vit_tiny_patch16_224, random, 32 px)",
                                               OLD_DEFAULT_ROOT)]
    rows: list[list[object]] = []
    for label, root in runs:
        o = first_session(args.out / ("default" if root is None else "old-default"), task, root, args.workers)
        print(label, o, flush=True)
        rows.append([label, o.root, f"{o.test_accuracy:.4f}", f"{o.val_accuracy:.4f}",
                     f"{o.accounted_params / 1e3:,.1f}k", f"{o.root_params:,}", o.candidates, f"{o.wall_time:.0f}"])
    d = EvolveSettings()
    settings = (f"generations {d.generations} × candidates {d.candidates} × validations {d.validations} × "
                f"{d.steps_per_validation} steps, batch {d.batch_size}, s = {d.scale_factor}, seed_order "
                f"{d.seed_order}, head_first {d.head_first}, workers {args.workers}")
    body = (f"## Defaults on a task outside the built-in set\n\n{environment()}"
            f"- task `{NAME}`: {n:,} digit images rendered from matplotlib's {len(font_files())} DejaVu fonts "
            f"(random size 14-24 px, rotation ±25°, offset ±4 px, pixel noise σ = 25; 28 px grey), carved "
            f"{len(task.train)}/{len(task.validation)}/{len(task.test)} train/val/test\n"
            f"- what a newcomer runs: `System.create(path)`, `add_task`, `evolve([task])` with the default "
            f"settings ({settings}); wall time includes building the root\n\n"
            + table(["session", "root", "test acc", "val acc", "params accounted", "root params", "candidates",
                     "wall s"], rows))
    print(write_section("benchmarks.md", "defaults", body, title="mupath benchmarks", quick=args.quick))


if __name__ == "__main__":
    main()
