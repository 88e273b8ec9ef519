"""Root model: a timm Vision Transformer built from a name plus overrides, optionally loaded with
weights, then cut into components (patch embedding, class token, position embedding, blocks, final
norm). The root's own classifier head is never shared (every task gets its own), so it is not cut."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mupath.errors import ConfigError

#: timm.create_model keyword arguments a user may override, and the type each must have.
_OVERRIDE_TYPES: dict[str, type] = {
    "img_size": int, "patch_size": int, "depth": int, "embed_dim": int, "num_heads": int,
    "mlp_ratio": float, "qkv_bias": bool, "class_token": bool, "global_pool": str,
}


@dataclasses.dataclass(frozen=True)
class RootSpec:
    """Everything needed to rebuild the exact root architecture: recorded in the store's manifest.

    `kwargs` go to `timm.create_model` (image size, patch size, depth, width, heads, ...). Dropout and
    stochastic depth are forced off, as in the reference (USE_DROPOUT = False)."""

    name: str = "vit_tiny_patch16_224"
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    weights: str = "random"          # "random" | "pretrained" (timm tag, needs network) | a file path
    seed: int = 0

    @property
    def image_size(self) -> int:
        return int(self.kwargs.get("img_size", 224))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "RootSpec":
        return cls(**json.loads(text))


def _timm_kwargs(spec: RootSpec) -> dict[str, Any]:
    kwargs = dict(spec.kwargs)
    kwargs.update(drop_rate=0.0, attn_drop_rate=0.0, drop_path_rate=0.0, proj_drop_rate=0.0,
                  num_classes=0)
    return kwargs


def create_root(spec: RootSpec) -> nn.Module:
    """Build the root ViT. Random init is seeded so that every process rebuilds the same templates."""
    import timm

    if not timm.is_model(spec.name.split(".")[0]):
        raise ConfigError(f"unknown timm model '{spec.name}'; pick one from timm.list_models('vit_*')")
    from timm.models.vision_transformer import VisionTransformer

    if spec.name.split(".")[0] not in timm.list_models(module="vision_transformer"):
        raise ConfigError(f"root '{spec.name}' is not a timm vision_transformer model; use a vit_* name")

    torch.manual_seed(spec.seed)
    pretrained = spec.weights == "pretrained"
    try:
        model = timm.create_model(spec.name, pretrained=pretrained, **_timm_kwargs(spec))
    except TypeError as exc:
        raise ConfigError(f"root '{spec.name}' rejected an option ({exc}); check the overrides") from None
    except Exception as exc:  # network errors of pretrained downloads
        if pretrained:
            raise ConfigError(f"could not fetch pretrained weights for '{spec.name}' ({type(exc).__name__}); "
                              "use --weights FILE with a local .safetensors/.pth, or random init") from None
        raise
    if not isinstance(model, VisionTransformer):
        raise ConfigError(f"root '{spec.name}' is not a timm vision_transformer model; use a vit_* name")
    _check_supported(model, spec.name)
    if spec.weights not in ("random", "pretrained"):
        load_weights(model, Path(spec.weights))
    model.eval()
    return model


def _check_supported(model: nn.Module, name: str) -> None:
    """The path forward assumes the classic ViT layout: class token whose position is embedded, no
    register tokens, no pre-norm, token pooling. Say so clearly instead of computing something else."""
    problems = []
    if model.cls_token is None:
        problems.append("no class token")
    if getattr(model, "reg_token", None) is not None:
        problems.append("register tokens")
    if getattr(model, "no_embed_class", False):
        problems.append("no_embed_class")
    if not isinstance(model.norm_pre, nn.Identity):
        problems.append("pre-norm")
    if model.global_pool != "token":
        problems.append(f"global_pool='{model.global_pool}'")
    if getattr(model, "pos_embed", None) is None:
        problems.append("no learned position embedding")
    if problems:
        raise ConfigError(f"root '{name}' is not supported ({', '.join(problems)}); "
                          "use a classic ViT such as vit_tiny_patch16_224")


def load_weights(model: nn.Module, path: Path) -> None:
    """Load a local checkpoint: safetensors, or a torch file read with weights_only=True (never an
    arbitrary unpickle). Keys of the classifier head are ignored (tasks get their own heads); a
    missing or mis-shaped key is a one-line ConfigError naming it."""
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"weights file {path} does not exist; give a .safetensors or .pth file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        elif path.suffix in (".pth", ".pt", ".bin"):
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
                state = state["state_dict"]
            if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
                state = state["model"]
        else:
            raise ConfigError(f"weights file {path.name} has an unknown type; use .safetensors or .pth")
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"cannot read weights file {path.name} ({type(exc).__name__}); "
                          "it must be safetensors or a torch state dict saved without pickled objects") from None
    if not isinstance(state, dict):
        raise ConfigError(f"weights file {path.name} holds no state dict")
    own = model.state_dict()
    state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm.", "head_drop"))}
    if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], _grid(own["pos_embed"].shape[1] - 1))
    missing = [k for k in own if k not in state and not k.startswith("head.")]
    if missing:
        raise ConfigError(f"weights file {path.name} does not fit root: missing '{missing[0]}' "
                          f"(and {len(missing) - 1} more); check the root name and overrides")
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise ConfigError(f"weights file {path.name} does not fit root: '{key}' has shape "
                              f"{tuple(value.shape)}, root expects {tuple(own[key].shape)}")
    model.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)


def _grid(num_patches: int) -> tuple[int, int]:
    side = int(round(num_patches ** 0.5))
    return side, side


def resample_pos_embed(pos: torch.Tensor, new_grid: tuple[int, int]) -> torch.Tensor:
    """Position embedding for another image size (class-token position kept), as load_pretrained does."""
    from timm.layers import resample_abs_pos_embed

    old_grid = _grid(pos.shape[1] - 1)
    if tuple(old_grid) == tuple(new_grid):
        return pos.clone()
    return resample_abs_pos_embed(pos, list(new_grid), list(old_grid), num_prefix_tokens=1).contiguous()


def cut_root(model: nn.Module) -> list[tuple[str, str, dict[str, Any], dict[str, torch.Tensor]]]:
    """Cut the root into components: (slot, kind, config, tensors) in forward order."""
    grid = tuple(model.patch_embed.grid_size)
    dim = int(model.embed_dim)
    parts: list[tuple[str, str, dict[str, Any], dict[str, torch.Tensor]]] = [
        ("patch_embed", "patch_embed", {"dim": dim}, _detached(model.patch_embed.state_dict())),
        ("cls_token", "cls_token", {"dim": dim}, {"token": model.cls_token.detach().clone()}),
        ("pos_embed", "pos_embed", {"dim": dim, "grid": list(grid)},
         {"pos_embed": model.pos_embed.detach().clone()}),
    ]
    for i, block in enumerate(model.blocks):
        parts.append((f"block_{i}", "block", {"dim": dim}, _detached(block.state_dict())))
    parts.append(("norm", "norm", {"dim": dim}, _detached(model.norm.state_dict())))
    return parts


def _detached(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def root_num_params(model: nn.Module) -> int:
    """Parameters of the root without its classifier (the µ2Net `num_params` scoring constant)."""
    return sum(p.numel() for n, p in model.named_parameters() if not n.startswith("head"))
