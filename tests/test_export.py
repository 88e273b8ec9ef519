"""Export (issue 24): each format gives System.predict's classes on the task's test images (largest
logit difference printed and bounded), several tasks export as one model computing their shared
prefix once, a plain path loads with timm alone, and bad input is one line."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch
from conftest import TINY_ROOT, TINY_SETTINGS, blobs_task
from typer.testing import CliRunner

from mupath import System, Task, load_exported
from mupath.cli.main import app
from mupath.export.graph import build_graph, model_input, module_key
from mupath.export.pt2 import load_pt2
from mupath.export.spec import Preprocessing, component_tensors, spec_from_store
from mupath.train.pipeline import as_nchw, to_model_input

ort = pytest.importorskip("onnxruntime")
runner = CliRunner()
#: a 12 px root on the 8 px digits: the graph must resize (8 -> 12, antialiased bilinear)
ROOT = dict(TINY_ROOT, image_size=12)
#: embeddings and block 0 stay the root's in both tasks, so the two paths share a prefix
SHARED = {f"_mu_|clone:{s}": 0.0 for s in ("patch_embed", "cls_token", "pos_embed", "block_0")} | {
    "_mu_|add:adapter_0": 0.0}
SETTINGS = dict(TINY_SETTINGS, clone_root="mutation", ranges={"ds_image_size": []})
LOGIT_TOL = 1e-4      #: onnxruntime's kernels differ from torch's in the last bits only


@pytest.fixture(scope="module")
def store(tmp_path_factory, digits_small):
    """digits: a plain path (no adapters); parity: an adapter in block 1; both share the root's
    embeddings and block 0."""
    d = digits_small
    parity = Task.from_arrays("parity", d.train.images, d.train.labels % 2,
                              val=(d.validation.images, d.validation.labels % 2),
                              test=(d.test.images, d.test.labels % 2), class_names=["even", "odd"])
    system = System.create(tmp_path_factory.mktemp("export") / "store", **ROOT)
    system.add_task(d)
    system.add_task(parity)
    system.evolve(["digits"], **SETTINGS, hparams=SHARED, mutate_adapters=False)
    system.evolve(["parity"], **SETTINGS, hparams=SHARED | {"_mu_|add:adapter_1": 1.0})
    return system


def _test_images(system: System, task: str) -> np.ndarray:
    """The task's stored test images as (N, H, W, C) uint8, what an exported model takes."""
    return system.store.task_data(task)["test.x"].permute(0, 2, 3, 1).contiguous().numpy()


def _agrees(system: System, task: str, logits: np.ndarray, images: np.ndarray, tol: float) -> float:
    """Same class as System.predict on every image; the largest logit difference (printed) within tol."""
    assert np.array_equal(logits.argmax(axis=1), system.predict(task, images))
    diff = float(np.abs(logits - system.logits(task, images).numpy()).max())
    print(f"{task}: largest logit difference {diff:.3g} over {len(images)} test images")
    assert diff <= tol, diff
    return diff


def test_onnx_single_task_matches_predict(store, tmp_path):
    out = tmp_path / "digits.onnx"
    result = store.export("digits", "onnx", out)
    assert result.path == out and out.stat().st_size == result.bytes
    images = _test_images(store, "digits")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (inp,), outputs = session.get_inputs(), session.get_outputs()
    assert inp.name == "images" and inp.type == "tensor(uint8)" and inp.shape[1:] == [8, 8, 1]
    assert isinstance(inp.shape[0], str)                                # a dynamic batch
    assert [o.name for o in outputs] == ["logits"] and outputs[0].type == "tensor(float)"
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["class_names"]) == list(store.task_record("digits").class_names)
    assert json.loads(meta["mupath.path_ids"]) == {"digits": store.store.retained_path("digits").id}
    (logits,) = session.run(None, {"images": images})
    assert logits.dtype == np.float32 and logits.shape == (len(images), 10)
    _agrees(store, "digits", logits, images, LOGIT_TOL)
    (one,) = session.run(None, {"images": images[:1]})                 # batch 1 through the same file
    assert np.allclose(one, logits[:1], atol=1e-5)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]


def test_pt2_round_trip_matches_predict(store, tmp_path):
    out = tmp_path / "parity.pt2"
    store.export("parity", "pt2", out)
    program, meta = load_pt2(out)
    assert meta["classes"] == {"parity": ["even", "odd"]}
    images = _test_images(store, "parity")
    logits = program.module()(torch.from_numpy(images)).numpy()
    _agrees(store, "parity", logits, images, 1e-6)                       # the same torch kernels
    again = load_exported(out)(torch.from_numpy(images[:3]))
    assert torch.allclose(again, torch.from_numpy(logits[:3]), atol=1e-6)      # batch 3: other kernels


def test_folder_of_a_plain_path_loads_with_timm(store, tmp_path):
    import timm
    from safetensors.torch import load_file
    out = tmp_path / "digits"
    result = store.export("digits", "folder", out)
    assert result.timm_loadable
    config = json.loads((out / "config.json").read_text())
    assert config["classes"] == list(store.task_record("digits").class_names)
    assert config["hyperparameters"]["ds_image_size"] == 12 and config["root"]["name"] == "vit_tiny_patch16_224"
    assert [p["slot"] for p in config["path"]][:3] == ["patch_embed", "cls_token", "pos_embed"]
    assert config["preprocessing"]["input_shape"] == [8, 8, 1] and config["weights_layout"] == "timm"
    model = timm.create_model(config["architecture"], num_classes=config["num_classes"], **config["model_args"])
    model.load_state_dict(load_file(out / "model.safetensors"))
    images = _test_images(store, "digits")
    prep = Preprocessing.from_json(config["preprocessing"])
    with torch.no_grad():
        by_timm = model.eval()(to_model_input(as_nchw(images), prep.image_size)).numpy()
    _agrees(store, "digits", by_timm, images, 1e-6)
    loaded = load_exported(out)
    assert loaded.class_names == store.task_record("digits").class_names
    assert np.array_equal(loaded.predict(images), store.predict("digits", images))


def test_folder_of_a_path_with_adapters_loads_with_mupath(store, tmp_path):
    out = tmp_path / "parity"
    result = store.export("parity", "folder", out)
    config = json.loads((out / "config.json").read_text())
    assert not result.timm_loadable and "adapter_1" in config["timm_note"]
    assert config["weights_layout"] == "mupath" and "architecture" not in config
    images = _test_images(store, "parity")
    with torch.no_grad():
        logits = load_exported(out)(torch.from_numpy(images)).numpy()
    _agrees(store, "parity", logits, images, 1e-6)


def test_several_tasks_export_as_one_model_with_the_prefix_once(store, tmp_path):
    paths = {t: store.store.retained_path(t).components for t in ("digits", "parity")}
    shared = [s for s in ("patch_embed", "cls_token", "pos_embed", "block_0")
              if paths["digits"][s] == paths["parity"][s]]
    assert len(shared) == 4, paths                                       # the fixture's premise
    spec = spec_from_store(store.store, ["digits", "parity"])
    graph = build_graph(spec, component_tensors(store.store, spec))
    calls: list[str] = []
    for slot in shared:
        graph.parts[module_key(paths["digits"][slot])].register_forward_hook(lambda m, i, o, s=slot: calls.append(s))
    images = _test_images(store, "digits")
    with torch.no_grad():
        graph(torch.from_numpy(images[:4]))
    assert sorted(calls) == sorted(s for s in shared if s in ("patch_embed", "block_0"))   # once each
    out = tmp_path / "both.onnx"
    store.export(["digits", "parity"], "onnx", out)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits_digits", "logits_parity"]
    for task, logits in zip(("digits", "parity"), session.run(None, {"images": images})):
        _agrees(store, task, logits, images, LOGIT_TOL)
    singles = [tmp_path / "d.onnx", tmp_path / "p.onnx"]
    store.export("digits", "onnx", singles[0])
    store.export("parity", "onnx", singles[1])
    assert _matmuls(out) < _matmuls(singles[0]) + _matmuls(singles[1])
    store.export(["digits", "parity"], "pt2", tmp_path / "both.pt2")
    both = load_exported(tmp_path / "both.pt2")(torch.from_numpy(images))
    assert set(both) == {"digits", "parity"}
    _agrees(store, "parity", both["parity"].numpy(), images, 1e-6)


def _matmuls(path) -> int:
    import onnx
    return sum(n.op_type in ("MatMul", "Gemm") for n in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("shape,size", [((8, 8, 1), 12), ((16, 16, 3), 12), ((12, 12, 4), 12)])
def test_preprocessing_in_onnx_is_the_pipelines(shape, size, tmp_path):
    """Grey, RGB and RGBA; up, down and no resize: onnxruntime's Resize agrees with torch's."""
    from mupath.system import prepare_images
    prep = Preprocessing(shape, size)

    class Prep(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return model_input(x, prep)

    images = np.random.default_rng(0).integers(0, 256, (5, *shape), dtype=np.uint8)
    out = tmp_path / "prep.onnx"
    torch.onnx.export(Prep().eval(), (torch.from_numpy(images),), str(out), dynamo=True, input_names=["x"],
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), opset_version=20, verbose=False)
    (got,) = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": images})
    ref = to_model_input(as_nchw(prepare_images(images, "t")), size).numpy()
    assert torch.equal(model_input(torch.from_numpy(images), prep), torch.from_numpy(ref))
    assert got.shape == ref.shape and np.abs(got - ref).max() < 1e-5


def _fails(args, needle):
    result = runner.invoke(app, ["export", *[str(a) for a in args]])
    text = result.output.strip()
    assert result.exit_code != 0 and needle in text, text
    assert "Traceback" not in text and len(text.splitlines()) == 1, text


def test_bad_input_is_one_line(store, tmp_path):
    folder = store.folder
    _fails([folder, "--task", "nope", "--format", "onnx", "-o", tmp_path / "x.onnx"], "unknown task 'nope'")
    if "fresh" not in store.tasks:
        store.add_task(blobs_task("fresh", n=60))
    _fails([folder, "--task", "fresh", "--format", "onnx", "-o", tmp_path / "x.onnx"], "not been evolved")
    _fails([folder, "--task", "digits", "--format", "tflite", "-o", tmp_path / "x"], "unknown export format")
    _fails([folder, "--format", "onnx", "-o", tmp_path / "x.onnx"], "--task")
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    _fails([folder, "--task", "digits", "--format", "pt2", "-o", blocker / "sub" / "m.pt2"], "cannot write")
    _fails([folder, "--tasks", "digits,parity", "--format", "folder", "-o", tmp_path / "f"], "one task")
    _fails([folder, "--task", "digits", "--format", "folder", "-o", blocker], "is a file")
    taken = tmp_path / "taken.pt2"
    taken.write_bytes(b"keep me")
    _fails([folder, "--task", "digits", "--format", "pt2", "-o", taken], "--force")
    assert taken.read_bytes() == b"keep me"
    result = runner.invoke(app, ["export", str(folder), "--task", "digits", "--format", "pt2", "-o", str(taken),
                                 "--force"])
    assert result.exit_code == 0 and "wrote" in result.output, result.output
    assert load_pt2(taken)[1]["tasks"] == ["digits"]


def test_missing_onnx_packages_name_the_extra(store, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)           # `import onnxscript` now fails
    _fails([store.folder, "--task", "digits", "--format", "onnx", "-o", tmp_path / "x.onnx"],
           "pip install 'mupath[export]'")
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_efficientnet_exports_match_predict(tmp_path, digits_small):
    """The pretrained EfficientNet-Lite0 root (BatchNorm, channels-last, 8 -> 32 px): ONNX and pt2 of a
    path with an adapter, and the folder of a plain path through timm (stem, stages, neck renamed)."""
    system = System.create(tmp_path / "eff", root="tf_efficientnet_lite0", weights="package", image_size=32)
    system.add_task(digits_small)
    system.add_task(blobs_task("plain", n=90))
    never = {f"_mu_|clone:block_{i}": 0.0 for i in range(14)} | {"_mu_|clone:stem": 0.0}
    settings = dict(generations=1, candidates=1, steps_per_validation=3, validations=1, batch_size=16,
                    val_limit=30, ranges={"ds_image_size": []})
    system.evolve(["plain"], **settings, hparams=never, mutate_adapters=False)     # first: from the root
    system.evolve(["digits"], **settings, hparams=never | {"_mu_|add:adapter_3": 1.0})
    images = _test_images(system, "digits")
    system.export("digits", "onnx", tmp_path / "e.onnx")
    session = ort.InferenceSession(str(tmp_path / "e.onnx"), providers=["CPUExecutionProvider"])
    _agrees(system, "digits", session.run(None, {"images": images})[0], images, LOGIT_TOL)
    system.export("digits", "pt2", tmp_path / "e.pt2")
    logits = load_exported(tmp_path / "e.pt2")(torch.from_numpy(images)).numpy()
    _agrees(system, "digits", logits, images, 1e-5)
    import timm
    from safetensors.torch import load_file
    assert system.export("plain", "folder", tmp_path / "plain").timm_loadable
    config = json.loads((tmp_path / "plain" / "config.json").read_text())
    model = timm.create_model(config["architecture"], num_classes=config["num_classes"], **config["model_args"])
    model.load_state_dict(load_file(tmp_path / "plain" / "model.safetensors"))
    images = _test_images(system, "plain")
    with torch.no_grad():
        by_timm = model.eval()(to_model_input(as_nchw(images), 32)).numpy()
    _agrees(system, "plain", by_timm, images, 1e-5)          # timm runs NCHW, mupath channels-last
