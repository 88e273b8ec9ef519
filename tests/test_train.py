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


def test_step_plan_spaces_validations_and_sizes_a_timed_candidate():
    from mupath.train.loop import RATE_STEPS, StepPlan
    plan = StepPlan(500, 2)
    assert [plan.end(0), plan.end(1)] == [250, 500]          # the fixed schedule: steps_per_validation apart
    assert [StepPlan(7, 3).end(i) for i in range(3)] == [3, 5, 7]
    assert plan.timed(30.0, 0.1).total == 300                 # 30 s at 0.1 s per step
    assert plan.timed(30.0, 0.3).total == 100                 # a costlier step: fewer of them
    assert plan.timed(30.0, 0.1).timed(30.0, 0.05, 12).total == 500   # sized again: faster, up to the cap
    assert plan.timed(0.01, 1.0).total == RATE_STEPS + 1      # never fewer than the timed steps
    assert plan.timed(0.01, 1.0, 40).total == 40              # nor than the steps taken


def test_a_timed_candidate_sizes_its_steps_again_at_doubling_counts():
    """After RATE_STEPS timed steps, then at 2x, 4x, ... that many: a 586-step candidate is sized last
    after 384 timed steps (sized last at 192, its later steps' drift ran it into its deadline)."""
    from mupath.train.loop import RATE_STEPS, _resize_at
    timed = [step - 1 for step in range(1, 800) if _resize_at(step)]
    assert timed == [RATE_STEPS * 2 ** k for k in range(9)] and timed[-2] == 384


def test_a_timed_candidate_trains_as_many_steps_as_its_seconds_buy(monkeypatch):
    """`TrainConfig.seconds`: the step count comes from the rate of the steps after the first, up to the
    configured count. A fake clock on which every step takes 0.25 s: 7 s buy 28 steps, validated at 14
    and 28; with at most 10 steps configured, it stops at 10."""
    import types

    from mupath.train import loop
    now = [0.0]
    real = loop._optimise

    def step(*args):
        now[0] += 0.25
        return real(*args)
    monkeypatch.setattr(loop, "_optimise", step)
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    modules = _modules()
    x = torch.randint(0, 255, (32, 1, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 3, (32,))
    hp = dict(ds_image_size=8, opt_name="adamw", opt_lr=1e-3, opt_momentum=0.9, opt_nesterov=False,
              opt_lr_warmup_ratio=0.1)
    seen: list[tuple[int, int]] = []

    def run(steps_per_validation: int):
        seen.clear()
        cfg = TrainConfig(steps_per_validation, 2, 8, 0, seconds=7.0)
        return train_path(PathModel(modules), {"head": modules["head"]}, hp, cfg, (x, y), (to_model_input(x, 8), y),
                          score_of=lambda q: q, bar=float("-inf"), on_step=lambda s, total: seen.append((s, total)))
    out = run(50)
    assert out.steps == 28 and len(out.evals) == 2
    assert seen[0] == (1, 100) and seen[-1] == (28, 28)       # planned 50 x 2, then sized from the rate
    assert run(5).steps == 10                                 # the configured count is the most it trains
