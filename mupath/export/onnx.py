"""ONNX export (design.md, "Export contract"): one uint8 input `images` (N, H, W, C) at the tasks'
stored image shape with a dynamic N, the preprocessing inside the graph, float32 logits (N, classes)
per task. Made with the dynamo exporter (`torch.onnx.export(..., dynamo=True)`), opset 20 (antialiased
Resize needs 18 or newer). Class names, task names, path ids and the preprocessing go in the model's
metadata_props, so the file alone says what its outputs mean."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mupath.errors import ConfigError
from mupath.export.graph import ExportGraph
from mupath.export.spec import ExportSpec
from mupath.store.atomic import atomic_write_bytes

if TYPE_CHECKING:
    import onnx

INPUT = "images"
OPSET = 20
_MAX_PROTO = 2 ** 31 - 1     #: protobuf's limit for one file (larger models need external data)


def require_onnx() -> None:
    """The ONNX exporter's packages are an optional extra: say so in one line when they are missing."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ConfigError("ONNX export needs the onnx and onnxscript packages: "
                          "pip install 'mupath[export]'") from None


def output_names(spec: ExportSpec) -> list[str]:
    """`logits` for one task; `logits_<task>` per task, in the order given, for several."""
    if len(spec.tasks) == 1:
        return ["logits"]
    return [f"logits_{t.task}" for t in spec.tasks]


def metadata(spec: ExportSpec) -> dict[str, str]:
    """metadata_props: strings only (JSON where a value has structure)."""
    names = output_names(spec)
    props = {
        "mupath.tasks": json.dumps(spec.task_names),
        "mupath.outputs": json.dumps(dict(zip(spec.task_names, names))),
        "mupath.classes": json.dumps({t.task: list(t.class_names) for t in spec.tasks}),
        "mupath.path_ids": json.dumps({t.task: t.path_id for t in spec.tasks}),
        "mupath.preprocessing": json.dumps({t.task: t.preprocessing.to_json() for t in spec.tasks}),
        "mupath.root": spec.root.to_json(),
    }
    if len(spec.tasks) == 1:
        props["class_names"] = json.dumps(list(spec.tasks[0].class_names))
    return props


def example_input(spec: ExportSpec, batch: int = 2) -> torch.Tensor:
    """A uint8 batch at the stored shape (batch 2: an example batch of 1 would be specialised)."""
    h, w, c = spec.tasks[0].preprocessing.input_shape
    return torch.zeros((batch, h, w, c), dtype=torch.uint8)


def export_onnx(graph: ExportGraph, spec: ExportSpec, out: Path) -> int:
    """Write the ONNX model to `out` (atomically); returns its size in bytes."""
    require_onnx()
    import onnx
    batch = torch.export.Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(graph, (example_input(spec),), dynamo=True, input_names=[INPUT],
                                    output_names=output_names(spec), dynamic_shapes=({0: batch},),
                                    opset_version=OPSET, verbose=False, optimize=True)
    assert program is not None, "the dynamo exporter returns its program"
    proto = program.model_proto
    dedupe_initializers(proto)
    onnx.helper.set_model_props(proto, metadata(spec))
    proto.producer_name = "mupath"
    proto.doc_string = (f"mupath export of {', '.join(spec.task_names)}: uint8 images (N, H, W, C) -> "
                        "float32 logits per task; class names in metadata_props")
    data = proto.SerializeToString()
    if len(data) > _MAX_PROTO:
        raise ConfigError(f"the ONNX model is {len(data) / 2**30:.1f} GiB, over protobuf's 2 GiB limit for "
                          "one file; export fewer tasks at once, or use --format pt2")
    atomic_write_bytes(out, data)
    return len(data)


def dedupe_initializers(proto: onnx.ModelProto) -> int:
    """Keep one copy of identical initializers; returns how many were dropped. The exporter folds a
    weight's transpose once per use, so a component shared by two tasks that run it on different
    activations would otherwise be stored twice."""
    graph = proto.graph
    first: dict[tuple[int, tuple[int, ...], bytes], str] = {}
    rename: dict[str, str] = {}
    keep = []
    for init in graph.initializer:
        key = (init.data_type, tuple(init.dims), _content(init))
        if key in first:
            rename[init.name] = first[key]
        else:
            first[key] = init.name
            keep.append(init)
    if not rename:
        return 0
    del graph.initializer[:]
    graph.initializer.extend(keep)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    return len(rename)


def _content(init: onnx.TensorProto) -> bytes:
    """An initializer's data: its raw bytes, or (data in typed fields) the tensor without its name."""
    if init.raw_data:
        return bytes(init.raw_data)
    blank = type(init)()
    blank.CopyFrom(init)
    blank.name = ""
    return blank.SerializeToString()
