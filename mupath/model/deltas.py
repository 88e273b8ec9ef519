"""Component kinds that change a frozen network without copying it: per-channel scale-and-shift at a
block boundary (SSF, Lian et al. 2022) and a low-rank delta on a frozen block's weights (LoRA, Hu et al.
2021). Both are owned, trained and shared like any component, are counted by their own parameters under
the µ2Net rule, and are an exact identity when first inserted (scale 1 and shift 0; the delta's up
projection 0), so inserting one never changes the parent's function.

A low-rank delta is a body slot of its own (`lora_i`, right before `block_i`) whose forward leaves the
activations alone; `PathModel.run` applies it to the next block. The frozen block stays one shared
module, one copy in memory, never written to: each target layer of the block carries a forward hook that
adds `scale * up(down(x))` to its output while a delta is active in the calling thread (a ContextVar),
and returns the output untouched otherwise. (Calling the block with swapped-in weights,
`torch.func.functional_call`, swaps them on the shared module itself: two threads running one block at
once, as the no-forgetting check and the server do, corrupted it.) Every consumer that walks a path slot
by slot (training, the activation cache, shared-prefix inference, the server's trie) sees a path that
diverges at the delta's slot, as it should. Export merges each delta into a copy of its block."""
from __future__ import annotations

import contextvars
import copy
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: a delta's target: (parameter name in the block, out features, in features)
Target = tuple[str, int, int]


class ScaleShift(nn.Module):
    """y = x * scale + shift, one scale and shift per channel; `axis` is the channel axis of the
    activations (1 for a CNN's NCHW maps, -1 for a ViT's tokens). Initialised to the identity."""

    def __init__(self, channels: int, axis: int) -> None:
        super().__init__()
        self.axis = int(axis)
        self.scale = nn.Parameter(torch.ones(channels))
        self.shift = nn.Parameter(torch.zeros(channels))

    def _shaped(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.axis == -1:
            return t
        shape = [1] * x.dim()
        shape[self.axis] = -1
        return t.view(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self._shaped(self.scale, x) + self._shaped(self.shift, x)


def _key(name: str) -> str:
    """A parameter name as a ParameterDict key (no dots)."""
    return name.replace(".", "__")


def delta_slot(block_slot: str) -> str:
    """The slot of the low-rank delta on block slot `block_slot` (`block_3` -> `lora_3`)."""
    return "lora_" + block_slot.removeprefix("block_")


def block_slot(delta_slot: str) -> str:
    """The block slot a delta slot changes (`lora_3` -> `block_3`)."""
    return "block_" + delta_slot.removeprefix("lora_")


class LowRankDelta(nn.Module):
    """`scale * up @ down` added to each target weight of one block: `down` (rank, in) starts random as
    in LoRA, `up` (out, rank) starts at zero. Its own forward is the identity; `run_block` applies it."""

    def __init__(self, targets: Sequence[Target], rank: int, scale: float = 1.0) -> None:
        super().__init__()
        self.targets = [(str(n), int(o), int(i)) for n, o, i in targets]
        self.rank, self.scale = int(rank), float(scale)
        self.down = nn.ParameterDict({_key(n): nn.Parameter(torch.empty(self.rank, i)) for n, _, i in self.targets})
        self.up = nn.ParameterDict({_key(n): nn.Parameter(torch.zeros(o, self.rank)) for n, o, _ in self.targets})
        for p in self.down.values():
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))        # peft's LoRA init of A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def residual(self, weight: str, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """What the delta adds to the output of `layer` (whose weight is named `weight`) on input `x`."""
        down, up = self.down[_key(weight)], self.up[_key(weight)]
        if isinstance(layer, nn.Conv2d):
            y = F.conv2d(F.conv2d(x, down[:, :, None, None]), up[:, :, None, None])
        else:
            y = F.linear(F.linear(x, down), up)
        return y * self.scale if self.scale != 1.0 else y

    def merged(self, block: nn.Module) -> nn.Module:
        """A copy of `block` with the delta added into its weights (export: one plain block)."""
        out = copy.deepcopy(block)
        params = dict(out.named_parameters())
        with torch.no_grad():
            for name, _, _ in self.targets:
                delta = self.up[_key(name)] @ self.down[_key(name)] * self.scale
                params[name].add_(delta.view(params[name].shape))
        return out


#: the delta the current thread is running its block with (None: the block as it is)
_ACTIVE: contextvars.ContextVar[LowRankDelta | None] = contextvars.ContextVar("mupath_delta", default=None)


class _DeltaHook:
    """Forward hook of one target layer: adds the active delta's residual, if a delta is active."""

    def __init__(self, weight: str) -> None:
        self.weight = weight

    def __call__(self, layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
        delta = _ACTIVE.get()
        if delta is None:
            return None
        return output + delta.residual(self.weight, layer, inputs[0])


def _target_layers(block: nn.Module) -> list[tuple[str, nn.Module]]:
    """(weight name, layer) of every layer of `block` a delta may change: linear layers and pointwise
    (1x1, stride 1, ungrouped) convolutions (a CNN's expansions and projections; depthwise convolutions
    have too few weights per channel for a rank to mean anything)."""
    out: list[tuple[str, nn.Module]] = []
    for name, module in block.named_modules():
        if isinstance(module, nn.Linear) or (
                isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1) and module.groups == 1
                and tuple(module.stride) == (1, 1)):
            out.append((f"{name}.weight", module))
    return out


def delta_targets(block: nn.Module) -> list[Target]:
    """The weights of `block` a low-rank delta changes, as (name, out, in)."""
    out: list[Target] = []
    for name, layer in _target_layers(block):
        weight = layer.weight
        assert isinstance(weight, torch.Tensor)
        out.append((name, int(weight.shape[0]), int(weight.shape[1])))
    return out


def _hook(block: nn.Module) -> None:
    """Give each target layer of `block` its delta hook, once (a hook changes nothing while no delta
    is active, so a shared frozen block may carry it)."""
    if getattr(block, "_mupath_delta_hooks", False):
        return
    for name, layer in _target_layers(block):
        layer.register_forward_hook(_DeltaHook(name))
    block.__dict__["_mupath_delta_hooks"] = True


def run_block(block: nn.Module, delta: LowRankDelta | None, x: torch.Tensor) -> torch.Tensor:
    """`block(x)`, with `delta` added to its target layers when there is one (this thread only)."""
    if delta is None:
        return block(x)
    _hook(block)
    token = _ACTIVE.set(delta)
    try:
        return block(x)
    finally:
        _ACTIVE.reset(token)
