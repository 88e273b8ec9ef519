"""`load_task`: turn a built-in name or a path (image folder, .npz, Hugging Face directory) into a Task.

Each source kind has one loader returning a `RawTask`; normalisation, carving and validation happen
once, in `Task.from_arrays`, so every source obeys the same rules.
"""
from __future__ import annotations

import dataclasses
import os
import zipfile
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from mupath.data.builtin import BUILTIN_TASKS, load_builtin
from mupath.data.images import IMAGE_SUFFIXES, decode_split_images
from mupath.data.raw import RawTask, import_optional
from mupath.data.task import Task, check_max_train, limit_train
from mupath.data.validate import check_task_name, data_error, sanitise_task_name

ACCEPTED_SOURCES = ("a built-in name ({builtins}), a folder of images (one sub-folder per class, or "
                    "train/ val/ test/ sub-folders of class folders), a .npz file, or a Hugging Face "
                    "save_to_disk directory")

SPLIT_FOLDERS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}
"""Sub-folder names that mark a split layout, mapped to our split names."""

NPZ_KEYS: dict[str, tuple[tuple[str, str], ...]] = {
    "train": (("x_train", "y_train"), ("images", "labels")),
    "validation": (("x_val", "y_val"), ("x_validation", "y_validation")),
    "test": (("x_test", "y_test"),),
}
"""Accepted (images, labels) key pairs per split, in order of preference."""

HF_SPLITS = {"train": ("train",), "validation": ("validation", "val", "valid"), "test": ("test",)}


def load_task(source: str, name: str | None = None, *, seed: int = 0,
              max_train: int | None = None) -> Task:
    """Load a task from a built-in name or a path; built-in names win over same-named paths.

    `name` defaults to the built-in name or the file/folder name (sanitised). `max_train` keeps a
    stratified, deterministic subset of the training split (after validation/test are carved).
    """
    if max_train is not None:
        check_max_train(max_train)
    if not isinstance(source, (str, os.PathLike)) or not str(source).strip():
        raise data_error(str(name or source), f"invalid task source {source!r}",
                         "pass " + _accepted())
    source = str(source)
    if source in BUILTIN_TASKS:
        task_name = check_task_name(name if name is not None else source)
        raw = load_builtin(source)
    elif _is_catalogue(source):
        from mupath.data.catalogue import build_catalogue_task
        task = build_catalogue_task(source, seed=seed)
        if name is not None:
            task = dataclasses.replace(task, name=check_task_name(name))
        return task if max_train is None else limit_train(task, max_train, seed=seed)
    else:
        path = Path(source).expanduser().resolve()
        task_name = check_task_name(name if name is not None else _default_name(path))
        raw = _load_path(task_name, source, path)
    task = raw.to_task(task_name, seed=seed)
    return task if max_train is None else limit_train(task, max_train, seed=seed)


def _is_catalogue(source: str) -> bool:
    from mupath.data.catalogue import CATALOGUE_BY_NAME
    return source in CATALOGUE_BY_NAME


def _load_path(task: str, source: str, path: Path) -> RawTask:
    """Dispatch on what the path is; anything unrecognised gets the list of accepted sources."""
    if path.is_dir():
        return load_hf_directory(task, path) if is_hf_directory(path) else load_image_folder(task, path)
    if path.is_file() and path.suffix.lower() == ".npz":
        return load_npz(task, path)
    problem = (f"unsupported file {path}" if path.exists()
               else f"unknown task source {source!r}: not a built-in name and no such file or folder")
    raise data_error(task, problem, "pass " + _accepted())


def _accepted() -> str:
    return ACCEPTED_SOURCES.format(builtins=", ".join(sorted(BUILTIN_TASKS)))


def _default_name(path: Path) -> str:
    """Folders keep their full name (dots included); files lose their extension."""
    return sanitise_task_name(path.name if path.is_dir() else path.stem)


# --- image folders ---------------------------------------------------------------------------------


def load_image_folder(task: str, root: Path) -> RawTask:
    """One sub-folder per class, or train/val(idation)/test sub-folders that each hold class folders."""
    split_dirs = _split_dirs(task, root)
    class_names = sorted({d.name for split_dir in split_dirs.values() for d in _subdirs(split_dir)})
    if not class_names:
        raise data_error(task, f"no class sub-folders in {root}",
                         "put the images of each class in their own sub-folder")
    files = {split: _class_files(task, split_dir, class_names) for split, split_dir in split_dirs.items()}
    _check_no_empty_class(task, root, class_names, files)
    images = decode_split_images(task, {split: [p for p, _ in pairs] for split, pairs in files.items()},
                                 Image.open, lambda p: str(p))
    labels = {split: np.array([label for _, label in pairs], dtype=np.int64)
              for split, pairs in files.items()}
    pairs = {split: (images[split], labels[split]) for split in files}
    return RawTask(*pairs["train"], class_names=class_names, val=pairs.get("validation"),
                   test=pairs.get("test"), source=str(root))


def _split_dirs(task: str, root: Path) -> dict[str, Path]:
    """{split: folder}; the root itself is the train folder unless it only has split sub-folders."""
    names = {d.name for d in _subdirs(root)}
    if not names or not names <= SPLIT_FOLDERS.keys():
        return {"train": root}
    if "train" not in names:
        raise data_error(task, f"{root} has split folders {sorted(names)} but no train/",
                         "add a train/ folder with one sub-folder per class")
    if {"val", "validation"} <= names:
        raise data_error(task, f"{root} has both val/ and validation/", "keep only one of them")
    return {SPLIT_FOLDERS[n]: root / n for n in sorted(names, key=list(SPLIT_FOLDERS).index)}


def _class_files(task: str, split_dir: Path, class_names: list[str]) -> list[tuple[Path, int]]:
    """(image file, label) pairs of one split folder, sorted so loading is deterministic."""
    pairs = [(path, label) for label, class_name in enumerate(class_names)
             for path in sorted((split_dir / class_name).glob("*"))
             if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES
             and not path.name.startswith(".")]
    if not pairs:
        raise data_error(task, f"no image files in the class folders of {split_dir}",
                         "add png/jpg/jpeg/bmp/gif/webp files inside one sub-folder per class")
    return pairs


def _check_no_empty_class(task: str, root: Path, class_names: list[str],
                          files: Mapping[str, list[tuple[Path, int]]]) -> None:
    """A class folder without any image is almost always a mistake (wrong extension, empty copy)."""
    seen = {label for pairs in files.values() for _, label in pairs}
    empty = [name for label, name in enumerate(class_names) if label not in seen]
    if empty:
        raise data_error(task, f"class folders {empty} in {root} contain no images",
                         "add png/jpg/jpeg/bmp/gif/webp files or remove those folders")


def _subdirs(folder: Path) -> list[Path]:
    """Visible sub-folders (hidden ones such as .ipynb_checkpoints are not classes)."""
    if not folder.is_dir():
        return []
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


# --- .npz files ------------------------------------------------------------------------------------


def load_npz(task: str, path: Path) -> RawTask:
    """x_train/y_train (or images/labels), optional x_val/y_val, x_test/y_test and class_names.

    Loaded with allow_pickle=False: a task file must never be able to run code.
    """
    arrays = _read_npz(task, path)
    pairs = {split: _npz_pair(task, path, arrays, split) for split in NPZ_KEYS}
    if pairs["train"] is None:
        raise data_error(task, f"{path} has no training arrays (keys: {sorted(arrays)})",
                         "save them as x_train and y_train (or images and labels)")
    names = arrays.get("class_names")
    return RawTask(*pairs["train"], class_names=None if names is None else names.tolist(),
                   val=pairs["validation"], test=pairs["test"], source=str(path))


def _read_npz(task: str, path: Path) -> dict[str, np.ndarray]:
    try:
        archive = np.load(path, allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):  # a plain .npy renamed to .npz
            raise ValueError("it holds a single array")
        with archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as exc:
        raise data_error(task, f"{path} cannot be loaded without unpickling or is not an .npz "
                         f"archive ({exc})", "save plain numeric arrays with np.savez "
                         "(no object arrays)") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise data_error(task, f"cannot read {path} ({exc})", "re-create the .npz file") from None


def _npz_pair(task: str, path: Path, arrays: Mapping[str, np.ndarray],
              split: str) -> tuple[np.ndarray, np.ndarray] | None:
    """The first accepted (images, labels) key pair present for `split`, or None."""
    for images_key, labels_key in NPZ_KEYS[split]:
        if images_key in arrays:
            if labels_key not in arrays:
                raise data_error(task, f"{path} has {images_key} but no {labels_key}",
                                 f"save the labels as {labels_key}")
            return arrays[images_key], arrays[labels_key]
    return None


# --- Hugging Face datasets -------------------------------------------------------------------------


def is_hf_directory(path: Path) -> bool:
    """A `save_to_disk` directory: a DatasetDict has dataset_dict.json, a Dataset has both jsons."""
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file())


def load_hf_directory(task: str, path: Path) -> RawTask:
    """A `datasets` DatasetDict (train/validation/test) or single Dataset (used as train)."""
    datasets = import_optional(task, "datasets",
                               "install the optional extra: pip install 'mupath[hf]'")
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets/pyarrow raise many unrelated types for a damaged directory
        raise data_error(task, f"cannot load the Hugging Face dataset at {path} "
                         f"({type(exc).__name__}: {exc})", "re-create it with save_to_disk") from None
    splits = _hf_splits(task, path, loaded, datasets)
    features = splits["train"].features
    image_column = _hf_image_column(task, features, datasets)
    label_column = _hf_label_column(task, features, datasets)
    label_feature = features[label_column]
    class_names = label_feature.names if isinstance(label_feature, datasets.ClassLabel) else None
    for split, dataset in splits.items():
        missing = {image_column, label_column} - set(dataset.column_names)
        if missing:
            raise data_error(task, f"{split} split lacks columns {sorted(missing)}",
                             "give every split the same columns")
    images = _hf_images(task, {split: list(ds[image_column]) for split, ds in splits.items()})
    pairs = {split: (images[split], np.asarray(list(ds[label_column])))
             for split, ds in splits.items()}
    return RawTask(*pairs["train"], class_names=class_names, val=pairs.get("validation"),
                   test=pairs.get("test"), source=str(path))


def _hf_splits(task: str, path: Path, loaded: Any, datasets: Any) -> dict[str, Any]:
    """{our split name: Dataset}; other split names (e.g. 'unsupervised') are ignored."""
    if not isinstance(loaded, datasets.DatasetDict):
        return {"train": loaded}
    splits = {ours: loaded[next(n for n in theirs if n in loaded)]
              for ours, theirs in HF_SPLITS.items() if any(n in loaded for n in theirs)}
    if "train" not in splits:
        raise data_error(task, f"{path} has splits {sorted(loaded)} but no 'train'",
                         "save a DatasetDict with a 'train' split")
    return splits


def _hf_image_column(task: str, features: Mapping[str, Any], datasets: Any) -> str:
    return _first_column(task, features, lambda n, f: isinstance(f, datasets.Image),
                         lambda n, f: n in ("image", "img"), "image",
                         "use a datasets.Image feature or name the column 'image'")


def _hf_label_column(task: str, features: Mapping[str, Any], datasets: Any) -> str:
    return _first_column(task, features, lambda n, f: n in ("label", "labels"),
                         lambda n, f: isinstance(f, datasets.ClassLabel), "label",
                         "name the column 'label' or use a datasets.ClassLabel feature")


def _first_column(task: str, features: Mapping[str, Any], preferred: Callable[[str, Any], bool],
                  fallback: Callable[[str, Any], bool], kind: str, fix: str) -> str:
    """The first column matching `preferred`, else the first matching `fallback`."""
    for rule in (preferred, fallback):
        for column, feature in features.items():
            if rule(column, feature):
                return column
    raise data_error(task, f"no {kind} column among {list(features)}", fix)


def _hf_images(task: str, columns: Mapping[str, list[Any]]) -> dict[str, Any]:
    """Decoded PIL images go through the shared decoder; raw array columns are used as they are."""
    if all(isinstance(value, Image.Image) for values in columns.values() for value in values):
        return decode_split_images(
            task, {split: [(split, row) for row in range(len(values))]
                   for split, values in columns.items()},
            lambda item: nullcontext(columns[item[0]][item[1]]),
            lambda item: f"row {item[1]} of the {item[0]} split")
    return {split: values for split, values in columns.items()}
