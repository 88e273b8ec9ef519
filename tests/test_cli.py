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
    assert "Traceback" not in text
    return text


@pytest.fixture
def npz_source(tmp_path, digits_small):
    path = tmp_path / "mydigits.npz"
    np.savez(path, x_train=digits_small.train.images[:300, :, :, 0], y_train=digits_small.train.labels[:300],
             x_test=digits_small.test.images[:100, :, :, 0], y_test=digits_small.test.labels[:100])
    return path


def test_cli_end_to_end(tmp_path, npz_source, digits_small):
    store = tmp_path / "store"
    _ok(["init", store, "--image-size", 8, "--patch-size", 4, "--depth", 2, "--embed-dim", 32, "--num-heads", 2])
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
    assert "mutations" in out and out.count("retained") == 1, out
    graph = tmp_path / "g.png"
    _ok(["graph", store, "-o", graph])
    assert graph.read_bytes()[:4] == b"\x89PNG"


def test_cli_bad_input_gives_one_line_errors(tmp_path, npz_source):
    store = tmp_path / "store"
    _fails(["status", tmp_path / "nowhere"], "no mupath store")
    _fails(["init", store, "--root", "resnet18"], "not of a supported family")
    _ok(["init", store, "--image-size", 8, "--patch-size", 4, "--depth", 1, "--embed-dim", 16, "--num-heads", 2])
    _fails(["init", store], "already exists")
    _fails(["add-task", store, tmp_path / "missing_dir"], "")
    _fails(["evolve", store, "--tasks", "nope"], "unknown task")
    _ok(["add-task", store, npz_source])
    _fails(["evolve", store, "--hparam", "opt_lr"], "KEY=VALUE")
    _fails(["evolve", store, "--hparam", "bogus=1"], "unknown hyperparameter")
    _fails(["evolve", store, "--workers", "2", "--executor", "inprocess"], "one candidate at a time")
    _fails(["evolve", store, "--scale-factor", "1.5"], "scale_factor")
    _fails(["predict", store, "--task", "mydigits", npz_source], "not been evolved")
    _fails(["graph", store, "-o", tmp_path / "g.jpg"], ".png")
    _fails(["history", store, "mydigits"], "not been evolved")
    _fails(["history", store, "nope"], "unknown task")
    _fails(["init", tmp_path / "s2", "--weights", tmp_path / "none.safetensors"], "does not exist")
