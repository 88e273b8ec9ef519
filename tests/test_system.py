"""End to end through the public API on tiny real data: no forgetting (bit-exact), transfer between
tasks, reproducibility, the process-pool executor, and the store's bookkeeping."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import TINY_ROOT, TINY_SETTINGS, blobs_task
from mupath import System
from mupath.errors import ConfigError, DataError, ForgettingError, StoreError
from mupath.store.records import ROOT_TASK


@pytest.fixture
def two_task_system(tiny_system, digits_small, parity_task):
    tiny_system.add_task(digits_small)
    tiny_system.add_task(parity_task)
    tiny_system.evolve(["digits", "parity"], **TINY_SETTINGS)
    return tiny_system


def test_evolving_later_tasks_never_changes_earlier_ones(two_task_system, digits_small):
    system = two_task_system
    images = digits_small.test.images
    before = system.logits("digits", images).clone()
    system.add_task(blobs_task("blobs"))
    system.evolve(["blobs"], **TINY_SETTINGS)
    system.evolve(["parity"], **dict(TINY_SETTINGS, seed=3))        # re-evolving another task
    after = System.open(system.path).logits("digits", images)
    assert torch.equal(before, after)
    assert sorted(system.check_immutability()) == ["blobs", "digits", "parity"]


def test_a_changed_shared_component_is_caught(two_task_system):
    system = two_task_system
    retained = system.manifest.retained()
    comps = system.manifest.components()
    cid = retained["digits"].components["block_0"]
    # simulate a bug that rewrites a component in place: the next check must stop with an error
    blob = comps[cid].blob
    tensors = system.blobs.get_tensors(blob)
    tensors = {k: v + 0.01 for k, v in tensors.items()}
    new_blob = system.blobs.put_tensors(tensors)
    with system.manifest.transaction() as con:
        con.execute("UPDATE components SET blob=? WHERE id=?", (new_blob, cid))
    with pytest.raises(ForgettingError, match="changed since its commit"):
        System.open(system.path).check_immutability()


def test_paths_reuse_components_and_locks_follow_retained_paths(two_task_system):
    system = two_task_system
    retained = system.manifest.retained()
    comps = system.manifest.components()
    assert set(retained) == {ROOT_TASK, "digits", "parity"}
    for task in ("digits", "parity"):
        path = retained[task]
        assert comps[path.components["head"]].task == task       # heads are never shared
        assert comps[path.components["norm"]].task == task       # the final norm is always cloned
        assert all(cid in comps for cid in path.components.values())
    # every stored component is used by some retained path (dead ones were collected)
    used = {cid for p in retained.values() for cid in p.components.values()}
    assert set(comps) == used
    assert system.blobs.all_names() >= system.manifest.referenced_blobs()
    status = {s.task: s for s in system.status()}
    for s in status.values():
        assert s.params_owned + s.params_shared > 0
        assert 0 <= s.test_accuracy <= 1
        assert s.test_accuracy == pytest.approx(system.evaluate(s.task))
    # grown from: the other task whose retained path is this one's parent (None for the root or its own)
    task_of = {p.id: t for t, p in retained.items()}
    for task, s in status.items():
        parent = task_of.get(retained[task].parent_id or "")
        assert s.grown_from == (parent if parent not in (None, task, ROOT_TASK) else None)


def test_same_seed_same_retained_paths(tmp_path, digits_small):
    def run(folder):
        system = System.create(tmp_path / folder, **TINY_ROOT)
        system.add_task(digits_small)
        system.evolve(["digits"], **TINY_SETTINGS)
        path = system.manifest.retained()["digits"]
        comps = system.manifest.components()
        return (path.hparams, sorted((s, comps[c].task) for s, c in path.components.items()), path.quality,
                system.logits("digits", digits_small.test.images[:20]))
    a, b = run("a"), run("b")
    assert a[0] == b[0] and a[1] == b[1] and a[2] == b[2]
    assert torch.equal(a[3], b[3])


@pytest.mark.slow
def test_process_pool_executor_trains_candidates_in_workers(tiny_system, digits_small):
    tiny_system.add_task(digits_small)
    report = tiny_system.evolve(["digits"], workers=2, **TINY_SETTINGS)
    entry = report.tasks[0]
    assert entry.improved >= 1 and not entry.failures
    assert 0 <= tiny_system.evaluate("digits") <= 1


def test_iterations_revisit_tasks_and_resume_skips_committed_work(tiny_system, digits_small, parity_task):
    tiny_system.add_task(digits_small)
    tiny_system.add_task(parity_task)
    settings = dict(TINY_SETTINGS, iterations=2, generations=1)
    report = tiny_system.evolve(["digits", "parity"], **settings)
    assert [(e.task, e.iteration) for e in report.tasks] == [("digits", 0), ("parity", 0), ("digits", 1),
                                                             ("parity", 1)]
    again = tiny_system.evolve(["digits", "parity"], **settings)   # finished run: a new run starts
    assert not again.resumed
    commits = tiny_system.manifest.commits()
    assert len(commits) == 8
    # the second visit's bar was the first visit's path: its score can only stay or improve
    first, second = [c for c in commits if c["task"] == "digits"][:2]
    assert second["info"]["score"] >= first["info"]["score"] - 1e-12


def test_predict_accepts_common_image_formats_and_rejects_bad_ones(two_task_system, digits_small):
    system = two_task_system
    grey = digits_small.test.images[:5, :, :, 0]
    ids = system.predict("digits", grey)
    assert ids.dtype == np.int64 and ids.shape == (5,) and ((ids >= 0) & (ids < 10)).all()
    assert np.array_equal(system.predict("digits", grey.astype(np.float32) / 255.0), ids)
    rgb = np.repeat(digits_small.test.images[:5], 3, axis=-1)
    assert np.array_equal(system.predict("digits", rgb), ids)          # grey is repeated to RGB anyway
    with pytest.raises(DataError, match="shaped"):
        system.predict("digits", np.zeros((5, 8)))
    with pytest.raises(DataError, match="NaN"):
        system.predict("digits", np.full((2, 8, 8), np.nan))
    with pytest.raises(ConfigError, match="unknown task"):
        system.predict("nope", grey)


def test_store_errors_are_one_line(tmp_path, tiny_system, digits_small):
    with pytest.raises(StoreError, match="no mupath store"):
        System.open(tmp_path / "missing")
    with pytest.raises(StoreError, match="already exists"):
        System.create(tiny_system.path, **TINY_ROOT)
    tiny_system.add_task(digits_small)
    with pytest.raises(ConfigError, match="already exists"):
        tiny_system.add_task(digits_small)
    with pytest.raises(ConfigError, match="not been evolved"):
        tiny_system.predict("digits", digits_small.test.images)
    with pytest.raises(ConfigError, match="positive integer"):
        tiny_system.evolve(["digits"], generations=0)
    with pytest.raises(ConfigError, match="unknown evolve setting"):
        tiny_system.evolve(["digits"], generation=2)
    with pytest.raises(ConfigError, match="unknown task"):
        tiny_system.evolve(["nope"])


def test_predict_many_shares_prefixes_and_matches_single_predictions(two_task_system, digits_small):
    system = two_task_system
    images = digits_small.test.images[:40]
    many = system.predict(["digits", "parity"], images)
    assert set(many) == {"digits", "parity"}
    for task in ("digits", "parity"):
        assert np.array_equal(many[task], system.predict(task, images))
    other = system.predict_many({"digits": images, "parity": images[:7]})
    assert other["parity"].shape == (7,) and np.array_equal(other["digits"], many["digits"])


def test_shared_forward_runs_each_shared_component_once(two_task_system, digits_small):
    from mupath.model.multipath import shared_forward
    from mupath.train.pipeline import as_nchw, to_model_input
    system = two_task_system
    retained = system.manifest.retained()
    models = {t: system.model(t) for t in ("digits", "parity")}
    calls = {}
    hooks = []
    unique = {id(m.parts[s]): m.parts[s] for m in models.values() for s in m.body}
    for key, module in unique.items():
        hooks.append(module.register_forward_hook(
            lambda m, i, o, key=key: calls.__setitem__(key, calls.get(key, 0) + 1)))
    size = system.image_size("digits")
    x = to_model_input(as_nchw(digits_small.test.images[:10]), size)
    # a body component runs once per distinct prefix (embedding ids + body ids up to it) that ends in it
    expected: dict[int, set] = {}
    for t, m in models.items():
        ids = retained[t].components
        prefix = tuple(ids[s] for s in m.embed_slots)
        for s in m.body:
            prefix += (ids[s],)
            expected.setdefault(id(m.parts[s]), set()).add(prefix)
    if system.image_size("parity") == size:
        with torch.no_grad():
            out = shared_forward(models, {t: retained[t].components for t in models}, x)
        assert calls == {k: len(v) for k, v in expected.items()}
        assert torch.equal(out["digits"], models["digits"](x))
    for h in hooks:
        h.remove()


def test_shared_check_scope_rechecks_only_tasks_sharing_touched_components(tiny_system, monkeypatch):
    """check_scope="shared": after a commit only the tasks whose paths use a non-root component of the
    committed task's new or replaced path are re-run; "all" re-runs every other task."""
    from mupath.search.task_search import sharing_tasks
    from mupath.store.records import PathRecord
    retained = {t: PathRecord(f"p{t}", t, None, comps, {}, 0.0, {}) for t, comps in {
        "a": {"block_0": "root-block_0", "block_1": "ca1"},
        "b": {"block_0": "ca1", "block_1": "cb1"},
        "c": {"block_0": "root-block_0", "block_1": "cc1"}}.items()}
    assert sharing_tasks(retained, {"ca1", "root-block_0"}, "a") == {"b"}      # root components never count
    assert sharing_tasks(retained, {"cc1"}, "c") == set()

    calls = []
    from mupath.store.store import Store
    real = Store.check_immutability
    monkeypatch.setattr(Store, "check_immutability",
                        lambda self, exclude=None, tasks=None: calls.append((exclude, tasks)) or real(self, exclude, tasks))
    for name, seed in (("x", 0), ("y", 1)):
        tiny_system.add_task(blobs_task(name, n=90, seed=seed))
    tiny_system.evolve(["x", "y"], **dict(TINY_SETTINGS, check_scope="shared"))
    after_y = calls[-1]
    expected = sharing_tasks(tiny_system.manifest.retained(),
                             set(tiny_system.manifest.retained()["y"].components.values()), "y")
    assert after_y == ("y", expected)
    tiny_system.evolve(["y"], **dict(TINY_SETTINGS, seed=5))                  # default scope: all
    assert calls[-1] == ("y", None)
    with pytest.raises(ConfigError, match="check_scope"):
        tiny_system.evolve(["y"], check_scope="some")


def test_random_root_components_are_cloned_by_default_and_shared_under_mutation(tmp_path, digits_small):
    """clone_root=auto on a random-init root: no evolved path shares a root component frozen; with
    clone_root=mutation (the rule for pretrained roots) some stay shared."""
    root_ids = {}
    for mode in ("auto", "mutation"):
        system = System.create(tmp_path / mode, **TINY_ROOT)
        system.add_task(digits_small)
        system.evolve(["digits"], clone_root=mode, **TINY_SETTINGS)
        root_ids[mode] = set(system.manifest.retained()[ROOT_TASK].components.values()) & set(
            system.manifest.retained()["digits"].components.values())
    assert root_ids["auto"] == set()
    assert root_ids["mutation"]
    with pytest.raises(ConfigError, match="clone_root must be"):
        system.evolve(["digits"], clone_root="never", **TINY_SETTINGS)
