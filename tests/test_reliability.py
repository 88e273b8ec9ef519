"""Reliability: `mupath verify` finds every kind of damage and names the tasks it touches (the others
stay usable); `--fix` removes leftovers only; files respect the umask; a full disk leaves the store as
it was; crash points fire and the store survives them; `predict` answers any input with class ids or
one `MupathError`."""
from __future__ import annotations

import errno
import importlib.util
import os
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp
from typer.testing import CliRunner

from conftest import TINY_ROOT, blobs_task
from mupath import System
from mupath.cli.main import app
from mupath.errors import MupathError, StoreError
from mupath.store import blobs as blobs_module
from mupath.store.atomic import atomic_output, file_mode
from mupath.store.blobs import BlobStore
from mupath.store.records import ROOT_TASK
from mupath.store.verify import CORRUPT, MANIFEST, MISSING, ORPHAN, fix_store, verify_store

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()
TINY = dict(generations=1, candidates=2, steps_per_validation=10, validations=1, batch_size=32, val_limit=200)


@pytest.fixture(scope="module")
def evolved(tmp_path_factory, digits_small) -> Path:
    """A tiny store with two committed tasks (digits, b1) and one added but not evolved (b2)."""
    torch.set_num_threads(1)
    store = tmp_path_factory.mktemp("evolved") / "store"
    system = System.create(store, **TINY_ROOT)
    system.add_task(digits_small)
    system.add_task(blobs_task("b1", seed=1))
    system.add_task(blobs_task("b2", seed=2))
    system.evolve(["digits", "b1"], seed=1, **TINY)
    system.close()
    return store


@pytest.fixture
def store(evolved, tmp_path) -> Path:
    """A private copy of the evolved store, free to damage."""
    copy = tmp_path / "copy"
    shutil.copytree(evolved, copy)
    return copy


def _open(store: Path) -> System:
    return System.open(store)


def _owned(system: System, task: str) -> str:
    """A component only `task` uses (its head)."""
    cid = system.manifest.retained()[task].components["head"]
    users = [t for t, p in system.manifest.retained().items() if cid in p.components.values()]
    assert users == [task]
    return cid


def _blob_file(system: System, sha: str) -> Path:
    return system.blobs.path_of(sha)


def _verify_cli(store: Path, *extra: str):
    result = runner.invoke(app, ["verify", str(store), *extra])
    assert "Traceback" not in result.output
    return result


def _kinds(report) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    for p in report.problems:
        out.setdefault(p.kind, []).append(p.tasks)
    return out


def _snapshot(store: Path) -> dict:
    """Everything committed: manifest tables (but the runs log) and the blob files with their bytes."""
    db = sqlite3.connect(store / "manifest.sqlite")
    try:
        tables = {t: sorted(map(repr, db.execute(f"SELECT * FROM {t}")))
                  for t in ("meta", "tasks", "components", "paths", "retained", "offspring", "commits", "checks")}
    finally:
        db.close()
    files = {str(p.relative_to(store)): p.read_bytes() for p in (store / "blobs").rglob("*") if p.is_file()}
    return {"tables": tables, "files": files}


# ---- verify: healthy and damaged stores -----------------------------------------------------------
def test_verify_a_healthy_store(store):
    report = verify_store(_open(store).store)
    assert report.healthy, [p.line() for p in report.problems]
    assert report.checked == ["digits", "b1"] and report.usable == ["digits", "b1"]
    result = _verify_cli(store)
    assert result.exit_code == 0, result.output
    assert "healthy" in result.output and "2 task(s) re-run bit for bit" in result.output


def test_a_truncated_component_blob_touches_only_its_task(store):
    system = _open(store)
    cid = _owned(system, "b1")
    path = _blob_file(system, system.manifest.components()[cid].blob)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    report = verify_store(_open(store).store)
    assert _kinds(report) == {CORRUPT: [["b1"]]}
    assert "truncated or edited" in report.problems[0].message and cid in report.problems[0].message
    assert report.checked == ["digits"] and report.touched == ["b1"]
    result = _verify_cli(store)
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("corrupt-blob:") and lines[0].endswith("[tasks: b1]")
    assert "still usable: digits" in lines[-1]


def test_an_edited_data_blob_touches_its_task(store):
    system = _open(store)
    path = _blob_file(system, system.task_record("digits").data_blob)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01                 # one flipped bit, same size
    path.write_bytes(bytes(data))
    report = verify_store(_open(store).store)
    assert _kinds(report) == {CORRUPT: [["digits"]]}
    assert report.checked == ["b1"]


def test_a_deleted_reference_blob_touches_its_task(store):
    system = _open(store)
    _blob_file(system, system.manifest.checks()["b1"].logits_blob).unlink()
    report = verify_store(_open(store).store)
    assert _kinds(report) == {MISSING: [["b1"]]}
    assert "reference logits of task 'b1'" in report.problems[0].message
    assert report.checked == ["digits"]


def test_a_damaged_shared_component_touches_every_user(store):
    system = _open(store)
    retained = system.manifest.retained()
    cid = retained[ROOT_TASK].components["block_1"]          # a root block: used by the root, maybe others
    users = [t for t in (ROOT_TASK, "digits", "b1") if cid in retained[t].components.values()]
    _blob_file(system, system.manifest.components()[cid].blob).unlink()
    report = verify_store(_open(store).store)
    assert _kinds(report) == {MISSING: [users]}
    assert report.checked == [t for t in ("digits", "b1") if t not in users]


def test_a_deleted_component_row_is_a_manifest_problem(store):
    system = _open(store)
    cid = _owned(system, "digits")
    blob = system.manifest.components()[cid].blob
    system.manifest.db.execute("DELETE FROM components WHERE id=?", (cid,))
    report = verify_store(_open(store).store)
    kinds = _kinds(report)
    assert kinds[MANIFEST] == [["digits"]] and cid in report.problems[0].message
    assert kinds[ORPHAN] == [[]] and blob in next(p.message for p in report.problems if p.kind == ORPHAN)
    assert set(kinds) == {MANIFEST, ORPHAN}
    assert report.checked == ["b1"]


def test_other_manifest_inconsistencies(store):
    system = _open(store)
    db = system.manifest.db
    db.execute("INSERT INTO components SELECT 'cunused', kind, slot, config, blob, num_params, 'b1', created_at "
               "FROM components WHERE id='root-norm'")
    db.execute("DELETE FROM retained WHERE task=?", (ROOT_TASK,))
    report = verify_store(_open(store).store)
    messages = [p.line() for p in report.problems]
    assert any("__root__ has no retained path" in m for m in messages), messages
    assert any("cunused" in m and "used by no retained path" in m for m in messages), messages
    # the root's components now have no retained user unless a task shares them; both tasks still check
    assert report.checked == ["digits", "b1"]


def test_orphans_are_reported_and_fix_removes_only_them(store):
    system = _open(store)
    referenced = {sha: _blob_file(system, sha).read_bytes() for sha in system.manifest.referenced_blobs()}
    orphan = system.blobs.put_bytes(b"a blob nothing references")
    tmp = _blob_file(system, orphan).parent / ".tmp-abc123.safetensors"
    tmp.write_bytes(b"half a blob")
    report = verify_store(_open(store).store)
    assert _kinds(report) == {ORPHAN: [[], []]} and report.checked == ["digits", "b1"]
    assert report.serious == []
    result = _verify_cli(store, "--fix")                 # too recent: a running command may commit it
    assert result.exit_code == 1 and "kept 2 leftover" in result.output
    assert _blob_file(system, orphan).exists() and tmp.exists()
    old = time.time() - 3600
    for f in (_blob_file(system, orphan), tmp):
        os.utime(f, (old, old))
    result = _verify_cli(store, "--fix")
    assert result.exit_code == 0, result.output
    assert "removed 2 leftover" in result.output and "healthy" in result.output
    assert not _blob_file(system, orphan).exists() and not tmp.exists()
    for sha, data in referenced.items():                 # nothing referenced was touched
        assert _blob_file(system, sha).read_bytes() == data
    assert verify_store(_open(store).store).healthy


def test_fix_never_removes_a_referenced_blob_even_when_damaged(store):
    system = _open(store)
    cid = _owned(system, "b1")
    path = _blob_file(system, system.manifest.components()[cid].blob)
    path.write_bytes(b"garbage")
    old = time.time() - 3600
    os.utime(path, (old, old))
    report = fix_store(_open(store).store, min_age_s=0)
    assert report.removed == [] and path.exists()
    assert _verify_cli(store, "--fix").exit_code == 1


def test_scratch_of_a_finished_run_is_a_leftover(store):
    system = _open(store)
    run_id = system.manifest.db.execute("SELECT id FROM runs").fetchone()[0]
    (store / "scratch" / run_id).mkdir(parents=True)
    (store / "scratch" / run_id / "p1.safetensors").write_bytes(b"x")
    report = verify_store(_open(store).store, rerun=False)
    assert _kinds(report) == {ORPHAN: [[]]} and "scratch" in report.problems[0].message
    assert fix_store(_open(store).store, min_age_s=0).removed == [str(store / "scratch" / run_id)]


def test_verify_reports_an_unreadable_store_in_one_line(tmp_path):
    (tmp_path / "manifest.sqlite").write_bytes(b"not a database" * 100)
    result = _verify_cli(tmp_path)
    assert result.exit_code == 1 and "unreadable" in result.output
    assert len(result.output.strip().splitlines()) == 1


# ---- permissions --------------------------------------------------------------------------------
@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_store_files_follow_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        assert file_mode() == mode
        blobs = BlobStore(tmp_path / "blobs")
        sha = blobs.put_tensors({"w": torch.ones(3)})
        assert stat.S_IMODE(blobs.path_of(sha).stat().st_mode) == mode
        with atomic_output(tmp_path / "out" / "plot.png") as tmp:
            Path(tmp).write_bytes(b"png")
        assert stat.S_IMODE((tmp_path / "out" / "plot.png").stat().st_mode) == mode
        system = System.create(tmp_path / "store", **TINY_ROOT)
        for f in (tmp_path / "store").rglob("*"):
            if f.is_file():
                assert not stat.S_IMODE(f.stat().st_mode) & stat.S_IWOTH, f
                if f.suffix == ".safetensors":
                    assert stat.S_IMODE(f.stat().st_mode) == mode, f
        system.close()
    finally:
        os.umask(old)


# ---- full disk / unwritable store -----------------------------------------------------------------
def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def one_task_committed(tmp_path, digits_small) -> Path:
    store = tmp_path / "store"
    system = System.create(store, **TINY_ROOT)
    system.add_task(blobs_task("b1", seed=1))
    system.add_task(blobs_task("b2", seed=2))
    system.evolve(["b1"], **TINY)
    system.close()
    return store


def test_a_full_disk_during_a_commit_leaves_the_store_as_it_was(one_task_committed, monkeypatch):
    store = one_task_committed
    before = _snapshot(store)
    retained = {t: p.id for t, p in _open(store).manifest.retained().items()}
    monkeypatch.setattr(blobs_module, "atomic_write_bytes", _no_space)     # every blob write fails
    with pytest.raises(StoreError, match="no space left") as info:
        _open(store).evolve(["b2"], **TINY)
    assert "\n" not in str(info.value) and str(store) in str(info.value)
    monkeypatch.undo()
    assert _snapshot(store) == before
    system = _open(store)
    assert {t: p.id for t, p in system.manifest.retained().items()} == retained
    report = verify_store(system.store)
    assert report.healthy, [p.line() for p in report.problems]
    system.evolve(["b2"], **TINY)                          # space is back: the same command completes
    assert verify_store(_open(store).store).healthy


def test_a_write_failing_half_way_through_a_commit_loses_nothing(one_task_committed, monkeypatch):
    """The first blob of the commit lands, the next one fails: nothing is committed; at most an
    orphaned blob is left, which verify reports and `--fix` deletes."""
    store = one_task_committed
    before = _snapshot(store)["tables"]
    real_replace = os.replace
    calls = {"n": 0}

    def replace(src, dst, *args, **kwargs):
        if "blobs" in str(dst):
            calls["n"] += 1
            if calls["n"] >= 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(StoreError, match="no space left"):
        _open(store).evolve(["b2"], **TINY)
    monkeypatch.undo()
    assert calls["n"] == 2
    assert _snapshot(store)["tables"] == before
    report = verify_store(_open(store).store)
    assert report.serious == [] and report.checked == ["b1"]
    assert not list((store / "blobs").rglob(".tmp-*"))


def test_a_read_only_store_is_one_line_on_the_command_line(one_task_committed, monkeypatch):
    monkeypatch.setattr(blobs_module, "atomic_write_bytes",
                        lambda *a, **k: (_ for _ in ()).throw(OSError(errno.EROFS, "Read-only file system")))
    result = runner.invoke(app, ["evolve", str(one_task_committed), "--tasks", "b2", "--generations", "1",
                                 "--candidates", "2", "--steps-per-validation", "5", "--validations", "1"])
    assert result.exit_code == 1
    lines = [line for line in result.output.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "cannot write" in lines[0] and "make it writable" in lines[0]
    assert "Traceback" not in result.output


def test_a_full_disk_in_the_manifest_rolls_back_with_one_line(tiny_system):
    before = tiny_system.manifest.components()
    with pytest.raises(StoreError, match="no space left") as info:
        with tiny_system.manifest.transaction() as con:
            con.execute("DELETE FROM components")
            raise sqlite3.OperationalError("database or disk is full")
    assert "\n" not in str(info.value)
    assert tiny_system.manifest.components() == before


# ---- crash points -----------------------------------------------------------------------------------
def _child(code: str, tmp_path: Path, point: str, after: int = 1) -> subprocess.CompletedProcess:
    env = dict(os.environ, MUPATH_CRASH_POINT=point, MUPATH_CRASH_AFTER=str(after),
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=120)


def test_blob_write_crash_point_leaves_only_a_temporary_file(tmp_path):
    code = ("import sys; from pathlib import Path; from mupath.store.blobs import BlobStore\n"
            "b = BlobStore(Path(sys.argv[1]))\n"
            "print(b.put_bytes(b'first' * 100), flush=True)\n"
            "b.put_bytes(b'x' * 1000)\n"
            "print('not reached')\n")
    result = _child(code, tmp_path, "blob-write", after=2)
    assert result.returncode == -signal.SIGKILL
    first = result.stdout.split()[0]
    assert "not reached" not in result.stdout
    blobs = BlobStore(tmp_path)
    assert blobs.all_names() == {first}                    # the second blob never appeared
    tmps = list(tmp_path.rglob(".tmp-*"))
    assert len(tmps) == 1 and tmps[0].stat().st_size == 500   # half written, under a temporary name


def test_manifest_commit_crash_point_commits_nothing(tiny_system):
    code = ("import sys; from pathlib import Path; from mupath.store.manifest import Manifest\n"
            "m = Manifest(Path(sys.argv[1]) / 'manifest.sqlite')\n"
            "with m.transaction() as con:\n"
            "    con.execute(\"DELETE FROM components\")\n"
            "print('not reached')\n")
    tiny_system.close()
    before = _snapshot(tiny_system.path)
    result = _child(code, tiny_system.path, "manifest-commit")
    assert result.returncode == -signal.SIGKILL and "not reached" not in result.stdout
    assert _snapshot(tiny_system.path) == before           # the hot journal is rolled back on open
    assert verify_store(_open(tiny_system.path).store).healthy


def test_crash_points_are_inert_without_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("MUPATH_CRASH_POINT", raising=False)
    sha = BlobStore(tmp_path).put_bytes(b"y" * 100)
    assert BlobStore(tmp_path).get_bytes(sha) == b"y" * 100


@pytest.mark.slow
def test_crash_benchmark_in_small(tmp_path):
    """Three trials of benchmarks/crash.py: a random SIGKILL and each crash point, then resume or
    verify-and-kill-again; nothing committed is lost and no half-written file is read."""
    spec = importlib.util.spec_from_file_location("crash_bench", ROOT / "benchmarks" / "crash.py")
    bench = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = bench                 # dataclasses look their module up
    try:
        spec.loader.exec_module(bench)
    finally:
        sys.modules.pop(spec.name, None)
    f = bench.run_trials(trials=3, seed=11, workdir=tmp_path / "work")
    assert f["failures"] == [], f["failures"]
    assert f["trials"] == 3 and f["lost"] == 0 and f["changed"] == 0
    assert f["half_written_reads"] == 0 and f["serious_problems"] == 0
    assert f["kills"]["blob-write"] >= 1 and f["kills"]["manifest-commit"] >= 1
    assert f["resumes_ok"] == f["resumes"] and f["committed_seen"] >= 1


# ---- predict on arbitrary input -----------------------------------------------------------------------
_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.int64, np.uint16, np.uint32, np.uint64, np.float16,
           np.float32, np.float64, np.bool_, np.complex64]


@st.composite
def _images(draw):
    kind = draw(st.sampled_from(["valid", "array", "array", "ragged", "junk"]))
    if kind == "valid":
        n = draw(st.integers(1, 5))
        h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
        shape = draw(st.sampled_from([(n, h, w), (n, h, w, 1), (n, h, w, 3), (n, h, w, 4)]))
        if draw(st.booleans()):
            return draw(hnp.arrays(np.uint8, shape))
        return draw(hnp.arrays(np.float32, shape, elements=st.floats(0, 1, width=32)))
    if kind == "array":
        dtype = draw(st.sampled_from(_DTYPES))
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=6))
        return draw(hnp.arrays(dtype, shape))
    if kind == "ragged":
        rows = draw(st.lists(st.lists(st.integers(-300, 300), min_size=0, max_size=4), min_size=1, max_size=4))
        return [rows, [r[:1] for r in rows]] if draw(st.booleans()) else rows
    return draw(st.sampled_from([None, "image.png", 3, 2.5, {"x": 1}, [], [[[]]], object(),
                                 np.array([object(), 1], dtype=object), b"\x00\x01"]))


@pytest.fixture(scope="module")
def predictor(evolved):
    system = System.open(evolved)
    return system, system.task_record("digits").num_classes


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(images=_images())
def test_predict_gives_class_ids_or_one_mupath_error(predictor, images):
    torch.set_num_threads(1)
    system, classes = predictor
    try:
        ids = system.predict("digits", images)
    except MupathError as exc:
        assert "\n" not in str(exc) and str(exc)
        return
    n = np.asarray(images).shape[0]
    assert isinstance(ids, np.ndarray) and ids.dtype == np.int64 and ids.shape == (n,)
    assert ((ids >= 0) & (ids < classes)).all()


# ---- nothing unpickles; user paths are resolved ---------------------------------------------------
class _Trap:
    """Unpickling this would create the marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_nothing_is_ever_unpickled(tmp_path, evolved):
    marker = tmp_path / "code-ran"
    pth = tmp_path / "evil.pth"
    torch.save({"patch_embed.proj.weight": torch.zeros(1), "trap": _Trap(marker)}, pth)
    result = runner.invoke(app, ["init", str(tmp_path / "s"), "--root", "vit_tiny_patch16_224", "--weights", str(pth), "--image-size", "8",
                                 "--patch-size", "4", "--depth", "1", "--embed-dim", "16", "--num-heads", "2"])
    assert result.exit_code == 1 and "without pickled objects" in result.output
    npy = tmp_path / "evil.npy"
    np.save(npy, np.array([_Trap(marker)], dtype=object), allow_pickle=True)
    result = runner.invoke(app, ["predict", str(evolved), "--task", "digits", str(npy)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert not marker.exists()


def test_user_paths_are_expanded_and_resolved(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    system = System.create("~/stores/../s", **TINY_ROOT)
    assert system.path == (tmp_path / "s").resolve() and system.path.is_absolute()
    monkeypatch.chdir(tmp_path)
    assert System.open("s").path == system.path
    assert _verify_cli(Path("~/s")).exit_code == 0
