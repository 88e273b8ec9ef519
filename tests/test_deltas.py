"""Modules at every depth (issue 31): scale-and-shift (`ssf_i`) and low-rank deltas (`lora_i`) on both
root families. Each is an exact identity when inserted, trains only itself, never changes another
task's logits, is reused by a later task like any component, and exports with the path."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from conftest import TINY_ROOT, TINY_SETTINGS

from mupath import System, Task, load_exported
from mupath.model.components import ComponentSpec, build_component, new_component_tensors, slot_order
from mupath.model.deltas import LowRankDelta, delta_targets
from mupath.model.families.base import BodyLayout
from mupath.model.path_model import PathModel, root_modules
from mupath.model.root import RootSpec, create_root, cut_root
from mupath.search.mutation import make_child
from mupath.search.settings import EvolveSettings
from mupath.search.space import LORA_RANK_VALUES
from mupath.search.task_search import TaskSearch
from mupath.store.verify import verify_store

VIT = RootSpec(name="vit_tiny_patch16_224", weights="random",
               kwargs=dict(img_size=16, patch_size=4, depth=3, embed_dim=32, num_heads=2))
EFFICIENTNET = RootSpec(name="tf_efficientnet_lite0", weights="random", kwargs=dict(img_size=32))


def _model(spec: RootSpec, layout: BodyLayout, seed: int = 0) -> tuple[PathModel, dict[str, torch.nn.Module]]:
    """A random-init root with a random head and the fresh (identity) modules `layout` asks for."""
    torch.manual_seed(seed)
    modules = root_modules(spec, num_classes=5)
    torch.nn.init.normal_(modules["head"].weight)
    configs = {slot: config for slot, _, config, _ in cut_root(create_root(spec))}
    meta = {"patch_size": int(spec.kwargs.get("patch_size", 0))}
    wanted = spec.family.wanted_slots(layout, 5, spec.image_size, root=configs, meta=meta)
    fresh = {}
    for slot, (kind, config) in wanted.items():
        if slot not in modules:
            module = build_component(ComponentSpec(kind, config), spec)
            module.load_state_dict(new_component_tensors(ComponentSpec(kind, config), seed=7, root=spec))
            fresh[slot] = module
    return PathModel({**modules, **fresh}).eval(), fresh


@pytest.mark.parametrize("spec", [VIT, EFFICIENTNET], ids=["vit", "efficientnet"])
def test_each_new_kind_is_an_identity_when_inserted(spec):
    images = torch.rand(4, 3, spec.image_size, spec.image_size) * 2 - 1
    with torch.no_grad():
        plain = _model(spec, BodyLayout(3))[0](images)
        for layout in (BodyLayout(3, ssf=(0, 2)), BodyLayout(3, lora=(0, 1, 2)),
                       BodyLayout(3, adapters=(1,), ssf=(1,), lora=(1,), lora_rank=8)):
            model, fresh = _model(spec, layout)
            assert fresh and set(model.body) >= set(fresh)
            assert torch.equal(model(images), plain), layout


@pytest.mark.parametrize("spec", [VIT, EFFICIENTNET], ids=["vit", "efficientnet"])
def test_a_delta_trains_only_itself_and_changes_its_block(spec):
    model, fresh = _model(spec, BodyLayout(3, ssf=(1,), lora=(1,)))
    delta = fresh["lora_1"]
    assert isinstance(delta, LowRankDelta) and delta.targets == delta_targets(model.parts["block_1"])
    assert delta.targets, "a block with no weight a delta can change"
    for slot, module in model.parts.items():
        module.requires_grad_(slot in fresh)
    images = torch.rand(4, 3, spec.image_size, spec.image_size) * 2 - 1
    model(images).square().mean().backward()
    assert all(p.grad is not None for m in fresh.values() for p in m.parameters())
    assert all(p.grad is None for s, m in model.parts.items() if s not in fresh for p in m.parameters())
    before = model(images).detach()
    block = {k: v.clone() for k, v in model.parts["block_1"].state_dict().items()}
    with torch.no_grad():
        for up in delta.up.values():
            up.normal_()
    assert not torch.allclose(model(images), before)
    assert all(torch.equal(v, block[k]) for k, v in model.parts["block_1"].state_dict().items())


def test_a_shared_block_runs_with_and_without_its_delta_on_threads_at_once():
    """Two paths share one frozen block, one with a delta on it: run on many threads at once (as the
    no-forgetting check and the server do), each keeps its own answer and the block is never written."""
    import concurrent.futures
    model, fresh = _model(VIT, BodyLayout(3, lora=(1,)))
    plain = PathModel({s: m for s, m in model.parts.items() if s != "lora_1"}).eval()
    with torch.no_grad():
        for up in fresh["lora_1"].up.values():
            up.normal_()
    block = {k: v.clone() for k, v in model.parts["block_1"].state_dict().items()}
    images = torch.rand(8, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = {"delta": model(images), "plain": plain(images)}
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            runs = list(pool.map(lambda i: (i % 2, (model if i % 2 else plain)(images)), range(64)))
    assert all(torch.equal(y, expected["delta" if odd else "plain"]) for odd, y in runs)
    assert not torch.equal(expected["delta"], expected["plain"])
    assert all(torch.equal(v, block[k]) for k, v in model.parts["block_1"].state_dict().items())


def test_delta_slots_sit_before_their_block():
    slots = ["block_1", "lora_1", "ssf_1", "adapter_1", "block_0", "lora_0", "head", "stem"]
    assert sorted(slots, key=slot_order) == ["stem", "lora_0", "block_0", "adapter_1", "ssf_1", "lora_1",
                                             "block_1", "head"]


def test_a_delta_merges_into_its_block():
    model, fresh = _model(VIT, BodyLayout(3, lora=(2,), lora_rank=2))
    with torch.no_grad():
        for up in fresh["lora_2"].up.values():
            up.normal_()
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        expected = model(images)
        block = {k: v.clone() for k, v in model.parts["block_2"].state_dict().items()}
        model.parts["block_2"] = fresh["lora_2"].merged(model.parts["block_2"])
        del model.deltas["block_2"]
        assert torch.allclose(model(images), expected, atol=1e-5)
        assert not torch.allclose(model(images), _model(VIT, BodyLayout(3))[0](images))
        model.parts["block_2"].load_state_dict(block)
        assert torch.equal(model(images), _model(VIT, BodyLayout(3))[0](images))     # the block was copied


# ---- in a search ----------------------------------------------------------------------------------------
ON = {"_mu_|add:lora": 1.0, "_mu_|add:ssf": 1.0}
NO_CLONES = {f"_mu_|clone:{s}": 0.0 for s in ("patch_embed", "cls_token", "pos_embed", "block_0", "block_1")}


@pytest.fixture(scope="module")
def grown(tmp_path_factory, digits_small, parity_task):
    """digits evolved with the reference's moves only; then parity with a delta and a scale-and-shift
    inserted before every block. digits' test logits are taken before parity's run."""
    system = System.create(tmp_path_factory.mktemp("deltas") / "store", **TINY_ROOT)
    system.add_task(digits_small)
    system.add_task(parity_task)
    system.evolve(["digits"], **TINY_SETTINGS, hparams=NO_CLONES, mutate_adapters=False)
    images = _test_images(system, "digits")
    before = system.logits("digits", images)
    system.evolve(["parity"], **TINY_SETTINGS, hparams=NO_CLONES | ON, mutate_adapters=False)
    return system, before


def _test_images(system: System, task: str) -> np.ndarray:
    return system.store.task_data(task)["test.x"].permute(0, 2, 3, 1).contiguous().numpy()


def test_deltas_never_change_another_tasks_logits(grown):
    system, before = grown
    path = system.store.retained_path("parity")
    assert {"lora_0", "lora_1", "ssf_0", "ssf_1"} <= set(path.components)
    assert path.hparams["lora_layers"] == [0, 1] and path.hparams["ssf_layers"] == [0, 1]
    assert "lora_layers" not in system.store.retained_path("digits").hparams     # an old-style path
    assert torch.equal(system.logits("digits", _test_images(system, "digits")), before)
    kinds = {system.manifest.components()[c].kind for c in path.components.values()}
    assert {"lora", "ssf"} <= kinds


def test_a_path_with_deltas_is_counted_and_verified(grown):
    system, _ = grown
    status = {s.task: s for s in system.status()}
    comps = system.manifest.components()
    path = system.store.retained_path("parity")
    delta_params = sum(comps[path.components[s]].num_params for s in ("lora_0", "lora_1", "ssf_0", "ssf_1"))
    assert status["parity"].params_owned >= delta_params > 0
    report = verify_store(system.store)
    assert report.healthy, report.summary()


def test_a_later_task_reuses_an_earlier_tasks_delta(grown, tmp_path):
    """A child of parity's path for a new task shares parity's deltas frozen, as any component."""
    system, _ = grown
    parity = system.store.retained_path("parity")
    d = system.store.task_data("parity")
    system.add_task(Task.from_arrays("odd", d["train.x"].permute(0, 2, 3, 1).numpy(), d["train.y"].numpy(),
                                     class_names=["even", "odd"]))
    search = TaskSearch(system.store, "odd", 0, EvolveSettings(**TINY_SETTINGS), "reuse")
    plan = make_child(parity, "odd", 2, {}, search.space, search.lineage, rng=random.Random(0),
                      mutate_adapters=False, mutate=False)
    shared = {s.slot: s for s in plan.slots if not s.trainable}
    for slot in ("lora_0", "lora_1", "ssf_0", "ssf_1"):
        assert shared[slot].id == parity.components[slot]


def test_export_parity_with_deltas_in_the_path(grown, tmp_path):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort
    system, _ = grown
    images = _test_images(system, "parity")
    expected = system.logits("parity", images).numpy()
    system.export("parity", "pt2", tmp_path / "p.pt2")
    pt2 = load_exported(tmp_path / "p.pt2")(torch.from_numpy(images)).numpy()
    assert np.array_equal(pt2.argmax(1), expected.argmax(1)) and np.abs(pt2 - expected).max() <= 1e-5
    system.export("parity", "onnx", tmp_path / "p.onnx")
    session = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    onnx = session.run(None, {"images": images})[0]
    assert np.array_equal(onnx.argmax(1), expected.argmax(1)) and np.abs(onnx - expected).max() <= 1e-4
    result = system.export("parity", "folder", tmp_path / "folder")
    assert not result.timm_loadable
    with torch.no_grad():
        folder = load_exported(tmp_path / "folder")(torch.from_numpy(images)).numpy()
    assert np.abs(folder - expected).max() <= 1e-5


def test_removal_and_self_tuned_insertion(grown):
    """`_mu_|drop:<kind>` removes a kind where a parent has it; a range on `_mu_|add:<kind>` makes the
    probability a hyperparameter each child moves (µ2Net+'s self-tuning); ranks move along their list."""
    system, _ = grown
    parity = system.store.retained_path("parity")
    settings = EvolveSettings(**TINY_SETTINGS, hparams={"_mu_|drop:lora": 1.0, "_mu_": 0.3},
                              ranges={"_mu_|add:ssf": [0.1, 0.2, 0.3]})
    search = TaskSearch(system.store, "parity", 0, settings, "drop")
    tuned, ranks = set(), set()
    for seed in range(30):
        plan = make_child(parity, "parity", 2, {}, search.space, search.lineage, rng=random.Random(seed),
                          mutate_adapters=False)
        assert plan.path.hparams["lora_layers"] == [] and not any(s.startswith("lora_") for s in plan.path.components)
        depth = plan.path.hparams["num_layers"]               # a shallower child has fewer to remove
        assert plan.mutations["loras_removed"] == [i for i in (0, 1) if i < depth]
        tuned.add(plan.path.hparams["_mu_|add:ssf"])
    # parity's own run recorded `_mu_|add:ssf` = 1.0: a child inherits it, or moves it into the range
    assert tuned <= {1.0, 0.3, 0.2} and len(tuned) >= 2
    settings = EvolveSettings(**TINY_SETTINGS, hparams={"_mu_": 0.3})
    search = TaskSearch(system.store, "parity", 0, settings, "rank")
    for seed in range(30):
        plan = make_child(parity, "parity", 2, {}, search.space, search.lineage, rng=random.Random(seed),
                          mutate_adapters=False)
        ranks.add(plan.path.hparams["lora_rank"])
        rank = plan.path.hparams["lora_rank"]          # every delta of the child has the child's rank
        assert all(s.config["rank"] == rank for s in plan.slots if s.slot.startswith("lora_"))
    assert len(ranks) >= 2 and ranks <= set(LORA_RANK_VALUES)


def test_unknown_actions_and_bad_ranges_are_one_line_errors():
    from mupath.errors import ConfigError
    from mupath.search.space import customise, default_space
    space = default_space(2, 8, 4)
    with pytest.raises(ConfigError, match="unknown mutation action"):
        customise(space, {"_mu_|add:block_1": 0.5})
    with pytest.raises(ConfigError, match="numbers in \\[0, 1\\]"):
        customise(space, ranges={"_mu_|add:lora": [0.5, 2]})
    with pytest.raises(ConfigError, match="lora_rank"):
        customise(space, {"lora_rank": 0})
    assert customise(space, {"_mu_|add:lora_1": 0.5, "lora_layers": [0]}).defaults["lora_layers"] == [0]


def test_the_deltas_baseline_puts_a_delta_before_every_block(grown):
    from mupath.search.baselines import parse_method, plan_baseline
    system, _ = grown
    assert parse_method("deltas:4") == ("deltas", 4)
    counter = iter(range(10 ** 6))
    plan = plan_baseline(system.store, "parity", "deltas:4", EvolveSettings(**TINY_SETTINGS),
                         lambda p: f"{p}{next(counter):016x}", random.Random(0))
    slots = {s.slot: s for s in plan.slots}
    assert [s for s in slots if s.startswith("lora_")] == ["lora_0", "lora_1"]
    assert all(slots[f"lora_{i}"].trainable and slots[f"lora_{i}"].config["rank"] == 4 for i in (0, 1))
    assert not any(slots[f"block_{i}"].trainable for i in (0, 1))
