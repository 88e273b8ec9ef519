"""Seed relevance probe (`seed_order="probe"`): rank the other tasks' best paths by how well their
frozen features already separate the new task's classes, so that the first candidates descend from the
most relevant parents.

Why: µ2Net shuffles the seed paths and, with 64-128 candidates per task, every plausible parent gets
tried. With a handful of candidates per task (a laptop or a 2-core machine) the first shuffled seeds
decide the task: on a 69-task stream a permuted-MNIST task would descend from a face classifier. The
probe is a nearest-class-mean classifier on each seed path's head features (cosine), fitted on half of
a fixed sample of the task's training images and scored on the other half: one frozen forward per seed,
no training, deterministic. Validation images stay untouched for selection."""
from __future__ import annotations

import random
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

from mupath.store.records import PathRecord
from mupath.train.pipeline import to_model_input

if TYPE_CHECKING:
    from mupath.model.path_model import PathModel


def probe_sample(labels: torch.Tensor, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of a fixed random sample of up to `n` training images, split into (fit, eval) halves."""
    order = list(range(labels.shape[0]))
    random.Random(seed).shuffle(order)
    take = torch.tensor(order[:max(2, min(n, len(order)))], dtype=torch.long)
    half = take.shape[0] // 2
    return take[:half], take[half:]


def ncm_accuracy(fit: torch.Tensor, fit_y: torch.Tensor, test: torch.Tensor, test_y: torch.Tensor,
                 num_classes: int) -> float:
    """Accuracy of the nearest class mean (cosine) on `test`; classes absent from `fit` never win."""
    fit = torch.nn.functional.normalize(fit.double(), dim=1)
    test = torch.nn.functional.normalize(test.double(), dim=1)
    means = torch.zeros(num_classes, fit.shape[1], dtype=torch.float64).index_add_(0, fit_y, fit)
    counts = torch.bincount(fit_y, minlength=num_classes)
    sims = test @ torch.nn.functional.normalize(means, dim=1).T
    sims[:, counts == 0] = float("-inf")
    return float((sims.argmax(dim=1) == test_y).double().mean())


def probe_scores(paths: list[PathRecord], model_of: Callable[[PathRecord], PathModel], images: torch.Tensor,
                 labels: torch.Tensor, num_classes: int, n: int, *, seed: int, default_size: int) -> dict[str, float]:
    """{seed path id: nearest-class-mean accuracy of its features} on a sample of the task's
    training images (`images` (N, C, H, W) uint8, `labels` (N,)), each at its path's image size
    (`default_size` for the root path, which has none of its own)."""
    fit_idx, eval_idx = probe_sample(labels, n, seed)
    sample, k = images[torch.cat([fit_idx, eval_idx])], fit_idx.shape[0]
    inputs: dict[int, torch.Tensor] = {}      # the sample preprocessed once per image size
    out: dict[str, float] = {}
    with torch.inference_mode():
        for path in paths:
            size = int(path.hparams.get("ds_image_size", default_size))
            if size not in inputs:
                inputs[size] = to_model_input(sample, size)
            feats = model_of(path).eval().features(inputs[size]).float()
            out[path.id] = ncm_accuracy(feats[:k], labels[fit_idx], feats[k:], labels[eval_idx], num_classes)
    return out


def rank_paths(paths: list[PathRecord], scores: dict[str, float]) -> list[PathRecord]:
    """Seeds by probe score, best first; ties keep their current (shuffled) order."""
    return [p for _, p in sorted(enumerate(paths), key=lambda ip: (-scores.get(ip[1].id, float("-inf")), ip[0]))]
