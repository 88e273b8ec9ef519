"""When a path is a plain timm model, and its tensors under timm's own names.

A path is plain when it has no adapters and its body is the root's blocks 0..n-1 in order (components
shared from other tasks are fine: they are the same layers with other weights). Then
`timm.create_model(name, **model_args, num_classes=K)` builds exactly its architecture and the
renamed tensors load into it with `strict=True`: the folder export is a timm model folder. The rename
is checked against a freshly built timm model (names and shapes), so a layout this module does not
know is reported as "not plain" rather than exported wrong."""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mupath.export.spec import ExportedTask, ExportSpec


@dataclasses.dataclass(frozen=True)
class TimmPlan:
    """How timm rebuilds the path: `timm.create_model(model_name, **model_args, num_classes=...)`."""

    model_name: str
    model_args: dict[str, Any]
    num_classes: int


def timm_plan(spec: ExportSpec, task: ExportedTask) -> TimmPlan | str:
    """The plan for a plain path, or one line saying why the path is not a plain timm model."""
    kinds = {slot: spec.components[cid].kind for slot, cid in task.slots}
    adapters = sorted(s for s in kinds if s.startswith(("adapter_", "ssf_", "lora_")))
    if adapters:
        return (f"the path has adapters, scale-and-shift or low-rank deltas ({', '.join(adapters)}), "
                "which timm models do not have")
    blocks = [s for s in kinds if s.startswith("block_")]
    if blocks != [f"block_{i}" for i in range(len(blocks))]:
        return "the path's blocks are not the root's first blocks in order"
    family = spec.root.family.name
    args = {k: v for k, v in spec.root.kwargs.items()}
    size = task.preprocessing.image_size
    if family == "vit":
        args.update(img_size=size, depth=len(blocks))
    elif family == "efficientnet":
        args.pop("img_size", None)
        stages: Any = _timm_model(TimmPlan(spec.root.name, args, 1)).blocks
        if len(blocks) != sum(len(stage) for stage in stages):
            return "the path has fewer blocks than the EfficientNet root, which timm cannot build"
    else:
        return f"mupath does not know timm's names for the {family} family"
    return TimmPlan(spec.root.name, args, len(task.class_names))


def _timm_model(plan: TimmPlan) -> nn.Module:
    """The plan's architecture with random weights (never a download)."""
    import timm
    return timm.create_model(plan.model_name, pretrained=False, num_classes=plan.num_classes,
                             **plan.model_args).eval()


def _rename(family: str, slot: str, key: str, stages: list[tuple[int, int]]) -> str:
    """A component tensor's name in the timm model."""
    if slot.startswith("block_"):
        i = int(slot.split("_")[1])
        return f"blocks.{i}.{key}" if family == "vit" else f"blocks.{stages[i][0]}.{stages[i][1]}.{key}"
    if family == "vit":
        fixed = {"cls_token": {"token": "cls_token"}, "pos_embed": {"pos_embed": "pos_embed"}}
        if slot in fixed:
            return fixed[slot][key]
        return f"{slot}.{key}"                      # patch_embed, norm, head keep timm's names
    conv, bn = {"stem": ("conv_stem", "bn1"), "neck": ("conv_head", "bn2")}.get(slot, ("", ""))
    if conv:
        part, rest = key.split(".", 1)
        return f"{conv if part == 'conv' else bn}.{rest}"
    if slot == "head":
        return f"classifier.{key}"
    raise ValueError(f"no timm name for slot {slot}")


def timm_state(spec: ExportSpec, task: ExportedTask, plan: TimmPlan,
               tensors: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor] | str:
    """The path's tensors under timm's names (checked against the built timm model), or why not."""
    model = _timm_model(plan)
    stages = [(s, j) for s, stage in enumerate(getattr(model, "blocks", [])) for j, _ in enumerate(stage)] \
        if spec.root.family.name == "efficientnet" else []
    state: dict[str, torch.Tensor] = {}
    for slot, cid in task.slots:
        for key, value in tensors[cid].items():
            if key.endswith("num_batches_tracked"):
                continue
            state[_rename(spec.root.family.name, slot, key, stages)] = value.contiguous()
    own = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    if set(own) != set(state):
        odd = sorted(set(own) ^ set(state))
        return f"timm's {plan.model_name} names its tensors differently (e.g. '{odd[0]}')"
    for key, value in own.items():
        if value.shape != state[key].shape:
            return (f"timm's {plan.model_name} has '{key}' shaped {tuple(value.shape)}, "
                    f"the path {tuple(state[key].shape)}")
    return state


def load_timm(plan: TimmPlan, state: Mapping[str, torch.Tensor]) -> nn.Module:
    """The timm model of a plain path, with its tensors (strict: every tensor named, none left over)."""
    model = _timm_model(plan)
    model.load_state_dict(dict(state), strict=True)      # BatchNorm fills num_batches_tracked itself
    return model.requires_grad_(False).eval()
