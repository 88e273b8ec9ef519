"""Content-addressed blobs. A blob's name is the sha256 of its bytes; it is written once through a
temporary file, fsync and rename, so a reader sees either nothing or the whole file, and every read
re-checks the hash so a damaged file is detected, never served."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load as np_load
from safetensors.numpy import save as np_save
from safetensors.torch import load as torch_load
from safetensors.torch import save as torch_save

from mupath.errors import StoreError
from mupath.store.atomic import atomic_write_bytes, write_error

__all__ = ["BlobStore", "atomic_write_bytes", "BLOB_WRITE"]

BLOB_WRITE = "blob-write"   #: crash point half-way through a blob's temporary file (mupath.store.faults)


class BlobStore:
    """Write-once tensor files under `root/ab/abcdef....safetensors`."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_of(self, sha: str) -> Path:
        if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
            raise StoreError(f"invalid blob name '{sha}' in manifest; run `mupath verify`")
        return self.root / sha[:2] / f"{sha}.safetensors"

    def put_bytes(self, data: bytes) -> str:
        """Store `data` under its sha256 (a no-op when that blob exists). A failed write (full disk,
        read-only store) raises a one-line StoreError and leaves no file behind."""
        sha = hashlib.sha256(data).hexdigest()
        path = self.path_of(sha)
        try:
            if not path.exists():
                atomic_write_bytes(path, data, fault=BLOB_WRITE)
        except OSError as exc:
            raise write_error(exc, path) from None
        return sha

    def put_tensors(self, tensors: dict[str, torch.Tensor]) -> str:
        return self.put_bytes(torch_save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}))

    def put_arrays(self, arrays: dict[str, np.ndarray]) -> str:
        return self.put_bytes(np_save({k: np.ascontiguousarray(v) for k, v in arrays.items()}))

    def get_bytes(self, sha: str) -> bytes:
        path = self.path_of(sha)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise StoreError(f"blob {sha[:12]} is missing from {self.root}; run `mupath verify`") from None
        except OSError as exc:
            raise StoreError(f"cannot read blob {path} ({exc.strerror or exc}); check the disk and "
                             "permissions, then run `mupath verify`") from None
        if hashlib.sha256(data).hexdigest() != sha:
            raise StoreError(f"blob {sha[:12]} is corrupted (hash mismatch); run `mupath verify`")
        return data

    def get_tensors(self, sha: str) -> dict[str, torch.Tensor]:
        return torch_load(self.get_bytes(sha))

    def get_arrays(self, sha: str) -> dict[str, np.ndarray]:
        return np_load(self.get_bytes(sha))

    def exists(self, sha: str) -> bool:
        return self.path_of(sha).exists()

    def all_names(self) -> set[str]:
        """Names of the blob files present (temporary files of unfinished writes excluded)."""
        return {p.stem for p in self.root.glob("??/*.safetensors")
                if len(p.stem) == 64 and not p.name.startswith(".") and p.parent.name == p.stem[:2]}

    def delete(self, sha: str) -> None:
        """Best effort: a blob that cannot be removed stays as an orphan (`mupath verify` lists it)."""
        try:
            self.path_of(sha).unlink()
        except OSError:
            pass
