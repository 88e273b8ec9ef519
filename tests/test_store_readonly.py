"""The read-only Store: it never writes (not a byte, not the write lock), refuses changes with one
line, and reads each commit whole while another process commits (the server relies on it)."""
from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_ROOT, TINY_SETTINGS, blobs_task
from mupath import System
from mupath.errors import StoreError
from mupath.store.records import ROOT_TASK
from mupath.store.store import Store


def _files(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_read_only_store_never_writes_and_refuses_changes(tiny_system, digits_small):
    tiny_system.add_task(digits_small)
    tiny_system.evolve(["digits"], **TINY_SETTINGS)
    folder = tiny_system.folder
    tiny_system.close()
    before = _files(folder)
    reader = System.open(folder, read_only=True)
    predicted = reader.predict("digits", digits_small.test.images[:20])
    assert reader.status()[0].path_id is not None and reader.history("digits")
    assert reader.check_immutability() == ["digits"]
    with pytest.raises(StoreError, match="read-only"):
        reader.add_task(blobs_task("more"))
    with pytest.raises(StoreError, match="read-only"):
        reader.evolve(["digits"], **TINY_SETTINGS)
    reader.close()
    assert _files(folder) == before           # not a byte changed, no journal, no scratch
    assert (predicted == System.open(folder).predict("digits", digits_small.test.images[:20])).all()


WRITER = """
import sys
from conftest import TINY_SETTINGS
from mupath import System
system = System.open(sys.argv[1])
system.evolve(["a", "b", "c"], **dict(TINY_SETTINGS, iterations=2, generations=1, seed=5))
"""


def test_snapshots_see_each_commit_whole_while_another_process_commits(tmp_path):
    system = System.create(tmp_path / "store", **TINY_ROOT)
    for i, name in enumerate("abc"):
        system.add_task(blobs_task(name, n=90, seed=i))
    system.close()
    tests = Path(__file__).parent
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "store")], cwd=tests,
                              stderr=subprocess.PIPE, text=True)
    reader = Store.open(tmp_path / "store", read_only=True)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 300
        while writer.poll() is None and time.monotonic() < deadline:
            snap = reader.snapshot()
            seen.add(snap.commit_id)
            used = {cid for path in snap.retained.values() for cid in path.components.values()}
            # a commit adds the path, its components and its reference and drops the unused components in
            # one transaction: a snapshot spanning two commits would break one of these
            assert used == set(snap.components), snap.commit_id
            assert set(snap.checks) == set(snap.retained) - {ROOT_TASK}
            assert all(c.commit_id <= snap.commit_id for c in snap.checks.values())
            time.sleep(0.01)
    finally:
        if writer.poll() is None:
            writer.kill()
        err = writer.communicate()[1]
        reader.close()
    assert writer.returncode == 0, err[-2000:]
    assert len(seen) >= 3                    # the reader really saw the store change under it
    final = Store.open(tmp_path / "store", read_only=True)
    assert final.snapshot().commit_id == 6 and sorted(final.check_immutability()) == ["a", "b", "c"]


def test_a_replaced_reference_leaves_no_orphaned_blob(tiny_system, digits_small):
    """Re-committing a task replaces its no-forgetting reference; the old logits blob goes with it (it
    used to stay behind as an orphan that `mupath verify` reported)."""
    from mupath.store.verify import verify_store
    tiny_system.add_task(digits_small)
    tiny_system.evolve(["digits"], **dict(TINY_SETTINGS, iterations=2))
    assert len([c for c in tiny_system.history("digits") if c.info.changed]) == 2
    report = verify_store(tiny_system.store)
    assert report.healthy and not report.problems, [p.line() for p in report.problems]
