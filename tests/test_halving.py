"""Successive halving under a wall-clock budget (issue 32): the schedule's arithmetic, the budget's
spelling, and a task iteration run as rungs (recipes first, survivors trained on from their own
weights), with the hard parameter cap. No assertion here times anything: the rung structure is
checked, never how long it took (benchmarks measure that)."""
from __future__ import annotations

import math

import pytest
from conftest import TINY_ROOT, TINY_SETTINGS
from typer.testing import CliRunner

from mupath import System
from mupath.cli.main import app
from mupath.errors import ConfigError, MupathError
from mupath.runtime.jobs import CandidateResult
from mupath.search import halving
from mupath.search.halving import SURVIVOR_PASSES, first_rung_size, next_rung, rung_counts, survivor_cap
from mupath.search.settings import EvolveSettings, parse_duration


def test_rung_counts_halve_down_to_one():
    assert rung_counts(9, 3) == [9, 3, 1]
    assert rung_counts(10, 3) == [10, 4, 2, 1]
    assert rung_counts(1, 2) == [1]


def test_the_last_survivor_is_capped_in_passes_where_that_is_more():
    """A small task keeps eta fixed-schedule candidates' steps; a large one may train SURVIVOR_PASSES
    passes over its images (fashion_mnist's 54,000 at batch 64: far past the 900 fixed steps)."""
    assert survivor_cap(900, 1293, 64) == 900                      # digits: 16 passes are 324 steps
    assert survivor_cap(900, 3600, 64) == 900                      # mnist: 16 passes are the fixed cap
    assert survivor_cap(900, 54000, 64) == SURVIVOR_PASSES * 54000 // 64
    assert survivor_cap(900, 0, 64) == 900 and survivor_cap(90, 100, 0) == SURVIVOR_PASSES * 100


def test_first_rung_is_the_largest_whose_schedule_fits():
    # 1 s per first-rung candidate, eta 3, one worker: n0 = 9 costs 9 + 3*3 + 1*9 = 27 s
    assert first_rung_size(27.0, 1.0, 3, 1) == 9
    assert first_rung_size(26.9, 1.0, 3, 1) < 9
    assert first_rung_size(15.0, 1.0, 3, 3) == 9                    # three workers: 3 + 3 + 9 s
    assert first_rung_size(5.0, 1.0, 3, 1) == 2                     # 2 + 1*3 s: two first-rung candidates
    assert first_rung_size(0.0, 1.0, 3, 1) == 1                     # nothing fits: the first wave is rung 0
    assert first_rung_size(10.0, 0.0, 3, 1) == halving.MIN_FIRST_RUNG    # nothing measured yet
    assert first_rung_size(1e9, 1.0, 3, 1) == halving.MAX_FIRST_RUNG


def test_a_rung_is_cut_to_what_fits():
    """Rung k trains each survivor eta^k times the first rung's seconds; survivors that do not fit are
    cut, and a rung of one (the last) trains for all the time that is left."""
    full = next_rung(1, 3, 1.0, 3, seconds_left=100.0, workers=1)
    assert full is not None and (full.candidates, full.train_seconds, full.seconds) == (3, 3.0, 9.0)
    cut = next_rung(1, 3, 1.0, 3, seconds_left=6.5, workers=1)      # 3 s per survivor: two fit
    assert cut is not None and cut.candidates == 2
    last = next_rung(2, 1, 1.0, 3, seconds_left=50.0, workers=1)    # one survivor: all of the 50 s
    assert last is not None and (last.candidates, last.train_seconds) == (1, 50.0)
    short = next_rung(1, 3, 1.0, 3, seconds_left=2.0, workers=1)    # not even two fit: one, for what is left
    assert short is not None and (short.candidates, short.train_seconds) == (1, 2.0)
    assert next_rung(2, 1, 1.0, 3, seconds_left=0.5, workers=1) is None   # not even a tenth of 9 s


def test_a_rung_pays_each_candidates_fixed_cost_once():
    """A candidate's build, fill and validations (`overhead`) are paid once per candidate, not per second
    of training: with 2 s of them, 3 survivors of 3 s fit in 15 s, 2 in 10 s; the last rung trains for
    what is left after its overhead."""
    assert next_rung(1, 3, 1.0, 3, seconds_left=15.0, workers=1, overhead=2.0).candidates == 3
    assert next_rung(1, 3, 1.0, 3, seconds_left=10.0, workers=1, overhead=2.0).candidates == 2
    last = next_rung(2, 1, 1.0, 3, seconds_left=7.0, workers=1, overhead=2.0)
    assert last is not None and last.train_seconds == 5.0
    results = [CandidateResult("a", steps=10, train_time=1.0, wall_time=3.0),
               CandidateResult("b", steps=20, train_time=4.0, wall_time=5.0),
               CandidateResult("c", steps=0, wall_time=9.0)]                      # failed: not counted
    assert halving.per_step_seconds(results) == pytest.approx(0.15)
    assert halving.candidate_overhead(results) == pytest.approx(1.5)
    assert halving.least_overhead(results) == pytest.approx(1.0)     # the last survivor's: no fill of its own


def test_the_last_survivor_does_not_plan_for_its_ancestors_cache_fill():
    """A rung 0 of one candidate whose fixed cost was mostly its cache fill (5 s of 6): the last survivor,
    which reads that entry, is planned 1 s of fixed cost, not 6 (it left the fill's seconds unspent)."""
    only = [CandidateResult("a", steps=100, train_time=7.0, wall_time=13.0, fill_time=5.0)]
    assert halving.least_overhead(only) == pytest.approx(1.0)
    assert halving.candidate_overhead(only) == pytest.approx(6.0)       # a rung's other candidates: as measured


@pytest.mark.parametrize("text,seconds", [(90, 90.0), ("90", 90.0), ("90s", 90.0), ("10m", 600.0),
                                          ("1.5h", 5400.0), (" 2 min ", 120.0)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds
    assert EvolveSettings(time_budget=text).time_budget == seconds


@pytest.mark.parametrize("bad", ["ten minutes", "10x", "-5", 0, "0s", True])
def test_bad_durations_are_one_line_errors(bad):
    with pytest.raises(ConfigError, match="time budget"):
        EvolveSettings(time_budget=bad)


def test_cli_rejects_a_bad_budget_in_one_line(tmp_path, digits_small):
    System.create(tmp_path / "s", **TINY_ROOT).add_task(digits_small)
    result = CliRunner().invoke(app, ["evolve", str(tmp_path / "s"), "--time-budget", "soon"])
    assert result.exit_code != 0 and "time budget 'soon' is not a duration" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("bad,match", [(dict(halving_rate=1), "halving_rate"), (dict(max_params=0), "max_params"),
                                       (dict(max_params="a lot"), "max_params")])
def test_bad_halving_settings(bad, match):
    with pytest.raises(ConfigError, match=match):
        EvolveSettings(**bad)


# ---- a task iteration as rungs -----------------------------------------------------------------------
SETTINGS = dict(TINY_SETTINGS, steps_per_validation=5, time_budget=120, clone_root="mutation")
CAP = 0.1     #: of the tiny root's, beyond its share of it: a new head and scale-and-shift fit, deltas and adapters do not


@pytest.fixture(scope="module")
def halved(tmp_path_factory, digits_small, parity_task):
    """digits, then parity, each one task iteration of successive halving with a first rung of at most
    6 (so that the budget, generous for the tiny root, bounds nothing on any machine)."""
    patch = pytest.MonkeyPatch()
    patch.setattr(halving, "MAX_FIRST_RUNG", 6)
    try:
        system = System.create(tmp_path_factory.mktemp("halving") / "store", **TINY_ROOT)
        system.add_task(digits_small)
        system.add_task(parity_task)
        system.evolve(["digits"], **SETTINGS)
        system.evolve(["parity"], **SETTINGS, max_params=CAP)
    finally:
        patch.undo()
    return system


def _tried(system: System, task: str):
    (commit,) = system.history(task)
    return commit, commit.info.tried


def test_the_first_rung_starts_with_the_recipes(halved):
    _, tried = _tried(halved, "digits")
    first = [t for t in tried if t.generation == 0]
    assert len(first) == 6
    recipes = [t.mutations for t in first]                     # in RECIPES: the best-ranked kinds first
    assert recipes[0]["adapters_added"] == [1] and recipes[1]["loras_added"] == [1]      # the top half's blocks
    assert recipes[2]["adapters_added"] == [0, 1] and recipes[3]["loras_added"] == [0, 1]   # then every block
    assert recipes[4]["ssfs_added"] == [0, 1]
    assert set(recipes[5]) <= {"cloned", "opt_lr"}                         # a new head on the parent as it is
    from mupath.search.task_search import RECIPES                  # each at its own learning rate
    assert [r["opt_lr"][1] for r in recipes] == [r.lr for r in RECIPES]
    assert all(not t.data for t in first)                         # no augmentation: the parent's data hparams


def test_the_first_wave_is_ranked_at_equal_steps_where_the_budget_affords_many_passes():
    """Paces measured on the AMD EPYC (the first recipe's seconds per step of 64 images): font_digits at
    90 s affords ~34 passes over its 2,160 images, the stream's mnist at 60 s ~10; the demo's
    fashion_mnist at 180 s ~2 over its 54,000, so it stays ranked at equal seconds."""
    assert halving.affordable_passes(90, 0.0777, 2160, 64) == pytest.approx(34.3, abs=0.1)
    assert halving.ranks_by_steps(90, 0.0777, 2160, 64)
    assert halving.ranks_by_steps(60, 0.1115, 3600, 64)
    assert not halving.ranks_by_steps(180, 0.1034, 54000, 64)
    assert not halving.ranks_by_steps(60, 0.1342, 54000, 64)
    assert halving.ranks_by_steps(180, 0.1034 / 3, 54000, 64) is halving.ranks_by_steps(180, 0.1034, 18000, 64)
    assert halving.affordable_passes(90, 0.0, 2160, 64) == math.inf      # nothing measured: nothing to save


def test_rung_zero_ranks_a_small_tasks_first_wave_at_equal_steps(halved):
    """The tiny root on digits affords hundreds of passes in its budget: every first-wave candidate trains
    `steps_per_validation` steps, however much its steps cost; survivors train on at most eta^(k+1) times
    as many."""
    _, tried = _tried(halved, "digits")
    first = [t for t in tried if t.generation == 0]
    spv, eta = SETTINGS["steps_per_validation"], EvolveSettings().halving_rate
    assert len(first) == 6 and all(t.steps == spv for t in first)
    assert all(t.steps <= spv * eta ** (t.generation + 1) for t in tried if t.generation == 1)


def test_rung_zero_is_equal_in_time_where_the_budget_affords_few_passes(tmp_path, digits_small, monkeypatch):
    """With the threshold out of reach (a large task's case), the first recipe trains `steps_per_validation`
    steps and every other first-wave candidate as many seconds as those took, at most halving_rate times
    as many steps: a candidate whose steps cost less trains more of them."""
    monkeypatch.setattr(halving, "MAX_FIRST_RUNG", 6)
    monkeypatch.setattr(halving, "STEPS_RANKING_PASSES", math.inf)
    system = System.create(tmp_path / "store", **TINY_ROOT)
    system.add_task(digits_small)
    system.evolve(["digits"], **dict(SETTINGS, time_budget=20))
    first = [t for t in _tried(system, "digits")[1] if t.generation == 0]
    spv, eta = SETTINGS["steps_per_validation"], EvolveSettings().halving_rate
    assert first[0].steps == spv
    assert all(1 <= t.steps <= spv * eta for t in first[1:])
    assert any(t.steps != spv for t in first[1:])


def test_a_recipe_trains_a_copy_where_its_parent_has_the_module(tmp_path, digits_small):
    """On another task's path with an adapter before block 1 (the top half of the tiny root), the top-half
    adapter recipe trains a copy of that adapter (the µ2Net clone, starting from the other task's weights)
    instead of being skipped, ranked after the top half's recipe that adds new modules (the low-rank delta)
    and before the every-block ones; the every-block adapter recipe adds one before block 0 and shares the
    parent's frozen one."""
    import dataclasses

    from mupath.search.mutation import wanted_slots
    from mupath.search.task_search import TaskSearch
    from mupath.store.records import ROOT_TASK, CandidateComponent
    system = System.create(tmp_path / "s", **TINY_ROOT)
    system.add_task(digits_small)
    search = TaskSearch(system.store, "digits", 0, EvolveSettings(**SETTINGS), "r")
    root = system.manifest.retained()[ROOT_TASK]
    hp = {**root.hparams, "adapter_layers": [1]}
    kind, config = wanted_slots({**search.space.defaults, **hp}, 3, search.lineage)["adapter_1"]
    search.comps["c-other"] = CandidateComponent("c-other", kind, "adapter_1", config, 10, blob="b")
    search.users["c-other"] = {"other"}                          # another task's: frozen to this one
    other = dataclasses.replace(root, id="p-other", task="other", parent_id=root.id, hparams=hp,
                                components={**root.components, "adapter_1": "c-other"})
    search.paths[other.id] = other
    search.parent_pool = [other]
    recipes = search.recipes()
    moves = [{k: v for k, v in r.plan.mutations.items() if k.endswith("_added") or k == "cloned"} for r in recipes]
    moves = [{k: [x for x in v if x != "norm"] if k == "cloned" else v for k, v in m.items()} for m in moves]
    assert moves[:5] == [{"loras_added": [1], "cloned": []}, {"adapters_added": [], "cloned": ["adapter_1"]},
                         {"adapters_added": [0], "cloned": []}, {"loras_added": [0, 1], "cloned": []},
                         {"ssfs_added": [0, 1], "cloned": []}]
    copy = next(s for s in recipes[1].plan.slots if s.slot == "adapter_1")
    assert copy.trainable and copy.id != "c-other" and copy.init is not None and copy.init.source == "c-other"
    for shared in (recipes[0], recipes[2]):                   # shared as it is, frozen
        assert next(s for s in shared.plan.slots if s.slot == "adapter_1").id == "c-other"
    assert [r.index for r in recipes] == sorted(r.index for r in recipes)    # planned in the order they run


def test_survivors_train_on_from_their_own_weights(halved):
    commit, tried = _tried(halved, "digits")
    rungs = sorted({t.generation for t in tried})
    assert rungs == [0, 1, 2]                                                   # 6 -> 2 -> 1
    assert [sum(t.generation == k for t in tried) for k in rungs] == [6, 2, 1]
    later = [t for t in tried if t.generation > 0]
    assert all(not t.mutations and t.parent_task == "digits" for t in later)   # unmutated children
    assert commit.info.candidates == len(tried) == 9
    retained = halved.store.retained_path("digits")
    assert retained.id in {t.path for t in tried}
    assert halved.evaluate("digits") > 0


def test_no_candidate_under_the_cap_is_a_one_line_error(tmp_path, digits_small):
    system = System.create(tmp_path / "s", **TINY_ROOT)
    system.add_task(digits_small)
    with pytest.raises(MupathError, match="fits under max_params=0.01.*raise --max-params"):
        system.evolve(["digits"], **dict(TINY_SETTINGS, generations=1, candidates=1), max_params=0.01)


def test_the_parameter_cap_holds(halved):
    """The cap bounds what a task adds beyond its share of the root (every task shares the root)."""
    from mupath.search.scoring import accounted_params, compute_users
    _, tried = _tried(halved, "parity")
    retained = halved.store.retained_path("parity")
    comps = halved.manifest.components()
    users = compute_users(halved.manifest.retained())
    roots = [c for c in retained.components.values() if c.startswith("root-")]
    share = accounted_params(roots, "parity", users, {c: comps[c].num_params for c in roots})
    assert retained.metrics["accounted_params"] - share <= CAP * halved.root_params
    over = [t for t in tried if t.failure and "over the cap" in t.failure]
    assert over and all(not t.retained and not t.entered for t in over)          # the cap was tested


def test_a_newcomer_evolve_runs_under_the_default_budget(tmp_path, digits_small, monkeypatch):
    """`mupath evolve STORE` without --time-budget, --generations or --candidates: successive halving
    within NEWCOMER_BUDGET (shortened here); with --generations the fixed schedule, as before."""
    import mupath.cli.main as cli
    monkeypatch.setattr(cli, "NEWCOMER_BUDGET", "20s")
    monkeypatch.setattr(halving, "MAX_FIRST_RUNG", 4)
    system = System.create(tmp_path / "s", **TINY_ROOT)
    system.add_task(digits_small)
    quick = ["--steps-per-validation", "5", "--batch-size", "32", "--val-limit", "200", "--no-log"]
    result = CliRunner().invoke(app, ["evolve", str(tmp_path / "s"), *quick])
    assert result.exit_code == 0, result.output
    assert "time budget: 20s per task iteration" in result.output and "rung 1:" in result.output
    (commit,) = System.open(tmp_path / "s").history("digits")
    assert max(t.generation for t in commit.info.tried) >= 1
    fixed = CliRunner().invoke(app, ["evolve", str(tmp_path / "s"), *quick, "--generations", "1", "--candidates", "1"])
    assert fixed.exit_code == 0 and "time budget" not in fixed.output and "rung" not in fixed.output


def test_a_continuation_starts_from_its_parents_optimizer_state():
    """`train_path` returns the optimiser's state at the best snapshot, and a continuation given it
    goes on counting AdamW's steps from there; state saved for other shapes is refused."""
    import dataclasses

    import torch
    from torch import nn

    from mupath.train.loop import TrainConfig, load_optimizer_tensors, optimizer_tensors, train_path
    torch.manual_seed(0)
    x, y = torch.rand(64, 3, 8, 8), torch.randint(0, 3, (64,))
    hp = {"ds_image_size": 8, "opt_name": "adamw", "opt_lr": 1e-2, "opt_momentum": 0.9, "opt_nesterov": False,
          "opt_lr_warmup_ratio": 0.1}
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 3))
    cfg = TrainConfig(steps_per_validation=5, validations=2, batch_size=16, seed=0, keep_optimizer=True)
    kw = dict(score_of=lambda q: q, bar=float("-inf"))
    first = train_path(model, {"m": model}, hp, cfg, (x, y), (x, y), **kw)
    assert train_path(model, {"m": model}, hp, dataclasses.replace(cfg, keep_optimizer=False), (x, y), (x, y),
                      **kw).best_optimizer is None                    # kept only when asked for
    state = first.best_optimizer
    assert state and {k.split(".", 1)[1] for k in state} == {"step", "exp_avg", "exp_avg_sq"}
    best_step = float(state["0.step"])
    assert best_step in (5.0, 10.0)                          # the state at the best validation
    again = train_path(model, {"m": model}, hp, cfg, (x, y), (x, y), optimizer_state=state, **kw)
    assert float(again.best_optimizer["0.step"]) in (best_step + 5, best_step + 10)
    other = nn.Linear(4, 3)
    opt = torch.optim.AdamW(other.parameters())
    assert not load_optimizer_tensors(opt, list(other.parameters()), state) and not opt.state
    assert optimizer_tensors(opt, list(other.parameters())) == {}


def test_recipes_keep_a_pinned_bottom_frozen(tmp_path, digits_small):
    """A block the user keeps frozen (`_mu_|clone:block_0=0`, or no insertion there) gets no recipe
    module; `--no-adapters` drops the adapter recipe."""
    from mupath.search.task_search import TaskSearch
    system = System.create(tmp_path / "s", **TINY_ROOT)
    system.add_task(digits_small)
    settings = EvolveSettings(**SETTINGS, hparams={"_mu_|clone:block_0": 0.0, "_mu_|add:ssf_1": 0.0},
                              mutate_adapters=False)
    recipes = TaskSearch(system.store, "digits", 0, settings, "r").recipes()
    added = [{k: v for k, v in r.plan.mutations.items() if k.endswith("_added")} for r in recipes]
    assert added == [{"loras_added": [1]}, {}]     # no ssf recipe: block 0 frozen, block 1 pinned
    assert "lora_0" not in recipes[0].plan.path.components and "lora_1" in recipes[0].plan.path.components


def test_a_budgeted_iteration_checks_only_the_tasks_sharing_what_it_touched():
    """check_scope 'auto' (the default) is 'shared' under a time budget and 'all' without one; an explicit
    scope wins."""
    assert EvolveSettings(time_budget=60).shared_check
    assert not EvolveSettings().shared_check
    assert not EvolveSettings(time_budget=60, check_scope="all").shared_check
    assert EvolveSettings(check_scope="shared").shared_check


def test_a_budgeted_iteration_builds_its_recipes_on_the_best_probed_path(halved):
    """seed_order 'auto' (the default) is the relevance probe under a time budget and the shuffle without
    one; parity, the second task, ranks the other paths and its recipes are children of the first; digits,
    the first, whose pool is the root alone, spends nothing on a probe."""
    assert EvolveSettings(time_budget=60).probes_seeds and not EvolveSettings().probes_seeds
    assert not EvolveSettings(time_budget=60, seed_order="shuffle").probes_seeds
    assert EvolveSettings(seed_order="probe").probes_seeds
    commit = [c for c in halved.manifest.commits() if c["task"] == "parity"][-1]
    top = commit["info"]["probe_top"]
    assert {t for t, _ in top} == {"digits", "__root__"}
    assert [v for _, v in top] == sorted((v for _, v in top), reverse=True)
    assert commit["info"]["tried"][0]["parent_task"] == top[0][0]          # the first recipe
    first_task = [c for c in halved.manifest.commits() if c["task"] == "digits"][-1]
    assert "probe_top" not in first_task["info"] and "probe_time" not in first_task["info"]


def test_the_reserve_counts_the_test_images_the_check_will_run(halved):
    """The commit's reserve: this task's test images, plus, with a shared check, only the tasks sharing a
    component with the best path so far; with check_scope 'all' every other task's."""
    from mupath.search.task_search import TaskSearch
    shared = TaskSearch(halved.store, "parity", 1, EvolveSettings(**SETTINGS), "r")
    everyone = TaskSearch(halved.store, "parity", 1, EvolveSettings(**dict(SETTINGS, check_scope="all")), "r")
    shared._forward_s = everyone._forward_s = 0.01              # the measured cost, fixed for the test
    own = halved.store.task_record("parity").sizes["test"]
    others = halved.store.task_record("digits").sizes["test"]
    best = shared.best()
    sharing = shared.checked_tasks(best) if best is not None else set()
    expected = own + (others if "digits" in sharing else 0)
    from mupath.search.task_search import RESERVE_FIXED_S, RESERVE_MARGIN
    assert shared.reserve_seconds() == pytest.approx(RESERVE_MARGIN * 0.01 * expected + RESERVE_FIXED_S)
    assert everyone.reserve_seconds() == pytest.approx(RESERVE_MARGIN * 0.01 * (own + others)
                                                       + RESERVE_FIXED_S)


def test_the_reserves_forward_timing_is_per_image_and_leaves_the_thread_count(halved):
    """The commit's reserve scales a per-image wall time measured the way the check runs (one batch per core
    at once, on CHECK_THREADS threads each): a positive cost well under a second an image, and the caller's
    torch thread count is what it was."""
    import torch

    from mupath.search.task_search import TaskSearch, _forward_seconds
    size = int(TaskSearch(halved.store, "parity", 1, EvolveSettings(**SETTINGS), "r").space.defaults["ds_image_size"])
    threads = torch.get_num_threads()
    per_image = _forward_seconds(halved.store, size)
    assert 0.0 < per_image < 1.0
    assert torch.get_num_threads() == threads


def test_a_candidate_starts_no_step_after_the_iterations_deadline(tmp_path, digits_small):
    """Under a time budget every job carries the task iteration's deadline (less the commit's reserve): a
    candidate whose cost nobody could know beforehand stops there instead of overrunning the budget."""
    import time

    from mupath.runtime.worker import run_job
    from mupath.search.task_search import TaskSearch
    system = System.create(tmp_path / "s", **TINY_ROOT)
    system.add_task(digits_small)
    search = TaskSearch(system.store, "digits", 0, EvolveSettings(**SETTINGS), "r")
    (child,) = search.mutated(1, 0)
    on_time = run_job(search.job(child, 10, 1))
    search.deadline = time.perf_counter() - 1.0
    late = run_job(search.job(child, 10, 1))
    assert on_time.steps == 10 and late.steps == 0
    search.deadline = time.perf_counter() + 100.0
    for forward_s in (0.01, 1.0):          # the reserve as it stands when the job is made
        search._forward_s = forward_s
        expected = time.time() + 100.0 - search.reserve_seconds()
        assert search.job(child, 10, 1).budget.deadline == pytest.approx(expected, abs=0.5)


def test_the_demo_runs_the_budgeted_search_unless_told_the_fixed_schedule():
    """`mupath demo`: the search a user gets from `evolve --time-budget` (no frozen bottom, the recipes),
    DEMO_BUDGETS from the pretrained root (the most for the largest task, under 8 minutes in all) or
    `--time-budget` for every task, one worker; `--fixed-schedule` (and the ViT demo) the demo's
    generations; both at once is a one-line error."""
    from mupath.cli.demo import DEMO_BUDGETS, DEMO_SETTINGS, DEMO_TASKS, demo_budgets, demo_settings, demo_workers
    assert demo_budgets("efficientnet", None, False) == DEMO_BUDGETS and demo_budgets("vit", None, False) is None
    assert set(DEMO_BUDGETS) == set(DEMO_TASKS) and sum(DEMO_BUDGETS.values()) <= 450
    assert max(DEMO_BUDGETS, key=DEMO_BUDGETS.__getitem__) == "fashion_mnist"
    assert demo_budgets("efficientnet", "2m", False) == {t: "2m" for t in DEMO_TASKS}
    assert demo_budgets("efficientnet", None, True) is None
    with pytest.raises(ConfigError, match="drop one of them"):
        demo_budgets("efficientnet", "2m", True)
    budgeted = EvolveSettings(**demo_settings("efficientnet", "2m"))
    assert budgeted.halving and budgeted.time_budget == 120.0 and not budgeted.hparams
    assert budgeted.probes_seeds                       # recipes on the best-probed path: reuse a user can see
    assert demo_settings("efficientnet", None) is DEMO_SETTINGS["efficientnet"]
    assert not EvolveSettings(**DEMO_SETTINGS["efficientnet"]).halving
    assert (demo_workers(None, "2m"), demo_workers(None, None), demo_workers(3, "2m")) == (1, 2, 3)
