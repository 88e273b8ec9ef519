"""The `Task`: one image-classification problem with fixed train/validation/test splits.

A task is immutable and validated on construction, so the rest of mupath can trust its invariants:
uint8 (N, H, W, C) images with C in {1, 3}, int64 labels in [0, num_classes), one image shape for
all splits, non-empty splits, at least two classes to train on.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mupath.data.carve import carve, stratified_subset
from mupath.data.validate import as_class_names, as_images, as_labels, check_task_name, data_error, default_class_names
from mupath.errors import ConfigError, DataError

SPLIT_NAMES: tuple[str, ...] = ("train", "validation", "test")
"""Split order used everywhere (iteration, flat array keys)."""

ARRAY_FIELDS: tuple[str, ...] = ("images", "labels")

ArrayPair = tuple[Any, Any]

_KEYWORD = {"validation": "val", "test": "test"}
"""The `Task.from_arrays` keyword for each optional split, for messages that tell users what to pass."""


@dataclass(frozen=True, eq=False)
class Split:
    """Images and labels of one split, already in canonical form.

    Build splits through `Task.from_arrays`, which normalises user data; constructing one directly only
    checks the canonical form. Treat the arrays as read-only: tasks are shared, not copied.
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if not (isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4
                and images.shape[-1] in (1, 3) and images.flags.c_contiguous):
            raise DataError("invalid Split: images must be a C-contiguous uint8 (N, H, W, C) array "
                            "with C in {1, 3}; build tasks with Task.from_arrays")
        if not (isinstance(labels, np.ndarray) and labels.dtype == np.int64 and labels.ndim == 1):
            raise DataError("invalid Split: labels must be an int64 (N,) array; "
                            "build tasks with Task.from_arrays")
        if len(images) != len(labels):
            raise DataError(f"invalid Split: {len(images)} images but {len(labels)} labels; "
                            "pass one label per image")

    def __len__(self) -> int:
        return len(self.labels)

    def __eq__(self, other: object) -> bool:
        """Content equality (dataclass equality would compare arrays ambiguously)."""
        if not isinstance(other, Split):
            return NotImplemented
        return (np.array_equal(self.images, other.images) and self.images.shape == other.images.shape
                and np.array_equal(self.labels, other.labels))

    def __repr__(self) -> str:
        return f"Split(n={len(self)}, image_shape={self.images.shape[1:]})"

    def take(self, indices: np.ndarray) -> Split:
        """The sub-split at `indices` (contiguous copies, so the result is canonical too)."""
        return Split(np.ascontiguousarray(self.images[indices]),
                     np.ascontiguousarray(self.labels[indices]))


@dataclass(frozen=True)
class Task:
    """A named classification task with fixed splits; validated on construction."""

    name: str
    train: Split
    validation: Split
    test: Split
    class_names: tuple[str, ...]
    source: str = ""

    def __post_init__(self) -> None:
        check_task_name(self.name)
        object.__setattr__(self, "class_names", as_class_names(self.name, self.class_names))
        if not isinstance(self.source, str):
            raise data_error(self.name, "source must be a string", "describe where the task came from")
        for split_name, split in self.splits.items():
            if not isinstance(split, Split):
                raise data_error(self.name, f"{split_name} must be a Split, got "
                                 f"{type(split).__name__}", "build tasks with Task.from_arrays")
            _require_non_empty(self.name, split_name, split, "provide at least one image")
        _check_same_image_shape(self)
        _check_label_range(self)
        _check_trainable(self)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C), shared by all splits."""
        height, width, channels = self.train.images.shape[1:]
        return int(height), int(width), int(channels)

    @property
    def splits(self) -> dict[str, Split]:
        """The splits by name, in `SPLIT_NAMES` order."""
        return {name: getattr(self, name) for name in SPLIT_NAMES}

    @classmethod
    def from_arrays(cls, name: str, images: Any, labels: Any, val: ArrayPair | None = None,
                    test: ArrayPair | None = None, class_names: Sequence[str] | None = None, *,
                    seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2,
                    source: str = "arrays") -> Task:
        """Build a task from raw arrays, normalising them and carving missing splits from train.

        Missing splits are carved stratified per class (test first, then validation from the rest)
        with `numpy.random.default_rng(seed)`, so the same inputs and seed give identical splits.
        """
        name = check_task_name(name)
        _check_seed(seed)
        train = _make_split(name, "train", images, labels)
        given = {split: None if pair is None else _make_split(name, split, *_unpack(name, split, pair))
                 for split, pair in (("validation", val), ("test", test))}
        names = (as_class_names(name, class_names) if class_names is not None
                 else default_class_names(name, _max_label([train, *given.values()])))
        rng = np.random.default_rng(seed)
        for split, fraction in (("test", test_fraction), ("validation", val_fraction)):
            if given[split] is None:
                _check_fraction(f"{_KEYWORD[split]}_fraction", fraction)
                given[split], train = _carve_split(name, split, train, fraction, rng)
        val_split, test_split = given["validation"], given["test"]
        assert val_split is not None and test_split is not None     # carved above when not given
        return cls(name=name, train=train, validation=val_split, test=test_split, class_names=names, source=source)


def limit_train(task: Task, max_train: int, *, seed: int = 0) -> Task:
    """The task with at most `max_train` training images, a stratified deterministic subset.

    Validation and test are untouched so that scores stay comparable with a full-size run.
    """
    check_max_train(max_train)
    _check_seed(seed)
    if max_train >= len(task.train):
        return task
    classes = len(np.unique(task.train.labels))
    if max_train < classes:
        raise ConfigError(f"max_train {max_train} is below the {classes} classes of task '{task.name}', so some "
                          f"class would have no training image; use max_train >= {classes}")
    keep = stratified_subset(task.train.labels, int(max_train), np.random.default_rng(seed))
    return dataclasses.replace(task, train=task.train.take(keep))


def check_max_train(max_train: Any) -> None:
    """Fewer than two training images can never hold two classes, so such a cap is a settings error."""
    if isinstance(max_train, bool) or not isinstance(max_train, (int, np.integer)) or max_train < 2:
        raise ConfigError(f"max_train must be an integer >= 2, got {max_train!r}; "
                          "pass e.g. max_train=1000 or leave it unset")


def task_to_arrays(task: Task) -> dict[str, np.ndarray]:
    """Flatten a task into `{"<split>.<images|labels>": array}`, e.g. for a safetensors file."""
    return {f"{split_name}.{field}": getattr(split, field)
            for split_name, split in task.splits.items() for field in ARRAY_FIELDS}


def task_from_arrays_dict(name: str, arrays: Mapping[str, Any], class_names: Sequence[str],
                          source: str) -> Task:
    """Inverse of `task_to_arrays`; validates again because the arrays come back from disk."""
    expected = {f"{split}.{field}" for split in SPLIT_NAMES for field in ARRAY_FIELDS}
    missing, extra = sorted(expected - set(arrays)), sorted(set(arrays) - expected)
    if missing or extra:
        raise data_error(str(name), f"task arrays have missing keys {missing} / unexpected keys "
                         f"{extra}", "the stored task is damaged; re-add it from its source")
    pairs = {split: (arrays[f"{split}.images"], arrays[f"{split}.labels"]) for split in SPLIT_NAMES}
    return Task.from_arrays(name, *pairs["train"], val=pairs["validation"], test=pairs["test"],
                            class_names=class_names, source=source)


def _make_split(task: str, split: str, images: Any, labels: Any) -> Split:
    """Normalise one (images, labels) pair into a `Split`, with the task named in any error."""
    image_array = as_images(task, split, images)
    return Split(image_array, as_labels(task, split, labels, len(image_array)))


def _unpack(task: str, split: str, pair: Any) -> ArrayPair:
    """Accept `val=(images, labels)`; anything else is a usage error worth a clear message."""
    if isinstance(pair, (tuple, list)) and len(pair) == 2:
        return pair[0], pair[1]
    raise data_error(task, f"{split} must be an (images, labels) pair, got {type(pair).__name__}",
                     f"pass e.g. {_KEYWORD[split]}=(x, y) or leave it "
                     "out to carve it from train")


def _carve_split(task: str, split: str, train: Split, fraction: float,
                 rng: np.random.Generator) -> tuple[Split, Split]:
    """Carve `split` out of `train`; returns (carved, remaining train)."""
    carved, remaining = carve(train.labels, fraction, rng)
    fix = (f"provide at least 3 images per class, or pass {_KEYWORD[split]}=(images, labels) "
           "explicitly")
    result = train.take(carved), train.take(remaining)
    _require_non_empty(task, f"{split} (carved from train)", result[0], fix)
    return result


def _max_label(splits: Sequence[Split | None]) -> int:
    return max(int(split.labels.max()) for split in splits if split is not None)


def _require_non_empty(task: str, split_name: str, split: Split, fix: str) -> None:
    if len(split) == 0:
        raise data_error(task, f"{split_name} split is empty", fix)


def _check_same_image_shape(task: Task) -> None:
    """All splits must share (H, W, C): one model input size serves the whole task."""
    shapes = {name: split.images.shape[1:] for name, split in task.splits.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise data_error(task.name, f"images have mixed shapes between splits ({listed})",
                         "all images must share one (H, W, C) size; resize them first")


def _check_label_range(task: Task) -> None:
    for split_name, split in task.splits.items():
        low, high = int(split.labels.min()), int(split.labels.max())
        if low < 0:
            raise data_error(task.name, f"{split_name} labels out of range: negative label {low}",
                             "labels must be class indices 0..K-1")
        if high >= task.num_classes:
            raise data_error(task.name, f"labels out of range: max label {high} but "
                             f"{task.num_classes} classes",
                             f"pass class_names with {high + 1} entries or fix the labels")


def _check_trainable(task: Task) -> None:
    """A classifier cannot learn from a single class, nor a class seen in validation or test but never
    in training: usually wrong labels were passed, or the splits' labels were encoded differently."""
    present = np.unique(task.train.labels)
    if len(present) < 2:
        raise data_error(task.name, f"only one class ({task.class_names[int(present[0])]!r}) in the "
                         "training split", "provide images of at least two classes")
    trained = set(present.tolist())
    for split_name, split in task.splits.items():
        unseen = sorted(set(np.unique(split.labels).tolist()) - trained)
        if unseen:
            raise data_error(task.name, f"{split_name} has labels never seen in training "
                             f"({', '.join(task.class_names[i] for i in unseen[:5])})",
                             "encode every split's labels the same way, with training images of each class")


def _check_seed(seed: Any) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}; pass e.g. seed=0")


def _check_fraction(option: str, fraction: Any) -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1:
        raise ConfigError(f"{option} must be a number strictly between 0 and 1, got {fraction!r}; "
                          "pass e.g. 0.1")
