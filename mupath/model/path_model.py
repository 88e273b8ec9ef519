"""A task's model: the components of its path, run in order. Shared components are the very same
frozen module objects other paths use; owned ones are this path's private copies."""
from __future__ import annotations

import torch
from torch import nn

from mupath.model.components import slot_order


class PathModel(nn.Module):
    """ViT forward over a path's components: patch embed, prepend class token, add positions, then
    (adapter_i, block_i)... in order, final norm, class-token pooling, head."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        super().__init__()
        slots = sorted(modules, key=slot_order)
        self.slots = slots
        self.parts = nn.ModuleDict({s: modules[s] for s in slots})
        self.body = [s for s in slots if s.startswith(("adapter_", "block_"))]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.parts["patch_embed"](x)
        token = self.parts["cls_token"].token.expand(x.shape[0], -1, -1)
        pos = self.parts["pos_embed"].pos_embed
        if pos.shape[1] != x.shape[1] + 1:
            raise ValueError(f"image grid gives {x.shape[1]} patches but the position embedding has "
                             f"{pos.shape[1] - 1}")
        return torch.cat([token, x], dim=1) + pos

    def forward_tokens(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Run body slots from index `start` on token activations (used by prefix caching)."""
        for slot in self.body[start:]:
            x = self.parts[slot](x)
        return x

    def head_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.parts["head"](self.parts["norm"](x[:, 0]))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head_logits(self.forward_tokens(self.embed(images)))
