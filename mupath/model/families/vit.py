"""The ViT family (timm `vision_transformer`, the µ2Net root): patch embedding, class token, position
embedding, one component per transformer block, final norm; adapters are residual MLPs on tokens."""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mupath.errors import ConfigError
from mupath.model.families.base import (
    BodyLayout,
    Part,
    Parts,
    RootFamily,
    Slots,
    TimmModel,
    body_slots,
    detached_state,
)


class PatchEmbed(nn.Module):
    """Patch embedding that accepts any image size divisible by the patch (the position embedding
    component carries the grid)."""

    def __init__(self, template: TimmModel) -> None:
        super().__init__()
        self.proj = copy.deepcopy(template.proj)
        self.norm = copy.deepcopy(template.norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(x).flatten(2).transpose(1, 2))


class Token(nn.Module):
    """A learned token (the class token)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, dim))


class PosEmbed(nn.Module):
    """Learned position embedding for one image grid, class-token position included."""

    def __init__(self, dim: int, grid: list[int]) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid[0] * grid[1], dim))


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


class ViTFamily(RootFamily):
    name = "vit"
    embed_slots = ("patch_embed", "cls_token", "pos_embed")
    force_clone = ("norm",)
    adapter_kind = "adapter"

    def timm_kwargs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        return {**kwargs, "drop_rate": 0.0, "attn_drop_rate": 0.0, "drop_path_rate": 0.0,
                "proj_drop_rate": 0.0, "num_classes": 0}

    def check(self, model: TimmModel, name: str) -> None:
        """The path forward assumes the classic ViT layout: class token whose position is embedded, no
        register tokens, no pre-norm, token pooling. Say so clearly instead of computing something else."""
        from timm.models.vision_transformer import VisionTransformer

        if not isinstance(model, VisionTransformer):
            raise ConfigError(f"root '{name}' is not a timm vision_transformer model; use a vit_* name")
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

    def meta(self, model: TimmModel) -> dict[str, int]:
        return {"depth": len(model.blocks), "patch_size": int(model.patch_embed.patch_size[0])}

    def check_image_size(self, image_size: int, meta: Mapping[str, int]) -> None:
        if image_size % int(meta["patch_size"]):
            raise ConfigError(f"image size {image_size} is not a multiple of the patch size {meta['patch_size']}")

    def cut(self, model: TimmModel) -> list[Part]:
        grid = list(model.patch_embed.grid_size)
        dim = int(model.embed_dim)
        parts: list[Part] = [
            ("patch_embed", "patch_embed", {"dim": dim}, detached_state(model.patch_embed)),
            ("cls_token", "cls_token", {"dim": dim}, {"token": model.cls_token.detach().clone()}),
            ("pos_embed", "pos_embed", {"dim": dim, "grid": grid}, {"pos_embed": model.pos_embed.detach().clone()}),
        ]
        for i, block in enumerate(model.blocks):
            parts.append((f"block_{i}", "block", {"dim": dim}, detached_state(block)))
        parts.append(("norm", "norm", {"dim": dim}, detached_state(model.norm)))
        return parts

    def build(self, kind: str, config: Mapping[str, Any], template: TimmModel) -> nn.Module:
        if kind == "cls_token":
            return Token(config["dim"])
        if kind == "pos_embed":
            return PosEmbed(config["dim"], config["grid"])
        if kind == "patch_embed":
            return PatchEmbed(template.patch_embed)
        if kind == "block":
            return copy.deepcopy(template.blocks[0])
        if kind == "norm":
            return copy.deepcopy(template.norm)
        raise ValueError(f"unknown ViT component kind {kind}")

    def embed(self, parts: Parts, x: torch.Tensor) -> torch.Tensor:
        x = parts["patch_embed"](x)
        token = parts["cls_token"].token.expand(x.shape[0], -1, -1)
        pos = parts["pos_embed"].pos_embed
        if pos.shape[1] != x.shape[1] + 1:
            raise ValueError(f"image grid gives {x.shape[1]} patches but the position embedding has "
                             f"{pos.shape[1] - 1}")
        return torch.cat([token, x], dim=1) + pos

    def features(self, parts: Parts, x: torch.Tensor) -> torch.Tensor:
        return parts["norm"](x[:, 0])

    def wanted_slots(self, layout: BodyLayout, num_classes: int, image_size: int, *,
                     root: Mapping[str, Mapping[str, Any]], meta: Mapping[str, int]) -> Slots:
        dim = int(root["cls_token"]["dim"])
        patch = int(meta["patch_size"])
        wanted: Slots = {
            "patch_embed": ("patch_embed", {"dim": dim}),
            "cls_token": ("cls_token", {"dim": dim}),
            "pos_embed": ("pos_embed", {"dim": dim, "grid": [image_size // patch, image_size // patch]}),
        }
        wanted.update(body_slots(layout, lambda i: ("adapter", {"dim": dim, "width": layout.adapter_dim}),
                                 lambda i: ("block", {"dim": dim}), lambda i: dim, axis=-1))
        wanted["norm"] = ("norm", {"dim": dim})
        wanted["head"] = ("head", {"dim": self.head_dim(root), "num_classes": num_classes})
        return wanted

    def head_dim(self, root: Mapping[str, Mapping[str, Any]]) -> int:
        return int(root["cls_token"]["dim"])

    def resample_source(self, slot: str, kind: str, config: Mapping[str, Any],
                        root_ids: Mapping[str, str]) -> tuple[str, tuple[int, int]] | None:
        """A position embedding for a new image size: the root's, resampled (always trainable, µ2Net)."""
        if kind == "pos_embed":
            return root_ids["pos_embed"], (int(config["grid"][0]), int(config["grid"][1]))
        return None

    def image_sizes(self, image_size: int, meta: Mapping[str, int]) -> list[int]:
        patch = int(meta["patch_size"])
        return sorted({s for s in (image_size - patch, image_size) if s >= patch})

    def prepare_state(self, model: TimmModel, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state = {k: v for k, v in state.items() if not k.startswith(("head.", "fc_norm.", "head_drop"))}
        own = model.state_dict()
        if "pos_embed" in state and "pos_embed" in own and state["pos_embed"].shape != own["pos_embed"].shape:
            state["pos_embed"] = resample_pos_embed(state["pos_embed"], _grid(own["pos_embed"].shape[1] - 1))
        return state


VIT = ViTFamily()
