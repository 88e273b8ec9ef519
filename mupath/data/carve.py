"""Deterministic, stratified selection of images: carving validation/test splits and capping train.

Stratification keeps every class represented in every split, which the evolutionary search needs to
score candidates fairly; determinism (everything flows from one `numpy.random.Generator`) makes a
task reproducible from its source and seed alone.
"""
from __future__ import annotations

import numpy as np


def carve(labels: np.ndarray, fraction: float,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (carved, remaining), taking about `fraction` of every class.

    Each class gives round(fraction * count) images, at least one when it has >= 3 images, and never
    all of them (its remaining images must still be able to train).
    """
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    wanted = np.floor(fraction * counts + 0.5).astype(np.int64)
    wanted = np.where(counts >= 3, np.maximum(wanted, 1), wanted)
    wanted = np.minimum(wanted, np.maximum(counts - 1, 0))
    picked = _pick_per_class(inverse, counts, wanted, rng)
    return np.flatnonzero(picked), np.flatnonzero(~picked)


def stratified_subset(labels: np.ndarray, total: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of at most `total` images, drawn proportionally to class sizes.

    Used for `max_train`: a quick run on a big task should see the same class balance as a full run.
    """
    if total >= len(labels):
        return np.arange(len(labels))
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    picked = _pick_per_class(inverse, counts, proportional_counts(counts, total), rng)
    return np.flatnonzero(picked)


def proportional_counts(counts: np.ndarray, total: int) -> np.ndarray:
    """Per-class quotas summing to `total` (< counts.sum()), proportional by largest remainder.

    When `total` allows it every class keeps at least one image, so no class silently disappears.
    """
    ideal = counts * (total / counts.sum())
    quota = np.floor(ideal).astype(np.int64)
    leftover = total - int(quota.sum())
    quota[np.argsort(-(ideal - quota), kind="stable")[:leftover]] += 1
    if total >= len(counts):
        for empty in np.flatnonzero(quota == 0):
            quota[int(np.argmax(quota))] -= 1  # pigeonhole: the largest quota is >= 2 here
            quota[empty] += 1
    return quota


def _pick_per_class(inverse: np.ndarray, counts: np.ndarray, wanted: np.ndarray,
                    rng: np.random.Generator) -> np.ndarray:
    """Boolean mask picking `wanted[c]` random images of every class c.

    One permutation grouped by class (stable sort) gives each image a random rank inside its class;
    an image is picked when its rank is below its class's quota. O(N log N) for any class count.
    """
    order = rng.permutation(len(inverse))
    order = order[np.argsort(inverse[order], kind="stable")]
    starts = np.cumsum(counts) - counts
    rank = np.empty(len(inverse), dtype=np.int64)
    rank[order] = np.arange(len(inverse)) - np.repeat(starts, counts)
    return rank < wanted[inverse]
