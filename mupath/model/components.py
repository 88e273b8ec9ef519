"""Component modules. A component is the unit of sharing, freezing and cloning: one nn.Module whose
tensors live in one blob. Kinds that copy the root's own layers (patch embedding, blocks, norms, stem)
are built by the root's family from a template of the root architecture, so any variant keeps its
exact layers; heads and adapters are generic."""
from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import torch
from torch import nn

from mupath.model.families import EFFICIENTNET, VIT, RootFamily, family_of
from mupath.model.root import RootSpec, create_root

#: Kinds a component can be, per family, in forward order.
KINDS = ("patch_embed", "cls_token", "pos_embed", "stem", "adapter", "conv_adapter", "block", "norm",
         "neck", "head")
_TEMPLATE_FREE: dict[str, RootFamily] = {"cls_token": VIT, "pos_embed": VIT, "conv_adapter": EFFICIENTNET}
_FIXED_ORDER = {"patch_embed": (0, 0), "cls_token": (1, 0), "pos_embed": (2, 0), "stem": (0, 0),
                "norm": (4, 0), "neck": (4, 0), "head": (5, 0)}


@dataclasses.dataclass(frozen=True)
class ComponentSpec:
    """The architecture of one component: its kind plus the few numbers that fix its shapes."""

    kind: str
    config: dict[str, Any]


def slot_order(slot: str) -> tuple[int, int]:
    """Sort key putting slots in forward order: embeddings, (adapter_i, block_i)..., neck, head."""
    if slot in _FIXED_ORDER:
        return _FIXED_ORDER[slot]
    match = re.fullmatch(r"(adapter|block)_(\d+)", slot)
    if not match:
        raise ValueError(f"unknown slot {slot}")
    return 3, 2 * int(match.group(2)) + (0 if match.group(1) == "adapter" else 1)


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
    if kind == "adapter":
        return ResidualAdapter(cfg["dim"], cfg["width"])
    if kind == "head":
        return nn.Linear(cfg["dim"], cfg["num_classes"])
    if kind in _TEMPLATE_FREE:              # their shapes are all in the config
        return _TEMPLATE_FREE[kind].build(kind, cfg, None)
    return family_of(root.name).build(kind, cfg, _templates(root.to_json()))


def load_component(spec: ComponentSpec, root: RootSpec, tensors: dict[str, torch.Tensor], *,
                   trainable: bool = False) -> nn.Module:
    """The one way a component becomes a module: built from its spec, loaded with `tensors`. Frozen
    (no gradients) unless `trainable`, in which case it trains its own copy of the tensors."""
    module = build_component(spec, root)
    module.load_state_dict({k: v.clone() for k, v in tensors.items()} if trainable else tensors)
    module.requires_grad_(trainable)
    return module


def new_component_tensors(spec: ComponentSpec, seed: int) -> dict[str, torch.Tensor]:
    """Fresh tensors for a component created by a mutation: a zero-initialised head (vit_jax init),
    or an identity adapter (random down projection, zero up projection)."""
    if spec.kind not in ("head", "adapter", "conv_adapter"):
        raise ValueError(f"a new {spec.kind} is never created from scratch")
    torch.manual_seed(seed)
    module = build_component(spec, RootSpec())
    if spec.kind == "head":
        assert isinstance(module, nn.Linear)          # build_component's head
        nn.init.zeros_(module.weight)
        nn.init.zeros_(module.bias)
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def component_num_params(tensors: dict[str, torch.Tensor]) -> int:
    return int(sum(t.numel() for t in tensors.values()))
