"""Atomic file creation: write a temporary file beside the target, fsync, rename. Shared by the blob
store and user-visible output files (plots, exports). Files get the permissions the user's umask
allows (`mkstemp` alone would leave them 0600), and a failing write (full disk, read-only store)
becomes one `StoreError` line that names the path and the fix."""
from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mupath.errors import StoreError
from mupath.store.faults import crash_point

_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}
_READ_ONLY = {errno.EACCES, errno.EPERM, errno.EROFS}


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux /proc)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)          # elsewhere: the classic set-and-restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """Mode of a new regular file under the current umask (0o644 under the usual 022)."""
    return 0o666 & ~current_umask()


def write_error(exc: OSError, path: Path | str) -> StoreError:
    """One-line StoreError for a failed write of `path`: what happened and what to do."""
    place = Path(path).parent
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in _NO_SPACE:
        return StoreError(f"no space left on the device holding {place}; free some space and run the same "
                          "command again (nothing was committed by the failed write)")
    if exc.errno in _READ_ONLY:
        return StoreError(f"cannot write {place} ({reason}); make it writable and run the same command "
                          "again (nothing was committed by the failed write)")
    return StoreError(f"cannot write {Path(path)} ({reason}); check the disk and permissions and run the "
                      "same command again (nothing was committed by the failed write)")


def atomic_write_bytes(path: Path, data: bytes, *, fault: str | None = None) -> None:
    """Write `data` to `path` so that a crash leaves either the old file or the complete new one.
    `fault` names a crash point (`mupath.store.faults`) fired half-way through the temporary file.
    Raises StoreError (never a bare OSError) when the write fails; the target is then untouched."""
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), file_mode())
            if fault is not None:
                half = len(data) // 2
                handle.write(data[:half])
                handle.flush()
                crash_point(fault)
                handle.write(data[half:])
            else:
                handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise write_error(exc, path) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    """Make a rename into `folder` durable (best effort: some file systems refuse a folder fsync)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[str]:
    """Yields a temporary file name in the target's folder; renamed onto `path` on success. The file
    gets the umask's permissions; a failing write raises StoreError and leaves `path` as it was."""
    path = Path(path).expanduser().resolve()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=path.suffix)
        os.close(fd)
    except OSError as exc:
        raise write_error(exc, path) from None
    try:
        try:
            yield tmp                 # the caller's writer (matplotlib, PIL, ...) fills the file
        except OSError as exc:        # only the disk's failures are write errors; a missing font is not
            if exc.errno in _NO_SPACE | _READ_ONLY | {errno.EIO, errno.EFBIG}:
                raise write_error(exc, path) from None
            raise
        try:
            os.chmod(tmp, file_mode())
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            raise write_error(exc, path) from None
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            with contextlib.suppress(OSError):
                os.unlink(tmp)
