"""Crash points for fault-injection tests and `benchmarks/crash.py`. Production code calls
`crash_point(name)` at the moments where a crash is most dangerous; it does nothing unless the
environment asks for it:

    MUPATH_CRASH_POINT=blob-write       SIGKILL half-way through writing a blob's temporary file
    MUPATH_CRASH_POINT=manifest-commit  SIGKILL inside a manifest transaction, just before COMMIT
    MUPATH_CRASH_AFTER=k                fire at the k-th time the point is reached (default 1)

The process kills itself with SIGKILL (no clean-up, no `finally`), exactly like `kill -9`."""
from __future__ import annotations

import os
import signal

POINTS = ("blob-write", "manifest-commit")
_seen: dict[str, int] = {}


def crash_point(name: str) -> None:
    """SIGKILL this process if MUPATH_CRASH_POINT names `name` (at its MUPATH_CRASH_AFTER-th visit)."""
    if os.environ.get("MUPATH_CRASH_POINT") != name:
        return
    _seen[name] = _seen.get(name, 0) + 1
    try:
        after = int(os.environ.get("MUPATH_CRASH_AFTER", "1"))
    except ValueError:
        after = 1
    if _seen[name] >= after:
        os.kill(os.getpid(), signal.SIGKILL)
