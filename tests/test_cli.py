"""The command line end to end on tiny data, and its one-line errors."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from mupath.cli.main import app

runner = CliRunner()
TINY = ["--generations", "1", "--candidates", "2", "--steps-per-validation", "10", "--validations", "1",
        "--batch-size", "32", "--val-limit", "100"]


def _ok(args):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def _fails(args, needle):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code != 0
    text = result.output.strip()
    assert needle in text, text
    assert "Traceback" not in text and len(text.splitlines()) == 1, text
    return text


@pytest.fixture
def npz_source(tmp_path, digits_small):
    path = tmp_path / "mydigits.npz"
    np.savez(path, x_train=digits_small.train.images[:300, :, :, 0], y_train=digits_small.train.labels[:300],
             x_test=digits_small.test.images[:100, :, :, 0], y_test=digits_small.test.labels[:100])
    return path


def test_cli_end_to_end(tmp_path, npz_source, digits_small):
    store = tmp_path / "store"
    _ok(["init", store, "--root", "vit_tiny_patch16_224", "--image-size", 8, "--patch-size", 4, "--depth", 2, "--embed-dim", 32, "--num-heads", 2])
    out = _ok(["add-task", store, npz_source])
    assert "added task 'mydigits'" in out
    _ok(["add-task", store, "lfw_faces", "--name", "faces"])
    out = _ok(["evolve", store, "--tasks", "mydigits,faces", *TINY, "--hparam", "opt_lr=0.002",
               "--range", "opt_lr=0.001,0.002,0.005"])
    assert "mydigits" in out and "faces" in out
    out = _ok(["status", store])
    assert "mydigits" in out and "params owned" in out
    out = _ok(["eval", store, "--task", "mydigits"])
    acc = float(out.split()[-1])
    assert 0.0 <= acc <= 1.0
    png = tmp_path / "digit.png"
    Image.fromarray(digits_small.test.images[0, :, :, 0]).save(png)
    npy = tmp_path / "batch.npy"
    np.save(npy, digits_small.test.images[:3])
    out = _ok(["predict", store, "--task", "mydigits", png, npy])
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 4 and all(0 <= int(line.split()[1]) < 10 for line in lines)
    out = _ok(["history", store, "mydigits"])
    # 1 generation x 2 candidates of a first visit: both descend from other paths, so both enter the
    # population (a cross-task child has no bar) and exactly one is kept
    assert out.count("retained") == 1 and out.count("in population") == 1, out
    graph = tmp_path / "g.png"
    _ok(["graph", store, "-o", graph])
    assert graph.read_bytes()[:4] == b"\x89PNG"


def test_cli_bad_input_gives_one_line_errors(tmp_path, npz_source):
    store = tmp_path / "store"
    _fails(["status", tmp_path / "nowhere"], "no mupath store")
    _fails(["init", store, "--root", "resnet18"], "not of a supported family")
    _ok(["init", store, "--root", "vit_tiny_patch16_224", "--image-size", 8, "--patch-size", 4, "--depth", 1, "--embed-dim", 16, "--num-heads", 2])
    _fails(["init", store], "already exists")
    _fails(["add-task", store, tmp_path / "missing_dir"], "")
    _fails(["evolve", store, "--tasks", "nope"], "unknown task")
    _ok(["add-task", store, npz_source])
    _fails(["evolve", store, "--hparam", "opt_lr"], "KEY=VALUE")
    _fails(["evolve", store, "--range", "=0.1,0.2"], "KEY=VALUE")      # no key at all
    _fails(["evolve", store, "--hparam", "bogus=1"], "unknown hyperparameter")
    _fails(["evolve", store, "--workers", "2", "--executor", "inprocess"], "one candidate at a time")
    _fails(["evolve", store, "--scale-factor", "1.5"], "scale_factor")
    _fails(["predict", store, "--task", "mydigits", npz_source], "not been evolved")
    _fails(["graph", store, "-o", tmp_path / "g.jpg"], ".png")
    _fails(["history", store, "mydigits"], "not been evolved")
    _fails(["history", store, "nope"], "unknown task")
    _fails(["init", tmp_path / "s2", "--root", "vit_tiny_patch16_224", "--weights", tmp_path / "none.safetensors"], "does not exist")


def test_cli_bad_sizes_values_and_inputs_are_one_line_errors(tmp_path, npz_source):
    """Values timm, torch or numpy would reject deep inside (a zero division, an assertion, a zip error)
    are caught where the user gave them; a rejected evolve leaves no run behind."""
    from mupath import System
    sizes = ["--image-size", 8, "--patch-size", 4, "--depth", 1, "--embed-dim", 16, "--num-heads", 2]
    _fails(["init", tmp_path / "a", "--root", "vit_tiny_patch16_224", *sizes[:2], "--patch-size", 0], "patch_size must be a positive integer")
    _fails(["init", tmp_path / "a", "--root", "vit_tiny_patch16_224", *sizes[:2], "--depth", -1], "depth must be a positive integer")
    _fails(["init", tmp_path / "a", "--root", "vit_tiny_patch16_224", *sizes[:2], "--embed-dim", 30, "--num-heads", 4], "not divisible")
    _fails(["init", tmp_path / "a", "--root", "vit_tiny_patch16_224", "--image-size", 100000], "larger than 1024")
    _fails(["init", tmp_path / "a", "--root", "vit_tiny_patch16_224", "--image-size", 8, "--patch-size", 16], "larger than the image size")
    assert not (tmp_path / "a").exists()
    (tmp_path / "plain").write_text("x")
    _fails(["init", tmp_path / "plain" / "sub", "--root", "vit_tiny_patch16_224", *sizes], "cannot write")
    store = tmp_path / "store"
    _ok(["init", store, "--root", "vit_tiny_patch16_224", *sizes])
    _ok(["add-task", store, npz_source])
    for bad, needle in [("num_layers=99", "not a depth this root offers"), ("num_layers=abc", "num_layers"),
                        ("opt_name=rmsprop", "sgd or adamw"), ("opt_lr=-1", "opt_lr=-1 is invalid"),
                        ("adapter_dim=0", "adapter_dim"), ("_mu_=5", "_mu_"), ("ds_crop=maybe", "true or false"),
                        ("ds_image_size=2", "does not fit this root"), ('opt_lr=[1,2]', "opt_lr")]:
        _fails(["evolve", store, "--hparam", bad], needle)
    _fails(["evolve", store, "--range", "num_layers=1,99"], "not a depth")
    assert System.open(store).manifest.run_keys() == {}       # no run row for a rejected start
    for name, write in [("empty.npz", lambda p: np.savez(p)), ("text.npz", lambda p: p.write_text("hello")),
                        ("objects.npy", lambda p: np.save(p, np.array([{"a": 1}], dtype=object))),
                        ("zero.npy", lambda p: p.write_bytes(b""))]:
        write(tmp_path / name)
        _fails(["predict", store, "--task", "mydigits", tmp_path / name], name)
    png = tmp_path / "cut.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    png.write_bytes(png.read_bytes()[:40])
    _fails(["predict", store, "--task", "mydigits", png], "cut.png")
    _fails(["predict", store, "--task", "mydigits", tmp_path], "is a folder")


def test_history_table_lines():
    """The pieces `mupath history` prints: mutations in one line, each candidate's outcome, and a
    caption for a commit without a log or one that kept the task's previous path."""
    from rich.console import Console
    from mupath.cli.tables import _commit_table, mutation_summary, tried_status
    from mupath.store.log import CommitRecord, TriedCandidate
    assert mutation_summary({}) == "no mutation"
    assert mutation_summary({"cloned": ["block_0", "patch_embed"], "adapters_added": [1],
                             "opt_lr": [0.001, 0.002]}) == "clone block_0, patch_embed; +adapter 1; opt_lr 0.001->0.002"
    assert mutation_summary({"loras_added": [0, 2], "ssfs_added": [1], "adapters_removed": [3],
                             "lora_rank": [4, 8]}) == "-adapter 3; +ssf 1; +lora 0, 2; lora_rank 4->8"
    entry = TriedCandidate.from_json(dict(path="p1", generation=0, parent_task="a", mutations={}, best_val=0.5,
                                          owned_params=10, accounted_params=12.0, score=None, entered=False,
                                          retained=False))
    assert tried_status(entry.__class__.from_json({**entry.to_json(), "retained": True, "entered": True})) == "retained"
    assert tried_status(TriedCandidate.from_json({"path": "p", "entered": True})) == "in population"
    assert tried_status(entry) == "below its bar"
    assert tried_status(TriedCandidate.from_json({"path": "p", "failure": "RuntimeError: boom"})) == \
        "failed: RuntimeError: boom"
    rows = [dict(id=1, task="t", path_id="p0", run_id="r1", iteration=0, time=0.0, test_accuracy=0.9,
                 info={"score": 0.8}),
            dict(id=2, task="t", path_id="p1", run_id="r2", iteration=1, time=1.0, test_accuracy=0.9,
                 info={"score": 0.8, "tried": [entry.to_json(), {**entry.to_json(), "device": "cuda"}]})]
    commits = [CommitRecord.from_row(r) for r in rows]
    old, kept = (_commit_table("t", c) for c in commits)
    assert "predates the search log" in old.caption and old.row_count == 0
    assert "kept that path" in kept.caption and kept.row_count == 2
    assert kept.title.endswith(", trained on cuda") and "trained on" not in old.title
    console = Console(width=200, record=True)
    console.print(kept)
    text = console.export_text()
    assert "0.5000" in text and "below its bar" in text and "12" in text
