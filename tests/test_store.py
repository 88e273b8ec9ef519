"""Blobs are atomic, content-addressed and checked on read; the manifest refuses what it cannot trust."""
from __future__ import annotations

import sqlite3

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
