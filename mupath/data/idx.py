"""A minimal reader for gzipped IDX files (the MNIST / Fashion-MNIST distribution format).

Only the uint8 variant is supported because that is all those datasets use; writing it ourselves
avoids a dependency for ~20 lines of parsing.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from mupath.errors import DataError

_UINT8_TYPE_CODE = 0x08


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file: magic 0x0000, type byte, ndim byte, big-endian uint32 dims, data."""
    try:
        with gzip.open(path, "rb") as stream:
            raw = stream.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}; reinstall the dataset package") from None
    return parse_idx(raw, str(path))


def parse_idx(raw: bytes, origin: str = "<bytes>") -> np.ndarray:
    """Parse uncompressed IDX bytes; `origin` only names the data in error messages."""
    if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] != _UINT8_TYPE_CODE:
        raise DataError(f"{origin} is not a uint8 IDX file (bad magic number); "
                        "reinstall the dataset package")
    ndim = raw[3]
    header_size = 4 + 4 * ndim
    if len(raw) < header_size:
        raise DataError(f"{origin} is truncated (incomplete header); reinstall the dataset package")
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=header_size)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{origin} holds {data.size} values but its header says {dims}; "
                        "reinstall the dataset package")
    return data.reshape(dims).copy()
