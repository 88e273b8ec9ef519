"""A task's model: the components of its path, run in order. Shared components are the very same
frozen module objects other paths use; owned ones are this path's private copies. The root family
(inferred from the slots) says how embeddings start and how the head ends."""
from __future__ import annotations

import torch
from torch import nn

from mupath.model.components import slot_order
from mupath.model.families import RootFamily, family_for_slots


class PathModel(nn.Module):
    """Forward over a path's components: the family's embedding slots, then (adapter_i, block_i)... in
    order, then the family's neck, pooling and head."""

    def __init__(self, modules: dict[str, nn.Module], family: RootFamily | None = None) -> None:
        super().__init__()
        self.family = family or family_for_slots(modules)
        slots = sorted(modules, key=slot_order)
        self.slots = slots
        self.parts = nn.ModuleDict({s: modules[s] for s in slots})
        self.embed_slots = [s for s in self.family.embed_slots if s in modules]
        self.body = [s for s in slots if s.startswith(("adapter_", "block_"))]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.family.embed(self.parts, x)

    def forward_tokens(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Run body slots from index `start` on embedded activations (used by prefix caching)."""
        x = self.family.activations(x)
        for slot in self.body[start:]:
            x = self.parts[slot](x)
        return x

    def head_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.family.head_logits(self.parts, x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head_logits(self.forward_tokens(self.embed(images)))
