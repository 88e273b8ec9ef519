"""Root decomposition and component semantics."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from mupath.errors import ConfigError
from mupath.model import PathModel, RootSpec, create_root, cut_root, root_modules
from mupath.model.components import ResidualAdapter
from mupath.model.root import resample_pos_embed

SPEC = RootSpec(kwargs=dict(img_size=16, patch_size=4, depth=3, embed_dim=32, num_heads=2))


def _path_model(spec: RootSpec, extra: dict | None = None) -> PathModel:
    modules = root_modules(spec, 5)
    modules.update(extra or {})
    return PathModel(modules).eval()


def test_components_reassemble_the_timm_model():
    root = create_root(SPEC)
    model = _path_model(SPEC)
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        ours = model.parts["norm"](model.forward_tokens(model.embed(x)))
        theirs = root.forward_features(x)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_cut_root_gives_every_component_in_order():
    slots = [p[0] for p in cut_root(create_root(SPEC))]
    assert slots == ["patch_embed", "cls_token", "pos_embed", "block_0", "block_1", "block_2", "norm"]


def test_new_head_is_zero_and_predicts_uniformly():
    model = _path_model(SPEC)
    with torch.no_grad():
        logits = model(torch.randn(3, 3, 16, 16))
    assert torch.count_nonzero(logits) == 0


def test_inserted_adapter_is_an_exact_identity():
    base = _path_model(SPEC)
    adapter = ResidualAdapter(32, 8)
    # give the parent a non-zero head so the comparison is meaningful
    torch.nn.init.normal_(base.parts["head"].weight)
    with_adapter = PathModel({**dict(base.parts.items()), "adapter_1": adapter}).eval()
    assert with_adapter.body == ["block_0", "adapter_1", "block_1", "block_2"]
    x = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(base(x), with_adapter(x))


def test_adapter_starts_as_identity_then_learns():
    adapter = ResidualAdapter(32, 8)
    x = torch.randn(2, 5, 32)
    assert torch.equal(adapter(x), x)
    adapter(x).pow(2).sum().backward()
    assert adapter.up.weight.grad is not None and adapter.up.weight.grad.abs().sum() > 0


def test_pos_embed_resample_keeps_same_size_and_changes_grid():
    pos = torch.randn(1, 1 + 16, 32)
    assert torch.equal(resample_pos_embed(pos, (4, 4)), pos)
    bigger = resample_pos_embed(pos, (6, 6))
    assert bigger.shape == (1, 37, 32)
    assert torch.equal(bigger[:, :1], pos[:, :1])


def test_local_weights_load_and_mismatch_is_one_line(tmp_path):
    donor = create_root(SPEC)
    for p in donor.parameters():
        torch.nn.init.normal_(p)
    good = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in donor.state_dict().items()}, str(good))
    loaded = create_root(RootSpec(kwargs=SPEC.kwargs, weights=str(good)))
    assert torch.equal(loaded.blocks[1].mlp.fc1.weight, donor.blocks[1].mlp.fc1.weight)

    pth = tmp_path / "w.pth"
    torch.save(donor.state_dict(), pth)
    loaded = create_root(RootSpec(kwargs=SPEC.kwargs, weights=str(pth)))
    assert torch.equal(loaded.patch_embed.proj.weight, donor.patch_embed.proj.weight)

    other = create_root(RootSpec(kwargs=dict(SPEC.kwargs, embed_dim=64, num_heads=2)))
    bad = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(bad))
    with pytest.raises(ConfigError) as err:
        create_root(RootSpec(kwargs=SPEC.kwargs, weights=str(bad)))
    assert "does not fit root" in str(err.value) and "\n" not in str(err.value)


def test_unknown_and_unsupported_roots_are_clear_errors():
    with pytest.raises(ConfigError, match="unknown timm model"):
        create_root(RootSpec(name="no_such_model"))
    with pytest.raises(ConfigError, match="not of a supported family"):
        create_root(RootSpec(name="resnet18"))
