"""Component modules. A component is the unit of sharing, freezing and cloning: one nn.Module whose
tensors live in one blob. Kinds that copy the root's own layers (patch embedding, blocks, norms, stem)
are built by the root's family from a template of the root architecture, so any variant keeps its
exact layers; heads and adapters are generic."""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any

import torch
from torch import nn

from mupath.model.deltas import LowRankDelta, ScaleShift, delta_targets
from mupath.model.families import EFFICIENTNET, VIT, RootFamily, family_of
from mupath.model.root import RootSpec, create_root

#: Kinds a component can be, per family, in forward order.
KINDS = ("patch_embed", "cls_token", "pos_embed", "stem", "adapter", "conv_adapter", "ssf", "lora", "block",
         "norm", "neck", "head")
#: kinds a mutation creates from scratch (identity or zero initialised); every other kind is cut from the root
FRESH_KINDS = ("head", "adapter", "conv_adapter", "ssf", "lora")
#: body slot prefixes in their order within one depth: adapter_i, ssf_i, lora_i, block_i
BODY_PREFIXES = ("adapter", "ssf", "lora", "block")
_TEMPLATE_FREE: dict[str, RootFamily] = {"cls_token": VIT, "pos_embed": VIT, "conv_adapter": EFFICIENTNET}
_FIXED_ORDER = {"patch_embed": (0, 0), "cls_token": (1, 0), "pos_embed": (2, 0), "stem": (0, 0),
                "norm": (4, 0), "neck": (4, 0), "head": (5, 0)}


@dataclasses.dataclass(frozen=True)
class ComponentSpec:
    """The architecture of one component: its kind plus the few numbers that fix its shapes."""

    kind: str
    config: dict[str, Any]


def slot_order(slot: str) -> tuple[int, int]:
    """Sort key putting slots in forward order: embeddings, (adapter_i, ssf_i, lora_i, block_i)..., neck,
    head."""
    if slot in _FIXED_ORDER:
        return _FIXED_ORDER[slot]
    match = re.fullmatch(r"(adapter|ssf|lora|block)_(\d+)", slot)
    if not match:
        raise ValueError(f"unknown slot {slot}")
    return 3, len(BODY_PREFIXES) * int(match.group(2)) + BODY_PREFIXES.index(match.group(1))


def is_body_slot(slot: str) -> bool:
    """A slot of the body (run one after another on the activations), as opposed to embeddings and head."""
    return slot.startswith(tuple(f"{p}_" for p in BODY_PREFIXES))


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
    if kind == "ssf":
        return ScaleShift(int(cfg["channels"]), int(cfg["axis"]))
    if kind == "lora":           # a delta on the weights of the block whose config it carries
        block = build_component(ComponentSpec("block", dict(cfg["block"])), root)
        return LowRankDelta(delta_targets(block), int(cfg["rank"]), float(cfg.get("scale", 1.0)))
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


def new_component_tensors(spec: ComponentSpec, seed: int, root: RootSpec | None = None) -> dict[str, torch.Tensor]:
    """Fresh tensors for a component created by a mutation: a zero-initialised head (vit_jax init),
    an identity adapter (random down projection, zero up projection), an identity scale-and-shift, or
    an identity low-rank delta (random down, zero up). `root`: the root a delta's block comes from."""
    if spec.kind not in FRESH_KINDS:
        raise ValueError(f"a new {spec.kind} is never created from scratch")
    if spec.kind == "lora":
        module = build_component(spec, root or RootSpec())      # may build the root's template (draws)
        torch.manual_seed(seed)
        assert isinstance(module, LowRankDelta)
        for p in module.down.values():
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
        return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}
    torch.manual_seed(seed)
    module = build_component(spec, RootSpec())
    if spec.kind == "head":
        assert isinstance(module, nn.Linear)          # build_component's head
        nn.init.zeros_(module.weight)
        nn.init.zeros_(module.bias)
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()}


def component_num_params(tensors: dict[str, torch.Tensor]) -> int:
    return int(sum(t.numel() for t in tensors.values()))
