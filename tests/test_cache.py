"""Frozen-prefix activation cache: identical forward results, sharing between candidates, memory bound."""
from __future__ import annotations

import dataclasses

import torch

from mupath.model import PathModel, RootSpec, root_modules
from mupath.runtime.jobs import Budget
from mupath.runtime.worker import fills_cache
from mupath.train.cache import ActivationCache, fill_pays, frozen_prefix
from mupath.train.loop import TrainConfig, train_path
from mupath.train.pipeline import to_model_input

SPEC = RootSpec(kwargs=dict(img_size=16, patch_size=4, depth=4, embed_dim=32, num_heads=2))


def _model(owned_slots):
    modules = root_modules(SPEC, 4, head_seed=1)
    torch.nn.init.normal_(modules["head"].weight)
    for slot, m in modules.items():
        m.requires_grad_(slot in owned_slots)
    ids = {slot: f"id-{slot}" for slot in modules}
    return PathModel(modules), {s: modules[s] for s in owned_slots}, ids


def _data(n=300):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 255, (n, 1, 16, 16), dtype=torch.uint8, generator=g), torch.randint(0, 4, (n,), generator=g)


def test_prefix_stops_at_first_owned_component_and_needs_frozen_embeddings():
    model, owned, ids = _model(["block_2", "block_3", "norm", "head"])
    prefix = frozen_prefix(model, {id(m) for m in owned.values()}, ids)
    assert prefix == ("id-patch_embed", "id-cls_token", "id-pos_embed", "id-block_0", "id-block_1")
    model, owned, ids = _model(["pos_embed", "norm", "head"])
    assert frozen_prefix(model, {id(m) for m in owned.values()}, ids) is None


def test_cached_forward_is_bit_identical_to_the_full_forward():
    model, owned, ids = _model(["block_2", "block_3", "norm", "head"])
    x, _ = _data()
    val = to_model_input(x[:50], 16)
    cache = ActivationCache(1 << 30)
    pre = cache.prefix(model, frozen_prefix(model, {id(m) for m in owned.values()}, ids), "task", 16, x, val)
    idx = torch.randperm(300)[:64]
    with torch.no_grad():
        full = model(to_model_input(x[idx], 16))
        cached = model.head_logits(model.forward_tokens(pre.train[idx], pre.start))
        assert torch.equal(full, cached)
        assert torch.equal(model(val), model.head_logits(model.forward_tokens(pre.val, pre.start)))


def test_training_from_the_cache_matches_training_without_it():
    hp = dict(ds_image_size=16, opt_name="adamw", opt_lr=1e-3, opt_momentum=0.9, opt_nesterov=False,
              opt_lr_warmup_ratio=0.1)
    x, y = _data()
    val = to_model_input(x[:60], 16)
    results = []
    for use_cache in (False, True):
        torch.manual_seed(0)
        model, owned, ids = _model(["block_2", "block_3", "norm", "head"])
        prefix = None
        if use_cache:
            ids_ = frozen_prefix(model, {id(m) for m in owned.values()}, ids)
            prefix = ActivationCache(1 << 30).prefix(model, ids_, "t", 16, x, val)
        out = train_path(model, owned, hp, TrainConfig(5, 2, 32, 0), (x, y), (val, y[:60]),
                         score_of=lambda q: q, bar=float("-inf"), prefix=prefix)
        results.append(out)
    assert results[0].evals == results[1].evals
    a, b = results[0].best_state, results[1].best_state
    assert all(torch.allclose(a[k][t], b[k][t], atol=1e-5) for k in a for t in a[k])


def test_cache_is_shared_extended_and_bounded():
    model, owned, ids = _model(["block_3", "norm", "head"])
    x, _ = _data()
    val = to_model_input(x[:50], 16)
    cache = ActivationCache(1 << 30)
    short = ("id-patch_embed", "id-cls_token", "id-pos_embed", "id-block_0")
    long = short + ("id-block_1", "id-block_2")
    cache.prefix(model, short, "t", 16, x, val)
    first = cache.prefix(model, long, "t", 16, x, val)       # extends the shorter entry
    again = cache.prefix(model, long, "t", 16, x, val)       # a second candidate: served from memory
    assert cache.hits == 1 and cache.misses == 2 and again.train is first.train
    assert first.fill_seconds > 0 and again.fill_seconds == 0       # a hit costs its reader no fill
    with torch.no_grad():
        direct = model.embed(to_model_input(x[:7], 16))
        for slot in ("block_0", "block_1", "block_2"):
            direct = model.parts[slot](direct)
        assert torch.equal(first.train[:7], direct)
    tiny = ActivationCache(first.train.nbytes + first.val.nbytes + 10)
    tiny.prefix(model, short, "t", 16, x, val)
    tiny.prefix(model, long, "t", 16, x, val)
    assert tiny.nbytes <= tiny.max_bytes and len(tiny.entries) == 1


def test_fill_past_the_floor_keeps_the_floor_for_shorter_prefixes():
    """A candidate that fills the cache past the run's always-frozen bottom also keeps the
    activations there; a later candidate with a shorter prefix starts from them (no refill from
    images), and its activations are still exact."""
    model, owned, ids = _model(["norm", "head"])                     # every block frozen: depth 4
    x, _ = _data()
    val = to_model_input(x[:30], 16)
    cache = ActivationCache(1 << 30)
    deep = frozen_prefix(model, {id(m) for m in owned.values()}, ids)
    cache.prefix(model, deep, "t", 16, x, val, floor=2)
    assert len(cache.entries) == 2                                   # depth 4 and the floor, depth 2
    short = deep[:3 + 3]                                             # a candidate owning block_3
    calls = []
    embed = model.embed
    model.embed = lambda images: calls.append(1) or embed(images)   # images never embedded again
    pre = cache.prefix(model, short, "t", 16, x, val, floor=2)
    model.embed = embed
    assert not calls and pre.start == 3
    with torch.no_grad():
        tokens = model.embed(to_model_input(x, 16))
        for slot in model.body[:3]:
            tokens = model.parts[slot](tokens)
    assert torch.equal(pre.train, tokens)


def test_the_floor_entry_is_evicted_last():
    """A cache too small for every prefix keeps the run's floor (what every candidate extends, and the
    costly fill from images) and evicts the entries above it first, least recently used among them."""
    model, owned, ids = _model(["norm", "head"])
    x, _ = _data()
    val = to_model_input(x[:30], 16)
    deep = frozen_prefix(model, {id(m) for m in owned.values()}, ids)     # embeddings + 4 blocks
    probe = ActivationCache(1 << 30)
    entry = probe.prefix(model, deep[:3 + 2], "t", 16, x, val)
    one = entry.train.nbytes + entry.val.nbytes                          # every entry has this size (ViT)
    cache = ActivationCache(3 * one + 10)
    cache.prefix(model, deep[:3 + 4], "t", 16, x, val, floor=2)           # floor (2) and depth 4
    cache.prefix(model, deep[:3 + 3], "t", 16, x, val, floor=2)           # depth 3, from the floor
    floor_key = ("t", 16, deep[:3 + 2])
    cache.prefix(model, deep[:3 + 4], "t", 16, x, val, floor=2)           # a hit: depth 4 is fresh, floor is oldest
    assert list(cache.entries)[0] == floor_key and cache.hits == 1
    calls = []
    embed = model.embed
    model.embed = lambda images: calls.append(1) or embed(images)
    cache._store(("t", 16, ("other",)), cache.entries[floor_key])       # a fourth entry must evict one
    assert floor_key in cache.entries and len(cache.entries) == 3
    assert ("t", 16, deep[:3 + 3]) not in cache.entries                  # the LRU entry above the floor went
    cache.prefix(model, deep[:3 + 3], "t", 16, x, val, floor=2)           # rebuilt from the floor, not the images
    model.embed = embed
    assert not calls


def test_a_floor_filled_elsewhere_is_bit_identical_and_used():
    """`fill_floor` on threads gives the bits the cache computes itself, and a `preload` of them is
    taken as the floor entry (no fill from the images) and extended for a deeper prefix."""
    from mupath.train.cache import fill_floor
    from mupath.train.evaluate import fixed_threads
    model, owned, ids = _model(["norm", "head"])
    x, _ = _data(n=700)                                              # several CHUNKs
    val = to_model_input(x[:30], 16)
    deep = frozen_prefix(model, {id(m) for m in owned.values()}, ids)
    with fixed_threads(1):
        own = ActivationCache(1 << 30).prefix(model, deep[:3 + 2], "t", 16, x, val, floor=2)
        train, fval = fill_floor(model, x, val, 16, 2, parallel=3)
    assert torch.equal(train, own.train) and torch.equal(fval, own.val)
    cache = ActivationCache(1 << 30)
    calls = []
    embed = model.embed
    model.embed = lambda images: calls.append(1) or embed(images)
    pre = cache.prefix(model, deep, "t", 16, x, val, floor=2, preload=lambda: (train, fval))
    model.embed = embed
    assert not calls and ("t", 16, deep[:3 + 2]) in cache.floors
    with torch.no_grad():
        tokens = own.train
        for slot in model.body[2:4]:
            tokens = model.parts[slot](tokens)
    assert torch.equal(pre.train, tokens)
    gone = ActivationCache(1 << 30).prefix(model, deep[:3 + 2], "t", 16, x, val, floor=2, preload=lambda: None)
    assert torch.equal(gone.train, own.train)                       # a missing file: filled here


def test_a_fill_is_made_only_when_it_pays_and_an_entry_there_is_always_used():
    """fill_pays: a 33-step first-rung candidate (2,112 images) on a 54,000-image task does not fill; the
    same task read over 200 validations' worth, or a small task, does. `fill=False` never computes an
    entry but still serves one that another candidate left."""
    assert not fill_pays(54_000, 1_000, draws=33 * 64, validations=1)
    assert fill_pays(3_600, 400, draws=33 * 64, validations=1)
    assert fill_pays(54_000, 1_000, draws=500 * 64, validations=5)
    model, owned, ids = _model(["block_3", "norm", "head"])
    x, _ = _data()
    val = to_model_input(x[:50], 16)
    cache = ActivationCache(1 << 30)
    prefix = ("id-patch_embed", "id-cls_token", "id-pos_embed", "id-block_0", "id-block_1")
    assert cache.prefix(model, prefix, "t", 16, x, val, fill=False) is None
    assert not cache.entries and cache.misses == 0
    made = cache.prefix(model, prefix, "t", 16, x, val)
    again = cache.prefix(model, prefix, "t", 16, x, val, fill=False)
    assert again is not None and again.train is made.train and cache.hits == 1


def test_a_timed_candidate_never_fills_and_the_floor_always_does():
    """fills_cache: a step-counted candidate on a small task fills; the same candidate timed
    (`Budget.seconds`) does not, however small the task (its fill would come on top of its seconds); the
    run's frozen floor is filled either way."""
    counted = Budget(100, 4, 64, 1000)
    timed = dataclasses.replace(counted, seconds=30.0)
    assert fills_cache(counted, 0, 3_600, 400)
    assert not fills_cache(timed, 0, 3_600, 400)
    assert not fills_cache(timed, 0, 144, 16)
    assert fills_cache(timed, 8, 54_000, 6_000)
    assert not fills_cache(dataclasses.replace(counted, steps_per_validation=33, validations=1), 0, 54_000, 1_000)
