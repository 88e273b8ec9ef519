"""Component modules. A component is the unit of sharing, freezing and cloning: one nn.Module whose
tensors live in one blob. Modules of the timm families (patch embedding, blocks, norm) are built by
copying the root's own module as a template, so any vision_transformer variant keeps its exact layers."""
from __future__ import annotations

import copy
import dataclasses
import functools
import re
from typing import Any

import torch
from torch import nn

from mupath.model.root import RootSpec, create_root

#: Kinds a component can be, in forward order.
KINDS = ("patch_embed", "cls_token", "pos_embed", "adapter", "block", "norm", "head")


@dataclasses.dataclass(frozen=True)
class ComponentSpec:
    """The architecture of one component: its kind plus the few numbers that fix its shapes."""

    kind: str
    config: dict[str, Any]


def slot_order(slot: str) -> tuple[int, int]:
    """Sort key putting slots in forward order: embeddings, (adapter_i, block_i)..., norm, head."""
    fixed = {"patch_embed": (0, 0), "cls_token": (1, 0), "pos_embed": (2, 0), "norm": (4, 0), "head": (5, 0)}
    if slot in fixed:
        return fixed[slot]
    match = re.fullmatch(r"(adapter|block)_(\d+)", slot)
    if not match:
        raise ValueError(f"unknown slot {slot}")
    return 3, 2 * int(match.group(2)) + (0 if match.group(1) == "adapter" else 1)


class PatchEmbed(nn.Module):
    """Patch embedding that accepts any image size divisible by the patch (the position embedding
    component carries the grid)."""

    def __init__(self, template: nn.Module) -> None:
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


class ResidualAdapter(nn.Module):
    """LayerNorm -> Dense(width) -> GELU -> Dense(dim, zero init) -> add input. The zero-initialised
    output makes a freshly inserted adapter an exact identity, so insertion never changes a parent's
    function (reference: ResidualAdapter)."""

    def __init__(self, dim: int, width: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.down = nn.Linear(dim, width)
        self.act = nn.GELU()
        self.up = nn.Linear(width, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(self.norm(x))))


@functools.lru_cache(maxsize=4)
def _templates(root_json: str) -> nn.Module:
    """The root architecture only: component tensors always come from the store, so templates never
    need the root's weights (no download, no weights file that may have moved)."""
    spec = RootSpec.from_json(root_json)
    return create_root(dataclasses.replace(spec, weights="random"))


def build_component(spec: ComponentSpec, root: RootSpec) -> nn.Module:
    """An nn.Module of the given architecture (parameters are then loaded from its tensors)."""
    kind, cfg = spec.kind, spec.config
    if kind == "cls_token":
        return Token(cfg["dim"])
    if kind == "pos_embed":
        return PosEmbed(cfg["dim"], cfg["grid"])
    if kind == "adapter":
        return ResidualAdapter(cfg["dim"], cfg["width"])
    if kind == "head":
        return nn.Linear(cfg["dim"], cfg["num_classes"])
    template = _templates(root.to_json())
    if kind == "patch_embed":
        return PatchEmbed(template.patch_embed)
    if kind == "block":
        return copy.deepcopy(template.blocks[0])
    if kind == "norm":
        return copy.deepcopy(template.norm)
    raise ValueError(f"unknown component kind {kind}")


def new_component_tensors(spec: ComponentSpec, seed: int) -> dict[str, torch.Tensor]:
    """Fresh tensors for a component created by a mutation: a zero-initialised head (vit_jax init),
    or an identity adapter (random down projection, zero up projection)."""
    if spec.kind not in ("head", "adapter"):
        raise ValueError(f"a new {spec.kind} is never created from scratch")
    torch.manual_seed(seed)
    module = build_component(spec, RootSpec())
    if spec.kind == "head":
        nn.init.zeros_(module.weight)
        nn.init.zeros_(module.bias)
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def component_num_params(tensors: dict[str, torch.Tensor]) -> int:
    return int(sum(t.numel() for t in tensors.values()))
