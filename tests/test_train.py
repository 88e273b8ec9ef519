"""Knowledge compartmentalisation inside the loop: only owned components get gradients and updates."""
from __future__ import annotations

import torch

from mupath.model import PathModel, RootSpec, root_modules
from mupath.train.loop import TrainConfig, train_path
from mupath.train.optim import lr_at
from mupath.train.pipeline import augment, to_model_input

SPEC = RootSpec(kwargs=dict(img_size=8, patch_size=4, depth=2, embed_dim=16, num_heads=2))


def _modules():
    return root_modules(SPEC, 3)


def test_only_owned_components_receive_gradients_and_updates():
    modules = _modules()
    owned_slots = ["block_1", "norm", "head"]
    for slot, m in modules.items():
        m.requires_grad_(slot in owned_slots)
    before = {s: {k: v.clone() for k, v in m.state_dict().items()} for s, m in modules.items()}
    model = PathModel(modules)
    x = torch.randint(0, 255, (64, 1, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 3, (64,))
    hp = dict(ds_image_size=8, opt_name="sgd", opt_lr=0.1, opt_momentum=0.9, opt_nesterov=True,
              opt_lr_warmup_ratio=0.1)
    owned = {s: modules[s] for s in owned_slots}
    out = train_path(model, owned, hp, TrainConfig(5, 2, 16, 0), (x, y), (to_model_input(x, 8), y),
                     score_of=lambda q: q, bar=float("-inf"))
    assert out.improved and out.steps == 10 and len(out.evals) == 2
    for slot, m in modules.items():
        same = all(torch.equal(v, before[slot][k]) for k, v in m.state_dict().items())
        if slot in owned_slots:
            assert not same, f"owned {slot} was not trained"
        else:
            assert same, f"shared {slot} changed"
            assert all(p.grad is None for p in m.parameters())


def test_snapshot_kept_only_when_it_reaches_the_parents_score():
    modules = _modules()
    model = PathModel(modules)
    x = torch.randint(0, 255, (32, 1, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 3, (32,))
    hp = dict(ds_image_size=8, opt_name="adamw", opt_lr=1e-3, opt_momentum=0.9, opt_nesterov=False,
              opt_lr_warmup_ratio=0.1)
    out = train_path(model, {"head": modules["head"]}, hp, TrainConfig(2, 2, 8, 0), (x, y),
                     (to_model_input(x, 8), y), score_of=lambda q: q, bar=1.01)
    assert not out.improved and out.best_state is None


def test_nan_loss_drops_the_candidate_with_a_reason():
    modules = _modules()
    with torch.no_grad():
        modules["head"].weight.fill_(float("nan"))
    model = PathModel(modules)
    x = torch.randint(0, 255, (16, 1, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 3, (16,))
    hp = dict(ds_image_size=8, opt_name="sgd", opt_lr=0.1, opt_momentum=0.9, opt_nesterov=False,
              opt_lr_warmup_ratio=0.1)
    out = train_path(model, {"head": modules["head"]}, hp, TrainConfig(3, 1, 8, 0), (x, y),
                     (to_model_input(x, 8), y), score_of=lambda q: q, bar=float("-inf"))
    assert not out.improved and "nan" in out.failure


def test_schedule_warms_up_from_lr_over_100_then_decays_to_zero():
    hp = dict(opt_lr=1.0, opt_lr_warmup_ratio=0.1)
    assert lr_at(0, 100, hp) == 0.01
    assert abs(lr_at(10, 100, hp) - 1.0) < 1e-9
    assert lr_at(100, 100, hp) < 1e-9
    assert lr_at(5, 100, dict(hp, opt_lr_schedule="constant")) == 0.5


def test_augmentation_is_seeded_and_identity_when_off():
    x = to_model_input(torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8), 8)
    off = dict(ds_crop=False, ds_flip_left_right=False)
    assert torch.equal(augment(x.clone(), off, torch.Generator().manual_seed(0)), x)
    on = dict(ds_crop=True, ds_area_range_min=0.2, ds_aspect_ratio_range_min=0.5, ds_flip_left_right=True,
              ds_brightness_delta=0.1, ds_contrast_delta=0.1, ds_saturation_delta=0.1, ds_hue_delta=0.1)
    a = augment(x.clone(), on, torch.Generator().manual_seed(1))
    b = augment(x.clone(), on, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, x)
    assert a.min() >= -1 and a.max() <= 1


def test_parallel_logits_are_bit_identical_to_one_batch_after_another():
    """The no-forgetting check runs batches on threads (`parallel`); every reference recorded before must
    still compare equal, so the bits may not move. The pretrained Lite0 (convolutions, BN, depthwise):
    the kernels whose thread splits would show a difference."""
    import timm
    from mupath.model.weights import load_package_weights
    from mupath.train.evaluate import fixed_threads, logits_of

    model = timm.create_model("tf_efficientnet_lite0")
    load_package_weights(model, "tf_efficientnet_lite0")
    images = torch.randint(0, 256, (130, 1, 28, 28), dtype=torch.uint8)
    with fixed_threads(1):
        one_by_one = logits_of(model, images, 48, batch=16)
        threaded = logits_of(model, images, 48, batch=16, parallel=3)
    assert threaded.shape == (130, 1000) and torch.equal(threaded, one_by_one)
