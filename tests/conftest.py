"""Shared fixtures: a tiny root and tiny tasks so end-to-end tests run in seconds on 2 cores."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mupath.data import Task, load_task

TINY_ROOT = dict(root="vit_tiny_patch16_224", image_size=8, patch_size=4, depth=2, embed_dim=32,
                 num_heads=2, seed=0)
TINY_SETTINGS = dict(generations=2, candidates=2, steps_per_validation=15, validations=2, batch_size=32,
                     val_limit=200)


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits_small() -> Task:
    return load_task("digits", max_train=400)


@pytest.fixture(scope="session")
def parity_task() -> Task:
    """A second real task on the same images: is the digit even?"""
    d = load_task("digits", max_train=400)
    return Task.from_arrays("parity", d.train.images, d.train.labels % 2,
                            val=(d.validation.images, d.validation.labels % 2),
                            test=(d.test.images, d.test.labels % 2), class_names=["even", "odd"])


def blobs_task(name: str, n: int = 120, seed: int = 0, classes: int = 3) -> Task:
    """Separable synthetic images: class k is a bright square in quadrant k."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    images = rng.integers(0, 40, (n, 8, 8)).astype(np.uint8)
    for i, k in enumerate(labels):
        r, c = divmod(int(k), 2)
        images[i, r * 4:(r + 1) * 4, c * 4:(c + 1) * 4] = 220
    return Task.from_arrays(name, images, labels, seed=seed)


@pytest.fixture
def tiny_system(tmp_path):
    from mupath import System
    return System.create(tmp_path / "store", **TINY_ROOT)
