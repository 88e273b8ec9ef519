"""torch.export (pt2) export: the same graph as ONNX (uint8 (N, H, W, C) in, the preprocessing inside,
logits out; a dict {task: logits} for several tasks), traced by `torch.export.export` with a dynamic
batch and written with `torch.export.save`. What the outputs mean (tasks, classes, path ids,
preprocessing) rides along as the extra file `mupath.json`; `load_pt2` reads both back."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import torch

from mupath.export.graph import ExportGraph
from mupath.export.onnx import example_input
from mupath.export.spec import ExportSpec
from mupath.store.atomic import atomic_output

EXTRA = "mupath.json"


def pt2_metadata(spec: ExportSpec) -> dict[str, Any]:
    return {"tasks": spec.task_names,
            "classes": {t.task: list(t.class_names) for t in spec.tasks},
            "path_ids": {t.task: t.path_id for t in spec.tasks},
            "preprocessing": {t.task: t.preprocessing.to_json() for t in spec.tasks},
            "root": json.loads(spec.root.to_json())}


def export_pt2(graph: ExportGraph, spec: ExportSpec, out: Path) -> int:
    """Write the exported program to `out` (atomically); returns its size in bytes."""
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.export.export(graph, (example_input(spec),), dynamic_shapes=({0: batch},))
        with atomic_output(out) as tmp:
            torch.export.save(program, tmp, extra_files={EXTRA: json.dumps(pt2_metadata(spec))})
    return out.stat().st_size


def load_pt2(path: str | Path) -> tuple[torch.export.ExportedProgram, dict[str, Any]]:
    """The exported program and its metadata (tasks, classes, path ids, preprocessing)."""
    extra = {EXTRA: ""}
    program = torch.export.load(str(path), extra_files=extra)
    return program, json.loads(extra[EXTRA]) if extra[EXTRA] else {}
