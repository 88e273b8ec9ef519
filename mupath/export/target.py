"""Where an export goes: checked before any work (an export of a large path takes a while, and a
refusal after it wastes that), so a bad target is one line up front. The files themselves are written
with `mupath.store.atomic` (temporary file, fsync, rename): an interrupted export never leaves a
half-written model under the target's name."""
from __future__ import annotations

import os
from pathlib import Path

from mupath.errors import ConfigError, StoreError

FORMATS = ("onnx", "pt2", "folder")


def check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format '{fmt}'; use one of {', '.join(FORMATS)}")
    return fmt


def check_tasks(fmt: str, tasks: list[str]) -> None:
    if fmt == "folder" and len(tasks) > 1:
        raise ConfigError("the folder format holds one task; export each task to its own folder, or use "
                          "--format onnx or pt2 for several tasks in one model")


def check_target(out: str | os.PathLike[str], fmt: str, force: bool) -> Path:
    """The resolved target; one-line errors for a file where a folder goes (and back), an existing
    target without `force`, and a place that cannot be written."""
    path = Path(out).expanduser().absolute()
    if fmt == "folder":
        if path.exists() and not path.is_dir():
            raise ConfigError(f"{path} is a file; the folder format writes a folder (model.safetensors + "
                              "config.json), give a folder name")
        if path.is_dir() and any(path.iterdir()) and not force:
            raise ConfigError(f"{path} already exists and is not empty; pass --force to replace its "
                              "model.safetensors and config.json")
        _check_writable(path / "config.json")
    else:
        if path.is_dir():
            raise ConfigError(f"{path} is a folder; give a file name such as {path / ('model.' + fmt)}")
        if path.exists() and not force:
            raise ConfigError(f"{path} already exists; pass --force to replace it")
        _check_writable(path)
    return path


def _check_writable(path: Path) -> None:
    """The nearest existing folder above `path` must be a writable folder (creating the rest is then
    possible)."""
    place = path.parent
    while not place.exists():
        place = place.parent
    if not place.is_dir():
        raise StoreError(f"cannot write {path}: {place} is a file, not a folder; choose another output path")
    if not os.access(place, os.W_OK | os.X_OK):
        raise StoreError(f"cannot write {path}: {place} is not writable; choose another output path or "
                         "make it writable")
