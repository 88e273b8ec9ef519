"""Reading tensors out of a store: task splits (cached per process) and component tensors from a
committed blob, a run's pin of one, or a candidate's scratch file. Blob bytes that an executor shipped
to a process without the store's file system are checked like a read from disk."""
from __future__ import annotations

import dataclasses
import functools
import hashlib
from pathlib import Path
from typing import Any

import torch
from safetensors.numpy import load as np_load
from safetensors.torch import load as torch_load
from safetensors.torch import load_file

from mupath.errors import StoreError
from mupath.store.blobs import BlobStore
from mupath.train.pipeline import as_nchw


def _split_tensors(arrays: dict[str, Any]) -> dict[str, torch.Tensor]:
    out = {}
    for split in ("train", "validation", "test"):
        out[f"{split}.x"] = as_nchw(arrays[f"{split}.images"])
        out[f"{split}.y"] = torch.from_numpy(arrays[f"{split}.labels"].astype("int64"))
    return out


@functools.lru_cache(maxsize=8)
def _task_tensors(store: str, blob: str) -> dict[str, torch.Tensor]:
    return _split_tensors(BlobStore(Path(store) / "blobs").get_arrays(blob))


_SHIPPED_TASKS: dict[str, dict[str, torch.Tensor]] = {}   # task data that arrived as bytes, by blob sha


def verified_bytes(sha: str, data: bytes) -> bytes:
    """Shipped blob bytes are checked like a read from disk: a damaged copy is reported, never used."""
    if hashlib.sha256(data).hexdigest() != sha:
        raise StoreError(f"blob {sha[:12]} arrived corrupted (hash mismatch)")
    return data


def task_tensors(store: str | Path, blob: str, data: bytes | None = None) -> dict[str, torch.Tensor]:
    """A task's splits as (N, C, H, W) uint8 / int64 tensors, cached per process. `data`: the blob's
    bytes when they were shipped to this process (no shared file system) instead of read from `store`."""
    if data is None:
        return _task_tensors(str(store), blob)
    if blob not in _SHIPPED_TASKS:
        if len(_SHIPPED_TASKS) >= 8:
            _SHIPPED_TASKS.pop(next(iter(_SHIPPED_TASKS)))
        _SHIPPED_TASKS[blob] = _split_tensors(np_load(verified_bytes(blob, data)))
    return _SHIPPED_TASKS[blob]


@dataclasses.dataclass(frozen=True)
class TensorRef:
    """Where a component's tensors are: a committed blob (`blob`, sha256; `pin`: this run's hard link
    of it, should a concurrent commit delete it) or a candidate's scratch file (`scratch`, with the
    component's `id` as the key prefix inside it)."""

    blob: str | None = None
    scratch: str | None = None
    id: str | None = None
    pin: str | None = None

    def content_key(self) -> str:
        """What the tensors are, independent of the store: long-lived workers (a persistent pool, Ray)
        serve several stores whose root components share ids, so caches are keyed by content."""
        return self.blob if self.blob else f"{self.scratch}#{self.id}"


class TensorSource:
    """Where a component's tensors are read from: its committed blob (or the run's hard-link `pin` of
    it, once a concurrent commit deleted the blob) or a candidate's scratch file.
    `blob_bytes` ({sha: bytes}) and `scratch_bytes` ({scratch file: bytes}) serve those that were
    shipped to this process instead of read from the store folder."""

    def __init__(self, store: Path, blob_bytes: dict[str, bytes] | None = None,
                 scratch_bytes: dict[str, bytes] | None = None) -> None:
        self.blobs = BlobStore(store / "blobs")
        self.blob_bytes = blob_bytes or {}
        self.scratch_bytes = scratch_bytes or {}
        self._scratch: dict[str, dict[str, torch.Tensor]] = {}

    def get(self, ref: TensorRef) -> dict[str, torch.Tensor]:
        if ref.blob:
            sha = ref.blob
            if sha in self.blob_bytes:
                return torch_load(verified_bytes(sha, self.blob_bytes[sha]))
            if ref.pin and not self.blobs.exists(sha):   # dropped by another agent's commit
                return torch_load(verified_bytes(sha, Path(ref.pin).read_bytes()))
            return self.blobs.get_tensors(sha)
        file = str(ref.scratch)
        if file not in self._scratch:
            shipped = self.scratch_bytes.get(file)
            self._scratch[file] = load_file(file) if shipped is None else torch_load(shipped)
        prefix = f"{ref.id}/"
        return {k[len(prefix):]: v for k, v in self._scratch[file].items() if k.startswith(prefix)}
