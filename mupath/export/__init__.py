"""Taking tasks out of a system: ONNX, torch.export (pt2) and a timm-style folder (docs/export.md).

`export_tasks` is what `System.export` and `mupath export` run; `load_exported` turns a folder (or a
.pt2 file) back into an nn.Module without the store."""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from torch import nn

from mupath.errors import ConfigError
from mupath.export.target import FORMATS, check_format, check_target, check_tasks
from mupath.store.store import Store

__all__ = ["ExportResult", "FORMATS", "export_tasks", "load_exported"]


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What an export wrote: the format, the tasks (in output order), the target and its size."""

    format: str
    tasks: tuple[str, ...]
    path: Path
    bytes: int
    timm_loadable: bool = False


def export_tasks(store: Store, tasks: list[str], fmt: str, out: str | os.PathLike[str],
                 force: bool = False) -> ExportResult:
    """Export the retained paths of `tasks` as one model. Everything that can be refused (format, tasks,
    target) is checked before the graph is built or traced."""
    from mupath.export.graph import build_graph
    from mupath.export.spec import component_tensors, spec_from_store
    check_format(fmt)
    if fmt == "onnx":
        from mupath.export.onnx import require_onnx
        require_onnx()
    check_tasks(fmt, tasks)
    spec = spec_from_store(store, tasks)
    target = check_target(out, fmt, force)
    tensors = component_tensors(store, spec)
    if fmt == "folder":
        from mupath.export.folder import export_folder
        size, loadable = export_folder(spec, tensors, target)
        return ExportResult(fmt, tuple(tasks), target, size, loadable)
    graph = build_graph(spec, tensors)
    if fmt == "onnx":
        from mupath.export.onnx import export_onnx
        size = export_onnx(graph, spec, target)
    else:
        from mupath.export.pt2 import export_pt2
        size = export_pt2(graph, spec, target)
    return ExportResult(fmt, tuple(tasks), target, size)


def load_exported(path: str | os.PathLike[str]) -> nn.Module:
    """An exported model as an nn.Module taking uint8 images (N, H, W, C), with no store: a folder
    export (`LoadedExport`, with `.task`, `.class_names`, `.predict`) or a .pt2 file (the program's
    module; {task: logits} when it holds several tasks). ONNX files run in onnxruntime instead."""
    target = Path(path).expanduser()
    if target.is_dir():
        from mupath.export.folder import load_folder
        return load_folder(target)
    if target.suffix == ".pt2" and target.is_file():
        from mupath.export.pt2 import load_pt2
        return load_pt2(target)[0].module()
    if target.suffix == ".onnx":
        raise ConfigError(f"{target} is an ONNX model; run it with onnxruntime (docs/export.md)")
    raise ConfigError(f"{target} is not a mupath export; give a folder written by --format folder or a .pt2 file")
