"""`RawTask`: what every source loader returns before normalisation, so they share one path to `Task`."""
from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from mupath.data.task import ArrayPair, Task
from mupath.data.validate import data_error


@dataclass(frozen=True)
class RawTask:
    """Arrays exactly as a source yields them; missing splits are carved by `to_task`."""

    images: Any
    labels: Any
    class_names: Sequence[str] | None = None
    val: ArrayPair | None = None
    test: ArrayPair | None = None
    source: str = ""

    def to_task(self, name: str, *, seed: int = 0) -> Task:
        """Normalise, carve and validate (all in `Task.from_arrays`)."""
        return Task.from_arrays(name, self.images, self.labels, val=self.val, test=self.test,
                                class_names=self.class_names, seed=seed, source=self.source)


def import_optional(task: str, module: str, fix: str) -> ModuleType:
    """Import a package only some sources need; a missing one becomes a DataError saying what to
    install (`fix`) instead of an ImportError traceback."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise data_error(task, f"this source needs the Python package {module!r}", fix) from None
