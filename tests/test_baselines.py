"""Baselines of the quality benchmark: each trains exactly the components it should, spends exactly the
training-image budget it was given, leaves the shared root untouched, and the sequential baseline
reports forgetting as the largest drop of an earlier task's test accuracy."""
from __future__ import annotations

import random

import pytest

from mupath.runtime.jobs import SlotInit
import torch

from conftest import TINY_ROOT
from mupath import System
from mupath.errors import ConfigError
from mupath.model.root import RootSpec, create_root, cut_root
from mupath.search.baselines import (budgets_from_commits, forgetting, parse_method, plan_baseline,
                                     run_sequential, split_budget, train_store_baselines)
from mupath.search.ids import id_stream
from mupath.search.settings import make_settings
from mupath.store.records import ROOT_TASK

SETTINGS = dict(steps_per_validation=15, batch_size=32, val_limit=200)
BUDGET = 32 * 30     # 30 steps of 32 images -> 2 validations of 15 steps

EXPECTED_TRAINABLE = {   # depth-2 tiny root
    "finetune-all": {"patch_embed", "cls_token", "pos_embed", "block_0", "block_1", "norm", "head"},
    "freeze-bottom:1": {"block_1", "norm", "head"},
    "adapters:8": {"adapter_0", "adapter_1", "norm", "head"},
}


def _plan(system, method, task="digits"):
    return plan_baseline(system.store, task, method, make_settings(**SETTINGS), id_stream(random.Random(0)), random.Random(0))


def test_methods_parse_and_bad_names_fail():
    assert parse_method("finetune-all") == ("finetune-all", None)
    assert parse_method("freeze-bottom:3") == ("freeze-bottom", 3)
    assert parse_method("adapters:32") == ("adapters", 32)
    assert parse_method("sequential") == ("sequential", None)
    for bad in ("finetune", "freeze-bottom", "adapters:0", "finetune-all:2", "freeze-bottom:5"):
        with pytest.raises(ConfigError):
            parse_method(bad, depth=4)


def test_split_budget_spends_exactly_the_budget():
    assert split_budget(BUDGET, 32, 15) == (15, 2)
    assert split_budget(64 * 4800, 64, 100) == (100, 48)       # the evolution's interval is kept
    spv, v = split_budget(64 * 1000, 64, None, 7)               # 7 does not divide 1000: nearest divisor 5
    assert (spv, v) == (200, 5) and spv * v * 64 == 64 * 1000
    with pytest.raises(ConfigError):
        split_budget(10, 32, 15)


@pytest.mark.parametrize("method", sorted(EXPECTED_TRAINABLE))
def test_plans_train_exactly_their_components(tiny_system, digits_small, method):
    tiny_system.add_task(digits_small)
    plan = _plan(tiny_system, method)
    root = tiny_system.manifest.retained()[ROOT_TASK]
    trainable = {s.slot for s in plan.slots if s.trainable}
    assert trainable == EXPECTED_TRAINABLE[method]
    assert plan.path.parent_id == root.id
    for s in plan.slots:
        if s.trainable and s.slot in root.components:
            assert s.init == SlotInit.copy(root.components[s.slot]) and s.id != root.components[s.slot]
        elif s.trainable:
            assert s.init.kind == "fresh"                                  # fresh head / identity adapters
        else:
            assert s.id == root.components[s.slot]                   # the shared frozen root component
    if method.startswith("adapters"):
        assert plan.path.hparams["adapter_layers"] == [0, 1] and plan.path.hparams["adapter_dim"] == 8
    else:
        assert plan.path.hparams["adapter_layers"] == []


def test_store_baselines_spend_the_budget_and_leave_the_root_unchanged(tmp_path, digits_small, parity_task):
    systems = {m: System.create(tmp_path / m.replace(":", "-"), **TINY_ROOT) for m in EXPECTED_TRAINABLE}
    for s in systems.values():
        s.add_task(digits_small)
        s.add_task(parity_task)
    budgets = {"digits": BUDGET, "parity": 2 * BUDGET}
    out = train_store_baselines({m: s.store for m, s in systems.items()}, ["digits", "parity"], budgets, workers=1, **SETTINGS)
    fresh_root = {slot: tensors for slot, _, _, tensors in cut_root(create_root(RootSpec.from_json(
        systems["finetune-all"].manifest.get_meta("root"))))}
    for method, system in systems.items():
        assert [r.task for r in out[method]] == ["digits", "parity"]
        comps = system.manifest.components()
        retained = system.manifest.retained()
        root = retained[ROOT_TASK]
        for r in out[method]:
            assert r.images == r.budget_images == budgets[r.task]
            assert set(r.trainable) == EXPECTED_TRAINABLE[method]
            path = retained[r.task]
            assert path.parent_id == root.id
            for slot, cid in path.components.items():
                owner = comps[cid].task
                assert owner == (r.task if slot in EXPECTED_TRAINABLE[method] else ROOT_TASK)
            assert 0.0 <= r.test_accuracy <= 1.0
        for slot, cid in root.components.items():                # shared root components never change
            stored = system.blobs.get_tensors(comps[cid].blob)
            assert all(torch.equal(stored[k], v) for k, v in fresh_root[slot].items())
        commits = system.manifest.commits()
        assert budgets_from_commits(system.store) == budgets
        assert all(c["info"]["budget_images"] == c["info"]["train_images"] for c in commits)
        status = {s.task: s for s in system.status()}
        assert status["digits"].test_accuracy == pytest.approx(system.evaluate("digits"))
        assert status["digits"].accounted_params > 0
        assert sorted(system.check_immutability()) == ["digits", "parity"]
    # finetune-all trains a copy of every root component: the copies moved away from the root
    ft = systems["finetune-all"]
    comps = ft.manifest.components()
    block = comps[ft.manifest.retained()["digits"].components["block_0"]]
    trained = ft.blobs.get_tensors(block.blob)
    assert any(not torch.equal(trained[k], v) for k, v in fresh_root["block_0"].items())


def test_forgetting_is_the_largest_drop_after_other_tasks():
    history = [("a", {"a": 0.9}), ("b", {"a": 0.7, "b": 0.8}), ("c", {"a": 0.8, "b": 0.75, "c": 0.6}),
               ("a", {"a": 0.95, "b": 0.75, "c": 0.6}), ("d", {"a": 0.9, "b": 0.7, "c": 0.6, "d": 0.5})]
    worst, per_task = forgetting(history)
    assert per_task["a"] == pytest.approx(0.2)          # 0.9 -> 0.7 (a's own retraining resets its reference)
    assert per_task["b"] == pytest.approx(0.1)
    assert per_task["c"] == 0.0 and per_task["d"] == 0.0
    assert worst == pytest.approx(0.2)
    assert forgetting([]) == (0.0, {})


def test_sequential_retests_earlier_tasks_and_reports_the_largest_drop(tiny_system, digits_small, parity_task):
    tiny_system.add_task(digits_small)
    tiny_system.add_task(parity_task)
    budgets = {"digits": BUDGET, "parity": BUDGET}
    res = run_sequential(tiny_system.store, ["digits", "parity"], budgets, **SETTINGS)
    assert [t for t, _ in res.history] == ["digits", "parity"]
    assert set(res.history[1][1]) == {"digits", "parity"}
    assert res.images == budgets
    assert res.after_own["digits"] == res.history[0][1]["digits"]
    assert res.final == res.history[1][1]
    expected = max(0.0, res.after_own["digits"] - res.final["digits"])
    assert res.forgetting == pytest.approx(expected)
    assert res.forgetting_per_task["digits"] == pytest.approx(expected)
    acc = res.accounted_params()
    assert acc["digits"] == pytest.approx(res.body_params / 2 + res.head_params["digits"])
    assert res.total_params == res.body_params + sum(res.head_params.values())
    assert tiny_system.manifest.commits() == []        # nothing was written to the store


# ---- lora:R through peft ----------------------------------------------------------------------
def _lora_count(model: torch.nn.Module, targets: list[str], rank: int) -> int:
    """The LoRA weights peft adds on `targets`: A (in -> r, the layer's kernel) and B (r -> out, 1x1)."""
    mods = dict(model.named_modules())
    total = 0
    for name in targets:
        base = mods["parts." + name].base_layer
        if isinstance(base, torch.nn.Linear):
            total += rank * (base.in_features + base.out_features)
        else:
            total += rank * base.in_channels * base.kernel_size[0] * base.kernel_size[1] + rank * base.out_channels
    return total


def test_lora_parses():
    assert parse_method("lora:8") == ("lora", 8)
    for bad in ("lora", "lora:0"):
        with pytest.raises(ConfigError):
            parse_method(bad)


def test_lora_trains_only_lora_weights_and_the_head(tiny_system, digits_small):
    from mupath.search.baselines import baseline_hparams, lora_model, root_unchanged
    from mupath.train.loop import TrainConfig, train_path
    from mupath.train.pipeline import to_model_input
    tiny_system.add_task(digits_small)
    store = tiny_system.store
    built = lora_model(store, 4, 10, 0)
    assert len(built.targets) == 9            # patch_embed's conv + (qkv, proj, fc1, fc2) x 2 blocks
    before = {n: p.detach().clone() for n, p in built.model.state_dict().items()}
    hp = baseline_hparams(store, "digits", "finetune-all", None, make_settings(**SETTINGS))
    data = store.task_data("digits")
    val = (to_model_input(data["validation.x"][:64], 8), data["validation.y"][:64])
    train_path(built.model, built.owned, hp, TrainConfig(5, 1, 32, 0), (data["train.x"], data["train.y"]), val,
               score_of=lambda q: q, bar=float("-inf"))
    changed = {n for n, v in built.model.state_dict().items() if not torch.equal(v, before[n])}
    assert changed and all(".lora_" in n or n.startswith("parts.head.") for n in changed)
    assert any(".lora_A." in n for n in changed) and any(".lora_B." in n for n in changed)
    assert any(n.startswith("parts.head.") for n in changed)
    assert root_unchanged(store, built.modules)
    trainable = sum(p.numel() for m in built.owned.values() for p in m.parameters())
    assert trainable == _lora_count(built.model, built.targets, 4) + 330     # head: 32 x 10 + 10


def test_lora_baseline_spends_the_budget_and_counts_parameters(tiny_system, digits_small, parity_task):
    from mupath.search.baselines import lora_model, run_lora
    tiny_system.add_task(digits_small)
    tiny_system.add_task(parity_task)
    budgets = {"digits": BUDGET, "parity": BUDGET}
    res = run_lora(tiny_system.store, ["digits", "parity"], budgets, 4, **SETTINGS)
    assert res.images == budgets and res.root_unchanged == {"digits": True, "parity": True}
    comps = tiny_system.manifest.components()
    root = tiny_system.manifest.retained()[ROOT_TASK]
    assert res.body_params == sum(comps[c].num_params for c in root.components.values())
    built = lora_model(tiny_system.store, 4, 2, 0)
    assert res.lora_params["parity"] == _lora_count(built.model, built.targets, 4)
    assert res.head_params == {"digits": 330, "parity": 66}
    acc = res.accounted_params()       # µ2Net rule: the frozen root costs |root| / 2 to each task
    assert acc["parity"] == pytest.approx(res.body_params / 2 + res.lora_params["parity"] + 66)
    assert res.total_params == res.body_params + sum(res.lora_params.values()) + 396
    assert all(0.0 <= a <= 1.0 for a in res.test_accuracy.values())
    assert tiny_system.manifest.commits() == []


def test_lora_on_efficientnet_leaves_depthwise_and_same_padding_convs_alone(tmp_path):
    from conftest import blobs_task
    from mupath.model.path_model import PathModel
    from mupath.search.baselines import _root_body, lora_model, run_lora
    system = System.create(tmp_path / "e", root="tf_efficientnet_lite0", image_size=32)
    system.add_task(blobs_task("a", n=90, seed=0))
    built = lora_model(system.store, 2, 4, 0)
    mods = dict(built.model.named_modules())
    assert built.targets and all(mods["parts." + t].base_layer.groups == 1 for t in built.targets)
    assert not any("conv_dw" in t or t.startswith("stem") for t in built.targets)
    assert "neck.conv" in built.targets
    x = torch.rand(4, 3, 32, 32)
    plain = PathModel(_root_body(system.store, trainable=False), system.store.family).eval()
    with torch.no_grad():           # lora_B starts at zero: the LoRA model starts as the root
        assert torch.allclose(built.model.eval().features(x), plain.features(x), atol=1e-5)
    res = run_lora(system.store, ["a"], {"a": 32}, 2, steps_per_validation=1, batch_size=16, val_limit=30)
    assert res.images == {"a": 32} and res.root_unchanged == {"a": True}


def test_the_timed_recipe_alone_keeps_the_roots_neck_frozen(tmp_path):
    """benchmarks/timed.build(frozen_neck=True) is the search's every-block adapters recipe: adapters and a
    head train, the neck is the root's own frozen component; without it the adapters baseline trains a copy."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.timed import build
    from conftest import blobs_task
    system = System.create(tmp_path / "e", root="tf_efficientnet_lite0", image_size=32)
    system.add_task(blobs_task("a", n=90, seed=0))
    store = system.store
    depth = store.depth
    alone = build(store, "a", "adapters:4", 0, frozen_neck=True)
    assert set(alone.owned) == {f"adapter_{i}" for i in range(depth)} | {"head"}
    assert not any(p.requires_grad for p in alone.modules["neck"].parameters())
    neck_id = system.manifest.retained()[ROOT_TASK].components["neck"]
    root_neck = store.blobs.get_tensors(store.manifest.components()[neck_id].blob)
    assert all(torch.equal(v, alone.modules["neck"].state_dict()[k]) for k, v in root_neck.items())
    assert "neck" in build(store, "a", "adapters:4", 0).owned


def test_the_font_letters_task_has_26_balanced_classes_and_the_digits_keep_their_classes_and_sections():
    """benchmarks/defaults.font_task: the letters are a second font task of 26 classes, each drawn equally
    often, named A-Z; the digits task keeps its 10 balanced classes named 0-9 and its benchmark sections'
    names (its images are checked by hash on one machine when the renderer changes, never pinned here)."""
    import sys
    from pathlib import Path

    import numpy as np
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.defaults import GLYPHS, font_digits, font_glyphs, font_task
    from benchmarks.wallclock import section_name  # the digits' sections keep their names

    letters = font_task(260, "font_letters")
    assert letters.name == "font_letters" and list(letters.class_names) == list("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
    x, y = font_glyphs(GLYPHS["font_letters"], 78)
    assert x.shape == (78, 28, 28) and np.bincount(y, minlength=26).tolist() == [3] * 26
    dx, dy = font_digits(30)
    assert np.bincount(dy).tolist() == [3] * 10 and not np.array_equal(dx, x[:30])
    assert list(font_task(100).class_names) == [str(d) for d in range(10)]
    assert section_name(False, "font_digits") == "wallclock" and section_name(True, "font_digits") == "wallclock-stream"
    assert section_name(False, "font_letters") == "wallclock-font_letters"
