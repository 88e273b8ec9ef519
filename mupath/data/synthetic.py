"""A synthetic task for smoke runs and tests: tiny, separable, no data files needed."""
from __future__ import annotations

import numpy as np

from mupath.data.task import Task


def quadrant_task(name: str, n: int = 120, seed: int = 0, classes: int = 3) -> Task:
    """8x8 greyscale noise images where class k is a bright square in quadrant k (k < 4): a task any
    path learns in a few steps, so that a run's mechanics can be checked in seconds."""
    if not 1 <= classes <= 4:
        raise ValueError(f"quadrant_task has 1 to 4 classes (one per quadrant), got {classes}")
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    images = rng.integers(0, 40, (n, 8, 8)).astype(np.uint8)
    for i, k in enumerate(labels):
        r, c = divmod(int(k), 2)
        images[i, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] = 220
    return Task.from_arrays(name, images, labels, seed=seed)
