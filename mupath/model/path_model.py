"""A task's model: the components of its path, run in order. Shared components are the very same
frozen module objects other paths use; owned ones are this path's private copies. The root family
(inferred from the slots) says how embeddings start and how the head ends."""
from __future__ import annotations

import torch
from torch import nn

from mupath.model.components import ComponentSpec, build_component, is_body_slot, new_component_tensors, slot_order
from mupath.model.deltas import LowRankDelta, block_slot, run_block
from mupath.model.families import RootFamily, family_for_slots
from mupath.model.root import RootSpec, create_root, cut_root


class PathModel(nn.Module):
    """Forward over a path's components: the family's embedding slots, then the body slots
    (adapter_i, ssf_i, lora_i, block_i)... in order, then the family's neck, pooling and head. Every body
    slot runs through `run`, which applies a low-rank delta `lora_i` to the weights of `block_i`."""

    def __init__(self, modules: dict[str, nn.Module], family: RootFamily | None = None) -> None:
        super().__init__()
        self.family = family or family_for_slots(modules)
        slots = sorted(modules, key=slot_order)
        self.slots = slots
        self.parts = nn.ModuleDict({s: modules[s] for s in slots})
        self.embed_slots = [s for s in self.family.embed_slots if s in modules]
        self.body = [s for s in slots if is_body_slot(s)]
        #: block slot -> the low-rank delta on its weights
        self.deltas: dict[str, LowRankDelta] = {
            block_slot(s): m for s, m in self.parts.items() if isinstance(m, LowRankDelta)}

    def run(self, slot: str, x: torch.Tensor) -> torch.Tensor:
        """One body slot on the activations: a block with its delta, if the path has one."""
        return run_block(self.parts[slot], self.deltas.get(slot), x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.family.embed(self.parts, x)

    def forward_tokens(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """Run body slots from index `start` on embedded activations (used by prefix caching)."""
        x = self.family.activations(x)
        for slot in self.body[start:]:
            x = self.run(slot, x)
        return x

    def head_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.family.head_logits(self.parts, x)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """The representation the head classifies (what a relevance probe compares across paths)."""
        return self.family.features(self.parts, self.forward_tokens(self.embed(images)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head_logits(self.forward_tokens(self.embed(images)))


def root_modules(spec: RootSpec, num_classes: int, root: nn.Module | None = None,
                 head_seed: int = 0) -> dict[str, nn.Module]:
    """The root's components rebuilt as separate modules, plus a new zero-initialised head for
    `num_classes`: a single-task model of the root without a store (`PathModel(root_modules(...))`),
    what the tests and benchmarks train and time. `root`: an already created root of `spec`."""
    modules: dict[str, nn.Module] = {}
    configs = {}
    for slot, kind, config, tensors in cut_root(root if root is not None else create_root(spec)):
        module = build_component(ComponentSpec(kind, config), spec)
        module.load_state_dict(tensors)
        modules[slot], configs[slot] = module, config
    head = ComponentSpec("head", {"dim": spec.family.head_dim(configs), "num_classes": num_classes})
    modules["head"] = build_component(head, spec)
    modules["head"].load_state_dict(new_component_tensors(head, head_seed))
    return modules
