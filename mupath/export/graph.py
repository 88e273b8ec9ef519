"""The exported function as one nn.Module: uint8 images in, logits out, the preprocessing inside.

Several tasks go in one graph: each component is registered once (under its component id), tasks at
the same image size share one preprocessed input, and the trie over component ids that
`mupath.model.multipath.shared_forward` walks is walked here too, so a shared prefix is computed once
and appears once in an ONNX or pt2 graph. Everything data-dependent in the forward is static Python
(slots, sizes, channel counts), so `torch.export` traces it into a plain graph with a dynamic batch."""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mupath.export.spec import ExportedTask, ExportSpec, Preprocessing
from mupath.model.components import ComponentSpec, is_body_slot, load_component
from mupath.model.deltas import LowRankDelta, block_slot, delta_slot
from mupath.model.families import RootFamily


def module_key(component_id: str) -> str:
    """A component id as a submodule name (ids like `root-block_0` carry a dash)."""
    return component_id.replace("-", "_").replace(".", "_")


def model_input(images: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """(N, H, W, C) uint8 -> (N, 3, S, S) float32 in [-1, 1], op for op what `prepare_images`,
    `as_nchw` and `to_model_input` do in `System.predict` (division, not a reciprocal multiply, so
    the bits agree)."""
    x = images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    channels = prep.input_shape[2]
    if channels == 1:
        x = x.expand(-1, 3, -1, -1)
    elif channels == 4:
        x = x[:, :3]
    size = prep.image_size
    if prep.input_shape[0] != size or prep.input_shape[1] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.contiguous()


class ExportGraph(nn.Module):
    """Images (N, H, W, C) uint8 -> logits (N, classes) for one task, or {task: logits} for several."""

    def __init__(self, spec: ExportSpec, components: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.family: RootFamily = spec.root.family
        self.tasks: list[ExportedTask] = list(spec.tasks)
        self.parts = nn.ModuleDict({module_key(cid): components[cid] for cid in spec.components})
        #: each (block, low-rank delta) pair of a path as one block with the delta merged into its weights
        self.merged = nn.ModuleDict()
        for t in self.tasks:
            slots = dict(t.slots)
            for slot, cid in t.slots:
                delta = components[cid]
                if isinstance(delta, LowRankDelta):
                    block = slots[block_slot(slot)]
                    self.merged[_merged_key(block, cid)] = delta.merged(components[block])
        self.eval()

    @property
    def task_names(self) -> list[str]:
        return [t.task for t in self.tasks]

    def _modules_of(self, task: ExportedTask) -> dict[str, nn.Module]:
        return {slot: self.parts[module_key(cid)] for slot, cid in task.slots}

    def forward(self, images: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        inputs: dict[int, torch.Tensor] = {}
        groups: dict[tuple[int, tuple[str, ...]], list[ExportedTask]] = {}
        for t in self.tasks:
            size = t.preprocessing.image_size
            if size not in inputs:
                inputs[size] = model_input(images, t.preprocessing)
            embed = tuple(cid for slot, cid in t.slots if slot in self.family.embed_slots)
            groups.setdefault((size, embed), []).append(t)
        out: dict[str, torch.Tensor] = {}
        for (size, _), tasks in groups.items():
            parts = self._modules_of(tasks[0])
            tokens = self.family.activations(self.family.embed(parts, inputs[size]))
            self._branch(tasks, tokens, 0, out)
        if len(self.tasks) == 1:
            return out[self.tasks[0].task]
        return {t.task: out[t.task] for t in self.tasks}

    def _branch(self, tasks: list[ExportedTask], tokens: torch.Tensor, depth: int,
                out: dict[str, torch.Tensor]) -> None:
        """Run body slot `depth` once per distinct component among `tasks`, then recurse per group."""
        by_next: dict[str, list[ExportedTask]] = {}
        for t in tasks:
            body = _body(t)
            if depth == len(body):
                out[t.task] = self.family.head_logits(self._modules_of(t), tokens)
            else:
                by_next.setdefault(body[depth][1], []).append(t)
        for cid, group in by_next.items():
            self._branch(group, self._module(group[0], depth, cid)(tokens), depth + 1, out)

    def _module(self, task: ExportedTask, depth: int, cid: str) -> nn.Module:
        """Body slot `depth` of `task`: its component, or for a block under a low-rank delta the block
        with the delta merged. Every task of a group shares the prefix up to here, delta included."""
        slot = _body(task)[depth][0]
        delta = dict(task.slots).get(delta_slot(slot)) if slot.startswith("block_") else None
        return self.merged[_merged_key(cid, delta)] if delta is not None else self.parts[module_key(cid)]


def _merged_key(block: str, delta: str) -> str:
    return f"{module_key(block)}__{module_key(delta)}"


def _body(task: ExportedTask) -> list[tuple[str, str]]:
    return [(s, c) for s, c in task.slots if is_body_slot(s)]


def build_graph(spec: ExportSpec, tensors: Mapping[str, Mapping[str, torch.Tensor]]) -> ExportGraph:
    """The graph of `spec` with each component rebuilt the one way mupath builds components
    (`load_component`: frozen, from its tensors), so exported and stored models are the same layers."""
    modules = {cid: load_component(ComponentSpec(c.kind, c.config), spec.root, dict(tensors[cid]))
               for cid, c in spec.components.items()}
    return ExportGraph(spec, modules)
