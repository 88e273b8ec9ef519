"""The root-family interface: everything mupath needs to know about one family of timm models to cut
a root into components, put a path's components back together, insert adapters, remove top layers and
change the input size. The search, the training loop, the cache and the store only talk to a family
through this interface, so a new family (another timm architecture) is one new module."""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

#: (slot, kind, config, tensors) of one root component, in forward order.
Part = tuple[str, str, dict[str, Any], dict[str, torch.Tensor]]
#: A timm model, or one of its modules, read through timm's own attributes (`model.blocks`,
#: `model.patch_embed.grid_size`). nn.Module resolves those through `__getattr__`, which type checkers
#: see as `Tensor | Module`, so the code that reads them takes the model untyped.
TimmModel = Any
#: A path's modules by slot: an nn.ModuleDict (no typing Mapping) or a dict. Untyped for the reason
#: TimmModel is: the families read their parts' own attributes (`.token`, `.pos_embed`).
Parts = Any


@dataclasses.dataclass(frozen=True)
class BodyLayout:
    """Which body slots a path has, read from its hyperparameters: the depth, and the blocks that get an
    adapter, a scale-and-shift before them, or a low-rank delta on their weights."""

    num_layers: int
    adapters: tuple[int, ...] = ()
    adapter_dim: int = 32
    ssf: tuple[int, ...] = ()
    lora: tuple[int, ...] = ()
    lora_rank: int = 4

    @classmethod
    def of(cls, hp: Mapping[str, Any]) -> BodyLayout:
        """The layout of a path with hyperparameters `hp` (keys a path written before a kind existed
        lacks mean none of that kind)."""
        return cls(int(hp["num_layers"]), tuple(hp.get("adapter_layers", ())),
                   int(hp.get("adapter_dim", cls.adapter_dim)), tuple(hp.get("ssf_layers", ())),
                   tuple(hp.get("lora_layers", ())), int(hp.get("lora_rank", cls.lora_rank)))


Slots = dict[str, tuple[str, dict[str, Any]]]


class RootFamily:
    """Base class of a root family. Slots are named `<embed slots>`, then `adapter_i` / `block_i`
    pairs (the body: every removable or adaptable layer), then `<neck slots>`, then `head`."""

    #: family name recorded in docs and messages
    name: str = ""
    #: slots run before the body (never removed; frozen ones can be cached as a prefix)
    embed_slots: tuple[str, ...] = ()
    #: slots every child clones (reference: force_finetune_components = ['encoder_norm'])
    force_clone: tuple[str, ...] = ()
    #: kind of the identity-initialised adapter inserted before block i
    adapter_kind: str = "adapter"

    def timm_kwargs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """timm.create_model keyword arguments for the root (no classifier, no dropout)."""
        raise NotImplementedError

    def check(self, model: TimmModel, name: str) -> None:
        """Raise ConfigError when `model` is of this family but a layout the forward does not cover."""

    def meta(self, model: TimmModel) -> dict[str, int]:
        """Numbers recorded in the manifest: `depth` (body blocks) and `patch_size` (0 if none)."""
        raise NotImplementedError

    def check_image_size(self, image_size: int, meta: Mapping[str, int]) -> None:
        """Raise ConfigError when the root cannot run at `image_size`."""

    def cut(self, model: TimmModel) -> list[Part]:
        """The root's components in forward order (its classifier is never cut: tasks own heads)."""
        raise NotImplementedError

    def build(self, kind: str, config: Mapping[str, Any], template: TimmModel) -> nn.Module:
        """A component module of a template-built kind (copied from the root architecture)."""
        raise NotImplementedError

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        """Body activations in the memory layout the family's layers run fastest on. Cached
        activations pass through it too, so cached and uncached forwards run the same kernels (and
        give the same bits)."""
        return x

    def embed(self, parts: Parts, x: torch.Tensor) -> torch.Tensor:
        """Images (N, 3, S, S) -> activations entering the first body slot."""
        raise NotImplementedError

    def features(self, parts: Parts, x: torch.Tensor) -> torch.Tensor:
        """Body output -> the (N, head_dim) representation the head classifies (neck, pooling)."""
        raise NotImplementedError

    def head_logits(self, parts: Parts, x: torch.Tensor) -> torch.Tensor:
        """Body output -> logits: the head on `features`."""
        return parts["head"](self.features(parts, x))

    def wanted_slots(self, layout: BodyLayout, num_classes: int, image_size: int, *,
                     root: Mapping[str, Mapping[str, Any]], meta: Mapping[str, int]) -> Slots:
        """{slot: (kind, config)} of a path with these hyperparameters, in forward order. `root` maps
        the root path's slots to their component configs."""
        raise NotImplementedError

    def head_dim(self, root: Mapping[str, Mapping[str, Any]]) -> int:
        """Width of the features a task's head classifies."""
        raise NotImplementedError

    def resample_source(self, slot: str, kind: str, config: Mapping[str, Any],
                        root_ids: Mapping[str, str]) -> tuple[str, tuple[int, int]] | None:
        """A component no ancestor has that can start from a root component resampled to a grid,
        besides a new head or adapter (those are generic): (root component id, grid), e.g. a position
        embedding for a new image size. None if not possible."""
        return None

    def depth_choices(self, root: Mapping[str, Mapping[str, Any]], depth: int) -> list[int]:
        """Values of `num_layers` (top blocks removed) that give a body the neck still fits."""
        return list(range(1, depth + 1))

    def image_sizes(self, image_size: int, meta: Mapping[str, int]) -> list[int]:
        """Default `ds_image_size` range: never above the root's (bounded compute per task)."""
        return [image_size]

    def prepare_state(self, model: TimmModel, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Adapt a loaded checkpoint to `model` (drop the classifier, resample what depends on size)."""
        return state


def detached_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A component's tensors as stored: parameters and buffers, detached and contiguous.
    `num_batches_tracked` is left out: BatchNorm always runs in eval mode, where it is never used."""
    return {k: v.detach().clone().contiguous() for k, v in module.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def body_slots(layout: BodyLayout, adapter: Callable[[int], tuple[str, dict[str, Any]]],
               block: Callable[[int], tuple[str, dict[str, Any]]], channels: Callable[[int], int],
               axis: int) -> Slots:
    """(adapter_i, ssf_i, lora_i, block_i) slots for i < num_layers, each where the layout has one:
    `adapter(i)` and `block(i)` give (kind, config); `channels(i)` is the width entering block i, and
    `axis` the channel axis of the activations (what a scale-and-shift scales)."""
    out: Slots = {}
    for i in range(layout.num_layers):
        if i in layout.adapters:
            out[f"adapter_{i}"] = adapter(i)
        if i in layout.ssf:
            out[f"ssf_{i}"] = ("ssf", {"channels": channels(i), "axis": axis})
        if i in layout.lora:
            out[f"lora_{i}"] = ("lora", {"block": block(i)[1], "rank": layout.lora_rank})
        out[f"block_{i}"] = block(i)
    return out
