"""The offline task catalogue: tasks derived from the built-in datasets in the forms the
continual-learning literature uses (split pairs, permuted and rotated inputs, label regroupings with a
meaning, input shifts). Each task is a row of data (`CATALOGUE`): its base dataset, one operation and
that operation's arguments; `stream_tasks("stream69")` is the fixed order of the 69-task stream."""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

from mupath.data.task import Task

FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                   "Bag", "Ankle boot")


def _rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = [{"name": n, "base": n, "op": "identity"}
                                  for n in ("fashion_mnist", "mnist", "digits", "lfw_faces")]
    for base, short in (("mnist", "split_mnist"), ("fashion_mnist", "split_fashion"), ("digits", "split_digits")):
        for a in range(0, 10, 2):
            rows.append({"name": f"{short}_{a}_{a + 1}", "base": base, "op": "select", "classes": [a, a + 1]})
    for seed in range(1, 13):
        rows.append({"name": f"permuted_mnist_{seed}", "base": "mnist", "op": "permute", "seed": seed})
    for angle in range(15, 181, 15):
        rows.append({"name": f"rotated_mnist_{angle}", "base": "mnist", "op": "rotate", "angle": angle})
    rows += [
        {"name": "fashion_groups", "base": "fashion_mnist", "op": "regroup",
         "groups": [[0, 2, 3, 4, 6], [1], [5, 7, 9], [8]], "class_names": ["top", "bottom", "shoe", "bag"]},
        {"name": "fashion_footwear", "base": "fashion_mnist", "op": "regroup",
         "groups": [[0, 1, 2, 3, 4, 6, 8], [5, 7, 9]], "class_names": ["other", "footwear"]},
        {"name": "mnist_parity", "base": "mnist", "op": "regroup",
         "groups": [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]], "class_names": ["even", "odd"]},
        {"name": "digits_parity", "base": "digits", "op": "regroup",
         "groups": [[0, 2, 4, 6, 8], [1, 3, 5, 7, 9]], "class_names": ["even", "odd"]},
        {"name": "mnist_at_least_5", "base": "mnist", "op": "regroup",
         "groups": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], "class_names": ["below_5", "at_least_5"]},
        {"name": "digits_at_least_5", "base": "digits", "op": "regroup",
         "groups": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]], "class_names": ["below_5", "at_least_5"]},
    ]
    for base in ("mnist", "fashion_mnist", "digits", "lfw_faces"):
        rows += [
            {"name": f"{base}_inverted", "base": base, "op": "invert"},
            {"name": f"{base}_mirrored", "base": base, "op": "mirror"},
            {"name": f"{base}_blurred", "base": base, "op": "blur", "sigma": 1.0},
            {"name": f"{base}_noisy", "base": base, "op": "noise", "std": 40.0, "seed": 7},
        ]
    for base, colour in (("mnist", [255, 80, 80]), ("fashion_mnist", [80, 200, 255]),
                         ("digits", [120, 255, 120]), ("lfw_faces", [255, 200, 60])):
        rows.append({"name": f"{base}_tinted", "base": base, "op": "tint", "colour": colour})
    return rows


#: every catalogue task, in the order of the `stream69` stream
CATALOGUE: list[dict[str, Any]] = _rows()
CATALOGUE_BY_NAME = {row["name"]: row for row in CATALOGUE}
#: training images kept per derived task of a large base (bounded compute per task)
MAX_TRAIN = {"fashion_mnist": 10000}
STREAMS = {"stream69": [row["name"] for row in CATALOGUE]}


def stream_tasks(stream: str = "stream69") -> list[str]:
    """Task names of a stream, in order."""
    from mupath.errors import ConfigError
    if stream not in STREAMS:
        raise ConfigError(f"unknown stream '{stream}'; known: {', '.join(STREAMS)}")
    return list(STREAMS[stream])


@functools.lru_cache(maxsize=4)
def _base(name: str) -> Task:
    """A catalogue row's base: a built-in task, loaded as `load_task(name)` does (catalogue rows are
    data over the built-in sources; the sources module dispatches to this one, never the reverse)."""
    from mupath.data.builtin import load_builtin
    return load_builtin(name).to_task(name, seed=0)


def build_catalogue_task(name: str, seed: int = 0) -> Task:
    """The catalogue task `name`, each split transformed the same way (deterministically)."""
    row = CATALOGUE_BY_NAME[name]
    base = _base(row["base"])
    op = row["op"]
    class_names = list(base.class_names)
    splits = {}
    for split_name in ("train", "validation", "test"):
        split = getattr(base, split_name)
        images, labels = split.images, split.labels
        if op == "select":
            keep = np.isin(labels, row["classes"])
            images, labels = images[keep], np.searchsorted(row["classes"], labels[keep])
        elif op == "regroup":
            lookup = np.zeros(len(base.class_names), dtype=np.int64)
            for g, members in enumerate(row["groups"]):
                lookup[members] = g
            labels = lookup[labels]
        else:
            images = _transform(op, row, images)
        splits[split_name] = (images, labels)
    if op == "select":
        class_names = [base.class_names[c] for c in row["classes"]]
    elif op == "regroup":
        class_names = list(row["class_names"])
    task = Task.from_arrays(name, *splits["train"], val=splits["validation"], test=splits["test"],
                            class_names=class_names, seed=seed, source=f"catalogue:{row['base']}:{op}")
    limit = MAX_TRAIN.get(row["base"])
    if limit is not None and len(task.train) > limit:
        from mupath.data.task import limit_train
        task = limit_train(task, limit, seed=seed)
    return task


def _transform(op: str, row: dict[str, Any], images: np.ndarray) -> np.ndarray:
    """Pixel transformations on (N, H, W, C) uint8."""
    x = images
    if op == "identity":
        return x
    if op == "invert":
        return 255 - x
    if op == "mirror":
        return np.ascontiguousarray(x[:, :, ::-1])
    if op == "permute":
        n, h, w, c = x.shape
        perm = np.random.default_rng(row["seed"]).permutation(h * w)
        return np.ascontiguousarray(x.reshape(n, h * w, c)[:, perm].reshape(n, h, w, c))
    if op == "rotate":
        from scipy.ndimage import rotate
        turned = rotate(x.astype(np.float32), row["angle"], axes=(1, 2), reshape=False, order=1)
        return np.clip(turned, 0, 255).round().astype(np.uint8)
    if op == "blur":
        from scipy.ndimage import gaussian_filter
        blurred = gaussian_filter(x.astype(np.float32), sigma=(0, row["sigma"], row["sigma"], 0))
        return np.clip(blurred, 0, 255).round().astype(np.uint8)
    if op == "noise":
        noise = np.random.default_rng(row["seed"]).normal(0, row["std"], x.shape)
        return np.clip(x.astype(np.float32) + noise, 0, 255).round().astype(np.uint8)
    if op == "tint":
        grey = x.astype(np.float32).mean(axis=-1, keepdims=True)
        colour = np.asarray(row["colour"], dtype=np.float32) / 255.0
        return np.clip(grey * colour, 0, 255).round().astype(np.uint8)
    raise ValueError(f"unknown catalogue operation {op}")


def catalogue_markdown() -> str:
    """The catalogue as a markdown table (docs/tasks.md is generated from it)."""
    lines = ["| # | task | base | operation | arguments |", "|---|---|---|---|---|"]
    for i, row in enumerate(CATALOGUE, 1):
        args = ", ".join(f"{k}={v}" for k, v in row.items() if k not in ("name", "base", "op"))
        lines.append(f"| {i} | `{row['name']}` | {row['base']} | {row['op']} | {args} |")
    return "\n".join(lines)
