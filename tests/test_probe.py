"""Seed relevance probe (`seed_order="probe"`): the classifier, the ranking and its use in evolve."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from conftest import TINY_SETTINGS
from mupath.errors import ConfigError
from mupath.search.probe import ncm_accuracy, probe_sample, probe_scores, rank_paths
from mupath.store.records import PathRecord


def test_ncm_accuracy_separable_and_degenerate():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(40) % 4
    feats = torch.nn.functional.one_hot(y, 4).float() * 5 + 0.1 * torch.randn(40, 4, generator=g)
    assert ncm_accuracy(feats[:20], y[:20], feats[20:], y[20:], 4) == 1.0
    # identical features: every class mean is equally near, the first class present wins
    same = torch.ones(40, 3)
    assert ncm_accuracy(same[:20], y[:20], same[20:], y[20:], 4) == pytest.approx(float((y[20:] == 0).float().mean()))
    # a class never seen in the fit half is never predicted
    fit_y = torch.where(y[:20] == 0, torch.tensor(1), y[:20])
    pred_acc = ncm_accuracy(feats[:20], fit_y, feats[20:], torch.zeros(20, dtype=torch.long), 4)
    assert pred_acc == 0.0


def test_probe_sample_is_fixed_and_disjoint():
    labels = torch.arange(100)
    a = probe_sample(labels, 30, seed=3)
    b = probe_sample(labels, 30, seed=3)
    assert all(torch.equal(x, z) for x, z in zip(a, b))
    assert len(a[0]) == 15 and len(a[1]) == 15 and not set(a[0].tolist()) & set(a[1].tolist())
    assert sum(map(len, probe_sample(labels[:6], 512, seed=3))) == 6


def test_rank_paths_best_first_ties_keep_order():
    seeds = [PathRecord(id=f"p{i}", task=f"t{i}", parent_id=None, components={}, hparams={}) for i in range(4)]
    ranked = rank_paths(seeds, {"p0": 0.2, "p1": 0.9, "p2": 0.2, "p3": 0.5})
    assert [p.id for p in ranked] == ["p1", "p3", "p0", "p2"]


class _Pooled(torch.nn.Module):
    """A stand-in path model: features = mean brightness per 2x2 grid cell (or of the whole image)."""

    def __init__(self, grid: int) -> None:
        super().__init__()
        self.grid = grid

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(x.mean(1, keepdim=True), self.grid).flatten(1)


def test_probe_scores_informative_features_higher():
    """Quadrant images: features that see where the bright square is separate the classes; the
    global brightness (the same for every class) does not."""
    from mupath.data.synthetic import quadrant_task
    task = quadrant_task("q", n=200, classes=4)
    images = torch.from_numpy(task.train.images).permute(0, 3, 1, 2)
    labels = torch.from_numpy(task.train.labels)
    seeds = [PathRecord(id=i, task=i, parent_id=None, components={}, hparams={"ds_image_size": 8})
             for i in ("grid", "global")]
    models = {"grid": _Pooled(2), "global": _Pooled(1)}
    scores = probe_scores(seeds, lambda p: models[p.id], images, labels, 4, 200, seed=0, default_size=8)
    assert scores["grid"] == 1.0
    assert scores["global"] < 0.5
    assert [p.id for p in rank_paths(seeds[::-1], scores)] == ["grid", "global"]


def test_evolve_with_probe_tries_parents_best_first(tiny_system, digits_small):
    """seed_order=probe: the commit records every seed's probe score, best first, and the first
    candidate's parent is the best-ranked seed."""
    from mupath.data.synthetic import quadrant_task
    system = tiny_system
    for task in (digits_small, quadrant_task("quadrants", n=200, classes=4)):
        system.add_task(task)
    system.evolve(["digits", "quadrants"], **TINY_SETTINGS)
    system.add_task(dataclasses.replace(digits_small, name="digits_again"))
    system.evolve(["digits_again"], seed_order="probe", **dict(TINY_SETTINGS, generations=1, candidates=1))
    commit = [c for c in system.manifest.commits() if c["task"] == "digits_again"][-1]
    top = commit["info"]["probe_top"]
    assert {t for t, _ in top} == {"digits", "quadrants", "__root__"}
    assert [v for _, v in top] == sorted((v for _, v in top), reverse=True)
    assert system.manifest.retained()["digits_again"].metrics["parent_task"] == top[0][0]
    with pytest.raises(ConfigError, match="seed_order must be"):
        system.evolve(["digits_again"], seed_order="nearest", **TINY_SETTINGS)
