"""The EfficientNet family (timm `efficientnet`: tf_efficientnet_lite0 and its siblings): the stem
(first conv + BatchNorm), one component per MBConv block, the neck (1x1 head conv + BatchNorm), and
the classifier. Adapters are zero-initialised residual 1x1 convolutions.

Memory layout: modules and activations are channels-last (NHWC), which runs the depthwise and 1x1
convolutions about 1.5-2x faster on CPU than NCHW (measured on the frozen bottom at 64 px, one thread).

BatchNorm: every component always runs with its stored running statistics (the model stays in eval
mode), so statistics belong to the component that owns them and are frozen with it: sharing a block
never changes another task, and an owned block trains only its weights and BatchNorm affine terms."""
from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
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


class ConvBN(nn.Module):
    """A convolution and its BatchNorm (+ activation): the stem (first conv) and the neck (1x1 head
    conv, before global pooling) are both this, copied from the root's own layers."""

    def __init__(self, conv: nn.Module, bn: nn.Module) -> None:
        super().__init__()
        self.conv = copy.deepcopy(conv)
        self.bn = copy.deepcopy(bn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def stem_of(model: TimmModel) -> ConvBN:
    return ConvBN(model.conv_stem, model.bn1)


def neck_of(model: TimmModel) -> ConvBN:
    return ConvBN(model.conv_head, model.bn2)


class ConvAdapter(nn.Module):
    """Residual 1x1 bottleneck: x + up(relu(down(x))), `up` zero-initialised so that a freshly
    inserted adapter is an exact identity (the ViT adapter's rule, on feature maps)."""

    def __init__(self, channels: int, width: int) -> None:
        super().__init__()
        self.down = nn.Conv2d(channels, width, 1)
        self.act = nn.ReLU()
        self.up = nn.Conv2d(width, channels, 1)
        nn.init.zeros_(self.up.weight)
        assert self.up.bias is not None          # a Conv2d built with its default bias=True
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


def flat_blocks(model: TimmModel) -> list[nn.Module]:
    """timm groups blocks in stages; mupath numbers them in forward order."""
    return [block for stage in model.blocks for block in stage]


def _channels(block: TimmModel) -> tuple[int, int]:
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    return int(convs[0].in_channels), int(convs[-1].out_channels)


class EfficientNetFamily(RootFamily):
    name = "efficientnet"
    embed_slots = ("stem",)
    # No force_clone: the neck (a 1x1 conv to 1280 channels, 0.41M of lite0's 3.4M) is cloned with
    # probability µ like any frozen component. The reference always clones the ViT's encoder_norm
    # because it is part of the head and costs 2 x width parameters; forcing a 12% copy of the root on
    # every task would bound the parameters per task from below and stop any task sharing it.
    adapter_kind = "conv_adapter"

    def timm_kwargs(self, kwargs: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in kwargs.items() if k != "img_size"}   # any input size works
        return {**out, "drop_rate": 0.0, "drop_path_rate": 0.0, "num_classes": 0}

    def check(self, model: TimmModel, name: str) -> None:
        from timm.models.efficientnet import EfficientNet

        if not isinstance(model, EfficientNet) or not all(
                hasattr(model, a) for a in ("conv_stem", "bn1", "blocks", "conv_head", "bn2")):
            raise ConfigError(f"root '{name}' is not a timm EfficientNet with stem, blocks and head conv; "
                              "use tf_efficientnet_lite0 or a sibling")
        if not isinstance(model.conv_head, nn.Conv2d):
            raise ConfigError(f"root '{name}' has no head convolution; use tf_efficientnet_lite0 or a sibling")

    def meta(self, model: TimmModel) -> dict[str, int]:
        return {"depth": len(flat_blocks(model)), "patch_size": 0}

    def check_image_size(self, image_size: int, meta: Mapping[str, int]) -> None:
        if image_size < 32:
            raise ConfigError(f"image size {image_size} is too small for an EfficientNet root (stride 32); "
                              "use --image-size 32 or more")

    def cut(self, model: TimmModel) -> list[Part]:
        blocks = flat_blocks(model)
        stem_out = int(model.conv_stem.out_channels)
        parts: list[Part] = [("stem", "stem", {"channels": stem_out}, detached_state(stem_of(model)))]
        for i, block in enumerate(blocks):
            c_in, c_out = _channels(block)
            parts.append((f"block_{i}", "block", {"index": i, "in": c_in, "out": c_out}, detached_state(block)))
        neck = neck_of(model)
        parts.append(("neck", "neck", {"in": int(model.conv_head.in_channels),
                                       "out": int(model.conv_head.out_channels)}, detached_state(neck)))
        return parts

    def build(self, kind: str, config: Mapping[str, Any], template: TimmModel) -> nn.Module:
        if kind == "stem":
            module: nn.Module = stem_of(template)
        elif kind == "block":
            module = copy.deepcopy(flat_blocks(template)[int(config["index"])])
        elif kind == "neck":
            module = neck_of(template)
        elif kind == "conv_adapter":
            module = ConvAdapter(int(config["channels"]), int(config["width"]))
        else:
            raise ValueError(f"unknown EfficientNet component kind {kind}")
        return module.to(memory_format=torch.channels_last)

    def activations(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last)

    def embed(self, parts: Parts, x: torch.Tensor) -> torch.Tensor:
        return parts["stem"](self.activations(x))

    def features(self, parts: Parts, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(parts["neck"](x), 1).flatten(1)

    def wanted_slots(self, layout: BodyLayout, num_classes: int, image_size: int, *,
                     root: Mapping[str, Mapping[str, Any]], meta: Mapping[str, int]) -> Slots:
        wanted: Slots = {"stem": ("stem", dict(root["stem"]))}
        wanted.update(body_slots(
            layout,
            lambda i: ("conv_adapter", {"channels": int(root[f"block_{i}"]["in"]), "width": layout.adapter_dim}),
            lambda i: ("block", dict(root[f"block_{i}"])), lambda i: int(root[f"block_{i}"]["in"]), axis=1))
        wanted["neck"] = ("neck", dict(root["neck"]))
        wanted["head"] = ("head", {"dim": self.head_dim(root), "num_classes": num_classes})
        return wanted

    def head_dim(self, root: Mapping[str, Mapping[str, Any]]) -> int:
        return int(root["neck"]["out"])

    def depth_choices(self, root: Mapping[str, Mapping[str, Any]], depth: int) -> list[int]:
        """Top blocks can be removed only where the remaining body ends with the channels the neck
        takes (within the last stage); for tf_efficientnet_lite0 that is the full depth only."""
        need = int(root["neck"]["in"])
        return [n for n in range(1, depth + 1) if int(root[f"block_{n - 1}"]["out"]) == need]

    def image_sizes(self, image_size: int, meta: Mapping[str, int]) -> list[int]:
        return sorted({s for s in (image_size - 16, image_size) if s >= 32})

    def prepare_state(self, model: TimmModel, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: v for k, v in state.items() if not k.startswith("classifier.")}


EFFICIENTNET = EfficientNetFamily()
