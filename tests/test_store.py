"""Blobs are atomic, content-addressed and checked on read; the manifest refuses what it cannot trust."""
from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from mupath import System
from mupath.errors import StoreError
from mupath.store.blobs import BlobStore
from mupath.store.manifest import FORMAT_VERSION


def test_blobs_are_content_addressed_and_verified(tmp_path):
    blobs = BlobStore(tmp_path)
    sha = blobs.put_tensors({"w": torch.arange(6.0).reshape(2, 3)})
    assert sha == blobs.put_tensors({"w": torch.arange(6.0).reshape(2, 3)})   # same bytes, same name
    assert torch.equal(blobs.get_tensors(sha)["w"], torch.arange(6.0).reshape(2, 3))
    arr_sha = blobs.put_arrays({"x": np.arange(4, dtype=np.uint8)})
    assert blobs.get_arrays(arr_sha)["x"].tolist() == [0, 1, 2, 3]
    path = blobs.path_of(sha)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="corrupted"):
        blobs.get_tensors(sha)
    path.unlink()
    with pytest.raises(StoreError, match="missing"):
        blobs.get_tensors(sha)
    assert not list(tmp_path.rglob(".tmp-*"))          # no temporary files left behind


def test_manifest_from_a_newer_version_is_refused(tiny_system):
    db = sqlite3.connect(tiny_system.path / "manifest.sqlite")
    db.execute("UPDATE meta SET value=? WHERE key='format_version'", (str(FORMAT_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer than this mupath"):
        System.open(tiny_system.path)


def test_garbage_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.sqlite").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError, match="unreadable"):
        System.open(tmp_path)


def test_a_failed_transaction_leaves_the_manifest_as_it_was(tiny_system, digits_small):
    before = tiny_system.manifest.components()
    with pytest.raises(RuntimeError):
        with tiny_system.manifest.transaction() as con:
            con.execute("DELETE FROM components")
            raise RuntimeError("crash inside a commit")
    assert tiny_system.manifest.components() == before


def test_a_failed_create_leaves_nothing_and_a_killed_one_is_redone(tmp_path, monkeypatch):
    """A create that fails cleans up after itself; one killed before its manifest landed (blobs, a temp
    manifest, no manifest) does not block running the same command again."""
    from conftest import TINY_ROOT
    store = tmp_path / "s"

    def full_disk(*args, **kwargs):
        raise StoreError("no space left")
    monkeypatch.setattr("mupath.store.store._write_new_store", full_disk)
    with pytest.raises(StoreError, match="no space"):
        System.create(store, **TINY_ROOT)
    assert not store.exists()
    store.mkdir()
    with pytest.raises(StoreError, match="no space"):
        System.create(store, **TINY_ROOT)
    assert store.exists() and not any(store.iterdir())      # the user's empty folder is kept, empty
    monkeypatch.undo()
    (store / "blobs" / "ab").mkdir(parents=True)
    (store / "blobs" / "ab" / "0123.safetensors").write_bytes(b"half")
    (store / ".manifest.sqlite.tmp").write_bytes(b"half")
    with pytest.raises(StoreError, match="not empty"):      # no marker: maybe a store that lost its
        System.create(store, **TINY_ROOT)                   # manifest; its blobs are never cleared
    (store / ".mupath-creating").write_bytes(b"")
    system = System.create(store, **TINY_ROOT)
    assert system.tasks == [] and sorted(p.name for p in store.iterdir()) == ["blobs", "manifest.sqlite"]
    other = tmp_path / "mine"
    (other / "blobs").mkdir(parents=True)
    (other / ".mupath-creating").write_bytes(b"")
    (other / "blobs" / "notes.txt").write_text("a user's file")
    with pytest.raises(StoreError, match="not empty"):
        System.create(other, **TINY_ROOT)                   # never cleared: not what a create leaves
    assert (other / "blobs" / "notes.txt").exists()


@pytest.mark.parametrize("key, value, needle", [("format_version", "one", "damaged format version"),
                                                ("root", None, "lacks root"),
                                                ("depth", "x", "damaged root description")])
def test_a_damaged_meta_table_is_a_store_error(tiny_system, key, value, needle):
    path = tiny_system.path
    tiny_system.manifest.close()
    con = sqlite3.connect(path / "manifest.sqlite")
    if value is None:
        con.execute("DELETE FROM meta WHERE key=?", (key,))
    else:
        con.execute("UPDATE meta SET value=? WHERE key=?", (value, key))
    con.commit()
    con.close()
    with pytest.raises(StoreError, match=needle):
        System.open(path)


def test_atomic_output_turns_a_failed_write_into_a_store_error(tmp_path):
    import errno
    from mupath.store.atomic import atomic_output
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    with pytest.raises(StoreError, match="no space left"):
        with atomic_output(target) as tmp:
            raise OSError(errno.ENOSPC, "No space left on device", tmp)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["plot.png"]
    with atomic_output(target) as tmp:
        Path(tmp).write_bytes(b"new")
    assert target.read_bytes() == b"new"
