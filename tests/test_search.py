"""Mutation, selection and scoring rules of µ2Net."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from mupath.runtime.jobs import SlotInit
from hypothesis import given, strategies as st

from mupath.errors import ConfigError
from mupath.search.mutation import CompInfo, Lineage, incremental, make_child, mutate_hparams, sample_ds_hparams
from mupath.search.scoring import accounted_params, compute_locks, score
from mupath.search.selection import select_parent
from mupath.search.space import customise, default_space, is_data_key, is_model_key
from mupath.store.records import ROOT_TASK, PathRecord

SPACE = default_space(root_depth=3, image_size=16, patch_size=4)
META = {"patch_size": 4, "depth": 3}   # the root's numbers the layout needs (System.root_meta)


@given(st.lists(st.integers(), min_size=1, max_size=12, unique=True), st.data())
def test_incremental_moves_one_step_and_clamps(values, data):
    i = data.draw(st.integers(0, len(values) - 1))
    rng = random.Random(data.draw(st.integers(0, 10 ** 6)))
    new = incremental(values[i], values, rng)
    j = values.index(new)
    assert abs(j - i) <= 1
    assert 0 <= j < len(values)


def test_incremental_is_fair_and_stays_at_the_ends():
    rng = random.Random(0)
    values = [1, 2, 3, 4, 5]
    moves = Counter(incremental(3, values, rng) for _ in range(4000))
    assert set(moves) == {2, 4} and abs(moves[2] - moves[4]) < 300
    ends = Counter(incremental(1, values, rng) for _ in range(4000))
    assert set(ends) == {1, 2} and abs(ends[1] - ends[2]) < 300   # 50% chance of no change at an end


def test_mutate_hparams_changes_only_model_keys_with_probability_mu():
    rng = random.Random(1)
    parent = dict(SPACE.defaults, _mu_=0.3)
    changes = Counter()
    trials = 3000
    for _ in range(trials):
        child, changed = mutate_hparams(parent, SPACE, rng)
        for key in changed:
            changes[key] += 1
            assert is_model_key(key)
            values = SPACE.ranges[key]
            assert abs(values.index(child[key]) - values.index(parent[key])) == 1
        assert all(child[k] == parent[k] for k in parent if is_data_key(k))
    # a mid-range key moves with probability µ; at an end of its list half of the moves are no-ops
    assert abs(changes["opt_lr_warmup_ratio"] / trials - 0.3) < 0.04       # 0.05 is mid-list
    assert abs(changes["num_layers"] / trials - 0.15) < 0.04               # default is the list's end


def test_data_hparams_are_shared_per_generation_and_follow_the_best():
    rng = random.Random(0)
    best = dict(SPACE.defaults, ds_flip_left_right=True, opt_lr=0.5)
    ds = sample_ds_hparams(best, SPACE, rng)
    assert all(is_data_key(k) for k in ds)
    assert set(ds) == {k for k in SPACE.defaults if is_data_key(k)}
    flips = Counter(sample_ds_hparams(best, SPACE, rng)["ds_flip_left_right"] for _ in range(2000))
    assert 0.05 < flips[False] / 2000 < 0.15   # moved with prob µ=0.2, half of moves clamp


def _path(pid, task, comps, parent=None, quality=0.5, hp=None):
    return PathRecord(pid, task, parent, comps, dict(SPACE.defaults, **(hp or {})), quality)


def test_select_parent_prefers_own_best_and_decays_with_offspring():
    own = [_path("a", "t", {}), _path("b", "t", {})]
    scores = {"a": 0.9, "b": 0.5}
    seeds = [_path("s", "u", {})]
    rng = random.Random(0)
    picks = Counter(select_parent(own, scores, list(seeds), Counter(), "t", rng).id for _ in range(200))
    assert picks == {"a": 200}       # 0.5 ** 0 = 1: the best own path is always accepted first
    offspring = Counter({("a", "t"): 1})
    picks = Counter(select_parent(own, scores, list(seeds), offspring, "t", rng).id for _ in range(4000))
    assert abs(picks["a"] / 4000 - 0.5) < 0.04
    assert abs(picks["b"] / 4000 - 0.5) < 0.04


def test_select_parent_falls_back_to_seeds_then_uniform():
    seeds = [_path("s1", "u", {}), _path("s2", "v", {})]
    rng = random.Random(0)
    chosen = select_parent([], {}, seeds, Counter(), "t", rng)
    assert chosen.id == "s1" and [s.id for s in seeds] == ["s2", "s1"]   # accepted seed rotates to the end
    pool = [_path(f"q{i}", "u", {}) for i in range(5)]
    fresh = Counter({("q0", "t"): 60, ("q1", "t"): 60})       # q0, q1 (almost) never accepted: q2 is
    assert select_parent([], {}, pool, fresh, "t", random.Random(1)).id == "q2"
    # the reference's rotation past the accepted path: those after it first, it and those before it last
    assert [p.id for p in pool] == ["q3", "q4", "q0", "q1", "q2"]
    tired = Counter({("s1", "t"): 60, ("s2", "t"): 60})
    picks = Counter(select_parent([], {}, list(seeds), tired, "t", rng).id for _ in range(2000))
    assert set(picks) == {"s1", "s2"} and abs(picks["s1"] - picks["s2"]) < 250


def test_accounted_params_divide_shared_components_by_their_users():
    retained = {
        ROOT_TASK: _path("root", ROOT_TASK, {"block_0": "r0", "block_1": "r1"}),
        "a": _path("pa", "a", {"block_0": "r0", "block_1": "a1", "head": "ha"}),
        "b": _path("pb", "b", {"block_0": "r0", "block_1": "a1", "head": "hb"}),
    }
    locks = compute_locks(retained)
    sizes = {"r0": 100, "r1": 100, "a1": 60, "ha": 10, "hb": 10, "new": 7}
    # r0 used by a and b (root lock ignored) -> 50; a1 shared by a, b -> 30; own head 10
    assert accounted_params(["r0", "a1", "ha"], "a", locks, sizes) == 50 + 30 + 10
    # a third task reusing r0 and a1: divided by 3; a fresh component counts fully
    assert accounted_params(["r0", "a1", "new"], "c", locks, sizes) == pytest.approx(100 / 3 + 20 + 7)
    # a root component nobody else uses counts fully
    assert accounted_params(["r1"], "c", locks, sizes) == 100
    assert score(0.8, 50, 100, 0.9) == pytest.approx(0.8 * 0.9 ** 0.5)
    assert score(0.8, 50, 100, 1.0) == 0.8


def _lineage(comps, paths, root, trainable_ids):
    counter = iter(range(10 ** 6))
    return Lineage(paths, comps, lambda cid: cid in trainable_ids, root, lambda p: f"{p}{next(counter)}",
                   meta=META)


def _root_fixture():
    comps = {cid: CompInfo(cid, kind, slot, cfg, 10, blob="x" * 64) for cid, kind, slot, cfg in [
        ("rp", "patch_embed", "patch_embed", {"dim": 8}), ("rc", "cls_token", "cls_token", {"dim": 8}),
        ("rq", "pos_embed", "pos_embed", {"dim": 8, "grid": [4, 4]}), ("r0", "block", "block_0", {"dim": 8}),
        ("r1", "block", "block_1", {"dim": 8}), ("r2", "block", "block_2", {"dim": 8}),
        ("rn", "norm", "norm", {"dim": 8})]}
    root = PathRecord("root", ROOT_TASK, None, {c.slot: c.id for c in comps.values()}, {}, 0.0)
    return comps, root


def test_child_of_another_tasks_path_shares_frozen_parts_and_gets_a_new_head():
    comps, root = _root_fixture()
    comps["hu"] = CompInfo("hu", "head", "head", {"dim": 8, "num_classes": 3}, 27, blob="y" * 64)
    comps["u1"] = CompInfo("u1", "block", "block_1", {"dim": 8}, 10, blob="z" * 64)
    other = PathRecord("pu", "u", "root", dict(root.components, head="hu", block_1="u1"),
                       dict(SPACE.defaults, _mu_=0.1), 0.9)
    lineage = _lineage(comps, {"pu": other, "root": root}, root, trainable_ids=set())
    space = customise(SPACE, {"_mu_": 0.1}, {"_mu_": [], "num_layers": [], "adapter_dim": [], "opt_lr": []})
    clones = Counter()
    for seed in range(300):
        plan = make_child(other, "t", 3, {}, space, lineage, rng=random.Random(seed), mutate_adapters=False)
        by_slot = {s.slot: s for s in plan.slots}
        assert by_slot["head"].init.kind == "fresh" and by_slot["head"].trainable   # never shared
        assert by_slot["norm"].trainable and by_slot["norm"].init == SlotInit.copy("rn")        # always cloned
        assert by_slot["block_1"].id == "u1" or by_slot["block_1"].init == SlotInit.copy("u1")
        for s in plan.slots:
            if not s.trainable:
                assert s.id == other.components[s.slot]                                # shared as-is
            clones[s.slot] += s.trainable
    assert 0.05 < clones["block_0"] / 300 < 0.16     # cloned with probability µ = 0.1


def test_always_cloned_root_components_are_never_shared_but_other_tasks_parts_are():
    """clone_root: a random-init root's components are always cloned (owned, initialised from the
    root), while another task's trained components are still shared unless the mutation fires."""
    comps, root = _root_fixture()
    comps["hu"] = CompInfo("hu", "head", "head", {"dim": 8, "num_classes": 3}, 27, blob="y" * 64)
    comps["u1"] = CompInfo("u1", "block", "block_1", {"dim": 8}, 10, blob="z" * 64)
    other = PathRecord("pu", "u", "root", dict(root.components, head="hu", block_1="u1"),
                       dict(SPACE.defaults, _mu_=0.1), 0.9)
    counter = iter(range(10 ** 6))
    lineage = Lineage({"pu": other, "root": root}, comps, lambda cid: False, root, lambda p: f"{p}{next(counter)}",
                      meta=META, always_clone=frozenset(root.components.values()))
    space = customise(SPACE, {"_mu_": 0.1}, {"_mu_": [], "num_layers": [], "adapter_dim": [], "opt_lr": []})
    shared_u1 = 0
    for seed in range(100):
        plan = make_child(other, "t", 3, {}, space, lineage, rng=random.Random(seed), mutate_adapters=False)
        for s in plan.slots:
            if s.slot in ("block_1", "head"):
                continue
            assert s.trainable and s.id not in comps
            assert s.init == SlotInit.copy(root.components[s.slot])
        shared_u1 += {s.slot: s for s in plan.slots}["block_1"].id == "u1"
    assert 80 < shared_u1 < 100       # another task's block: shared unless cloned (µ = 0.1)


def test_unmutated_child_shares_the_whole_body_and_keeps_the_parents_hparams():
    """head_first's child (mutate=False): every component it may share is shared as it is, only the
    head (new) and the always-cloned slots (norm; a random-init root's parts) are its own, and its
    hyperparameters are the parent's, whatever µ says."""
    comps, root = _root_fixture()
    comps["hu"] = CompInfo("hu", "head", "head", {"dim": 8, "num_classes": 3}, 27, blob="y" * 64)
    comps["u1"] = CompInfo("u1", "block", "block_1", {"dim": 8}, 10, blob="z" * 64)
    other = PathRecord("pu", "u", "root", dict(root.components, head="hu", block_1="u1"),
                       dict(SPACE.defaults, _mu_=1.0, adapter_layers=[]), 0.9)
    space = customise(SPACE, {"_mu_": 1.0}, {"_mu_": []})     # µ stays 1 in the children (not searched)
    for always in (frozenset(), frozenset(root.components.values())):
        counter = iter(range(10 ** 6))
        lineage = Lineage({"pu": other, "root": root}, comps, lambda cid: False, root,
                          lambda p: f"{p}{next(counter)}", meta=META, always_clone=always)
        for seed in range(20):
            plan = make_child(other, "t", 3, {}, space, lineage, rng=random.Random(seed), mutate_adapters=True, mutate=False)
            by_slot = {s.slot: s for s in plan.slots}
            assert set(plan.mutations) <= {"cloned"} and not any(k.startswith("adapter_") for k in by_slot)
            assert {k: v for k, v in plan.path.hparams.items() if k != "num_classes"} == \
                {k: v for k, v in other.hparams.items() if k != "num_classes"}
            assert by_slot["head"].trainable and by_slot["head"].init.kind == "fresh"
            assert by_slot["block_1"].id == "u1" and not by_slot["block_1"].trainable
            owned = {s.slot for s in plan.slots if s.trainable}
            expected = {"head", "norm"} | {c.slot for c in comps.values() if c.id in always}
            assert owned == expected - {"block_1"} and set(plan.mutations.get("cloned", [])) == owned - {"head"}
        # with mutations on, µ = 1 clones and adapts everything
        plan = make_child(other, "t", 3, {}, space, lineage, rng=random.Random(0), mutate_adapters=True)
        assert all(s.trainable for s in plan.slots)


def test_owned_components_are_always_copied_and_depth_and_adapters_follow_hparams():
    comps, root = _root_fixture()
    comps["t0"] = CompInfo("t0", "block", "block_0", {"dim": 8}, 10, scratch="f")
    comps["ht"] = CompInfo("ht", "head", "head", {"dim": 8, "num_classes": 3}, 27, scratch="f")
    comps["a2"] = CompInfo("a2", "adapter", "adapter_2", {"dim": 8, "width": 32}, 5, scratch="f")
    parent = PathRecord("pt", "t", "root", dict(root.components, block_0="t0", head="ht", adapter_2="a2"),
                        dict(SPACE.defaults, adapter_layers=[2], num_layers=3), 0.7)
    lineage = _lineage(comps, {"pt": parent, "root": root}, root, trainable_ids={"t0", "ht", "a2"})
    shallower = customise(SPACE, {"num_layers": 3, "_mu_": 0.3}, {"num_layers": [2, 3]})
    seen_depths = set()
    for seed in range(100):
        plan = make_child(parent, "t", 3, {"ds_image_size": 16}, shallower, lineage, rng=random.Random(seed), mutate_adapters=False)
        by_slot = {s.slot: s for s in plan.slots}
        assert by_slot["block_0"].init == SlotInit.copy("t0") and by_slot["block_0"].id != "t0"
        assert by_slot["head"].init == SlotInit.copy("ht")
        depth = plan.path.hparams["num_layers"]
        seen_depths.add(depth)
        assert ("block_2" in by_slot) == (depth == 3)
        assert ("adapter_2" in by_slot) == (depth == 3)       # adapters above the depth are dropped
    assert seen_depths == {2, 3}


def test_image_size_change_resamples_a_trainable_position_embedding():
    comps, root = _root_fixture()
    lineage = _lineage(comps, {"root": root}, root, trainable_ids=set())
    plan = make_child(root, "t", 3, {"ds_image_size": 20}, SPACE, lineage, rng=random.Random(0), mutate_adapters=False)
    pos = {s.slot: s for s in plan.slots}["pos_embed"]
    assert pos.trainable and pos.init == SlotInit.resample("rq", (5, 5)) and pos.config["grid"] == [5, 5]


def test_bad_search_overrides_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown hyperparameter"):
        customise(SPACE, {"opt_learning_rate": 0.1})
    space = customise(SPACE, {"opt_lr": 0.003})
    assert 0.003 in space.ranges["opt_lr"]


def test_evolve_head_first_tries_the_parents_body_unchanged_first(tiny_system, digits_small):
    """head_first: a new task's first candidate is its first parent with only a new head and the
    always-cloned norm, nothing mutated; with one candidate that child is what gets committed.
    (clone_root="mutation" so that even the root's parts are shared, whichever seed comes first.)"""
    import dataclasses
    from conftest import TINY_SETTINGS
    system = tiny_system
    system.add_task(digits_small)
    system.evolve(["digits"], **TINY_SETTINGS)
    system.add_task(dataclasses.replace(digits_small, name="digits_again"))
    one = dict(TINY_SETTINGS, generations=1, candidates=1, clone_root="mutation", hparams={"_mu_": 0.3})
    system.evolve(["digits_again"], head_first=True, **one)
    retained = system.manifest.retained()
    child = retained["digits_again"]
    parent = next(p for p in retained.values() if p.task == child.metrics["parent_task"])
    comps = system.manifest.components()
    own = {slot for slot, cid in child.components.items() if comps[cid].task == "digits_again"}
    assert own == {"head", "norm"}
    assert {s: c for s, c in child.components.items() if s not in own} == \
        {s: c for s, c in parent.components.items() if s not in own}
    assert set(child.metrics["mutations"]) <= {"cloned"}
    # the same run without head_first, at µ = 0.3, mutates its first child
    system.add_task(dataclasses.replace(digits_small, name="digits_more"))
    system.evolve(["digits_more"], **one)
    mutations = system.manifest.retained()["digits_more"].metrics["mutations"]
    assert set(mutations) - {"cloned"} or len(mutations.get("cloned", [])) > 1


def test_commit_logs_every_candidate_tried_and_marks_the_retained_one(tiny_system, digits_small):
    """info["tried"]: one entry per candidate, in order, with its generation and parent; exactly the
    retained path is marked, its numbers are the committed ones, and only candidates that entered the
    population have a score (a candidate below its bar has no quality)."""
    import json
    from conftest import TINY_SETTINGS
    from mupath.store.log import TriedCandidate
    system = tiny_system
    system.add_task(digits_small)
    settings = dict(TINY_SETTINGS, generations=2, candidates=2)
    system.evolve(["digits"], **settings)
    [commit] = system.store.manifest.commit_records(task="digits")
    tried = commit.info.tried
    best = system.manifest.retained()["digits"]
    assert len(tried) == 4 and [e.generation for e in tried] == [0, 0, 1, 1]
    assert [e.path for e in tried if e.retained] == [best.id]
    kept = next(e for e in tried if e.retained)
    assert kept.entered and kept.quality == best.quality
    assert kept.score == commit.info.score
    assert kept.mutations == best.metrics["mutations"]
    for e in tried:
        assert (e.score is None) == (not e.entered)
        assert e.quality is None or 0.0 <= e.quality <= 1.0
        assert e.owned_params > 0 and e.parent_task in ("__root__", "digits")
    tried = system.manifest.commits(task="digits")[0]["info"]["tried"]
    assert [TriedCandidate.from_json(e) for e in tried] == list(commit.info.tried)   # the JSON round-trips
    json.dumps(tried, allow_nan=False)      # stored as plain JSON


def test_tried_entry_keeps_losers_best_validation_and_never_infinity():
    """A candidate below its bar has quality -inf and no score in the worker's result; its log entry has
    quality None but its best finite validation accuracy; a failed one has neither; all is plain JSON."""
    import json
    from mupath.search.task_search import data_moves, tried_entry
    from mupath.search.mutation import ChildPlan
    from mupath.runtime.jobs import CandidateResult as R
    from mupath.store.records import PathRecord
    plan = ChildPlan(PathRecord("p1", "t", "p0", {}, {}, metrics={"parent_task": "a"}), [], {"cloned": ["block_0"]})
    below = tried_entry(plan, R("p1", improved=False, val_accuracy=float("-inf"), score=0.7,
                                evals=(float("-inf"), 0.61, 0.64), owned_params=5, accounted_params=9.5), 1)
    assert below.quality is None and below.score is None and below.best_val == 0.64
    assert below.generation == 1 and below.parent_task == "a" and below.mutations == {"cloned": ["block_0"]}
    kept = tried_entry(plan, R("p1", improved=True, val_accuracy=0.8, score=0.75, evals=(0.7, 0.8)), 0)
    assert (kept.quality, kept.score, kept.best_val, kept.entered) == (0.8, 0.75, 0.8, True)
    assert kept.data == {}
    moved = tried_entry(plan, R("p1", improved=True, val_accuracy=0.8, score=0.75), 0,
                        data_moves({"ds_crop": False}, {"ds_crop": True, "ds_image_size": 32}, {"ds_image_size": 32}))
    assert moved.data == {"ds_crop": [False, True]}        # the image size stayed at the default
    failed = tried_entry(plan, R("p1", failure="RuntimeError: boom"), 0)
    assert failed.best_val is None and failed.owned_params == 0 and failed.failure == "RuntimeError: boom"
    json.dumps([below.to_json(), kept.to_json(), failed.to_json()], allow_nan=False)


@pytest.mark.parametrize("key, value", [
    ("num_layers", 5), ("num_layers", "abc"), ("num_layers", True), ("opt_name", "rmsprop"), ("opt_lr", -1),
    ("opt_lr", 0), ("opt_lr", [1, 2]), ("adapter_dim", 0), ("adapter_dim", 2.5), ("_mu_", 5),
    ("opt_momentum", 1.0), ("opt_lr_warmup_ratio", -0.1), ("ds_crop", "maybe"), ("ds_image_size", 0),
    ("ds_image_size", 4096), ("ds_hue_delta", 0.9), ("adapter_layers", [-1]), ("opt_lr_schedule", "step")])
def test_bad_hyperparameter_values_are_config_errors_naming_the_key(key, value):
    space = default_space(4, 28, 7)
    with pytest.raises(ConfigError, match=key):
        customise(space, {key: value})


def test_good_values_and_ranges_pass_and_bad_range_entries_fail():
    space = default_space(4, 28, 7)
    new = customise(space, {"opt_lr": 0.003, "num_layers": 2, "opt_nesterov": True, "adapter_layers": [0, 1]},
                    {"opt_momentum": [0.8, 0.9], "ds_crop": []})
    assert new.defaults["opt_lr"] == 0.003 and 0.003 in new.ranges["opt_lr"]
    assert new.ranges["opt_momentum"] == [0.8, 0.9] and "ds_crop" not in new.ranges
    with pytest.raises(ConfigError, match="num_layers=9"):
        customise(space, ranges={"num_layers": [1, 9]})
    with pytest.raises(ConfigError, match="must be a list"):
        customise(space, ranges={"opt_lr": 0.1})


def test_settings_refuse_values_that_are_not_plain_json():
    import numpy as np
    from mupath.search.settings import make_settings
    with pytest.raises(ConfigError, match="convert numpy scalars"):
        make_settings(hparams={"adapter_dim": np.int64(16)})
    with pytest.raises(ConfigError, match="must be a dict"):
        make_settings(ranges=[("opt_lr", [0.1])])


def test_a_child_draws_with_its_own_new_mu():
    """µ moves first and every later draw (hyperparameters, adapters, clones) uses the child's new µ, as
    the reference's `clone` does: a parent at µ = 1 whose child drew µ = 0 mutates nothing else."""
    comps, root = _root_fixture()
    lineage = _lineage(comps, {"root": root}, root, trainable_ids=set())
    space = customise(SPACE, {"_mu_": 1.0}, {"_mu_": [0.0, 1.0]})
    outcomes = Counter()
    for seed in range(60):
        plan = make_child(root, "t", 3, {}, space, lineage, rng=random.Random(seed), mutate_adapters=True)
        child_mu = plan.path.hparams["_mu_"]
        others = set(plan.mutations) - {"_mu_"}
        cloned = set(plan.mutations.get("cloned", [])) - {"norm"}       # the ViT's norm is always cloned
        if child_mu == 0.0:
            assert others <= {"cloned"} and not cloned, plan.mutations   # nothing moved, added or cloned
        else:
            assert others >= {"opt_lr", "adapters_added"} and cloned, plan.mutations   # µ = 1: all fire
        outcomes[child_mu] += 1
    assert outcomes[0.0] > 10 and outcomes[1.0] > 10


def test_siblings_of_a_generation_train_on_the_same_batches(tiny_system, digits_small):
    """The reference feeds every candidate of a generation the same batches: their jobs share the
    generation's seed (batch order and augmentation draws), and another generation gets another."""
    from conftest import TINY_SETTINGS
    from mupath.search.settings import make_settings
    from mupath.search.task_search import TaskSearch
    tiny_system.add_task(digits_small)
    search = TaskSearch(tiny_system.store, "digits", 0, make_settings(**dict(TINY_SETTINGS, candidates=3)), "r")
    seeds = [{search.job(child).seed for child in search.plan_generation(g)} for g in range(2)]
    assert [len(s) for s in seeds] == [1, 1] and seeds[0] != seeds[1]


def test_a_pinned_optimiser_stays_pinned():
    """`--hparam opt_name=X` pins the optimiser unless a range is given too: a child that switched
    optimiser would keep a learning rate sized for the other one."""
    scratch = default_space(4, 32, 4)
    assert scratch.defaults["opt_name"] == "adamw" and scratch.ranges["opt_name"] == ["sgd", "adamw"]
    pinned = customise(scratch, {"opt_name": "sgd"}, {})
    assert pinned.defaults["opt_name"] == "sgd" and "opt_name" not in pinned.ranges
    searched = customise(scratch, {"opt_name": "sgd"}, {"opt_name": ["sgd", "adamw"]})
    assert searched.ranges["opt_name"] == ["sgd", "adamw"]
    rng = random.Random(0)
    for _ in range(200):          # no child of a pinned space ever switches optimiser
        hp, changed = mutate_hparams(dict(pinned.defaults, _mu_=0.3), pinned, rng)
        assert hp["opt_name"] == "sgd" and "opt_name" not in changed


def test_retained_paths_point_at_live_ancestors(tiny_system, digits_small, parity_task):
    """µ2Net's garbage collection re-links every path to its nearest live ancestor: a committed path's
    parent is the root or a path that was retained when it was committed, never a candidate that was
    not; and a new iteration's lineage skips ancestors that died since (their task moved on)."""
    from conftest import TINY_SETTINGS
    from mupath.search.settings import make_settings
    from mupath.search.task_search import TaskSearch
    tiny_system.add_task(digits_small)
    tiny_system.add_task(parity_task)
    tiny_system.evolve(["digits", "parity"], **dict(TINY_SETTINGS, iterations=2))
    manifest = tiny_system.manifest
    committed = {r[0] for r in manifest.db.execute("SELECT path_id FROM commits")} | {"root"}
    for task, path in manifest.retained().items():
        if task != ROOT_TASK:
            assert path.parent_id in committed, (task, path.parent_id)
    search = TaskSearch(tiny_system.store, "digits", 2, make_settings(**TINY_SETTINGS), "r")
    live = {p.id for p in manifest.retained().values()}
    assert all(p.parent_id in live for t, p in search.retained.items() if t != ROOT_TASK)
    # a best path whose parent is a candidate of this iteration (never committed), itself a child of
    # parity's retained path: the commit re-links it to parity's path, the nearest live ancestor
    parity = manifest.retained()["parity"]
    search.paths["cand"] = PathRecord("cand", "digits", parity.id, {}, {})
    best = PathRecord("best", "digits", "cand", dict(search.retained["digits"].components),
                      dict(search.retained["digits"].hparams), 0.5)
    search.scores["best"] = 0.5
    assert search.commit_request(best, 0.0).best.parent_id == parity.id
    orphan = PathRecord("g", "digits", "gone", {}, {})          # its parent died: the walk reaches the root
    search._relink(live, [orphan])
    assert orphan.parent_id == "root"
