"""Shared fixtures: a tiny root and tiny tasks so end-to-end tests run in seconds on 2 cores."""
from __future__ import annotations

import pytest
import torch

from mupath.data import Task, load_task
from mupath.data.synthetic import quadrant_task

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


blobs_task = quadrant_task     # separable synthetic images: class k is a bright square in quadrant k


@pytest.fixture
def tiny_system(tmp_path):
    from mupath import System
    return System.create(tmp_path / "store", **TINY_ROOT)
