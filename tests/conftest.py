"""Shared fixtures: a tiny root and tiny tasks so end-to-end tests run in seconds on 2 cores."""
from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from digest import TINY_ROOT, TINY_SETTINGS  # noqa: F401  (the tiny root and settings every test uses)
from digest import tasks as digest_tasks

from mupath.data import Task
from mupath.data.synthetic import quadrant_task


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits_small() -> Task:
    return digest_tasks()[0]


@pytest.fixture(scope="session")
def parity_task() -> Task:
    """A second real task on the same images: is the digit even?"""
    return digest_tasks()[1]


def free_port() -> int:
    """A TCP port free on the loopback interface now (servers under test bind to 127.0.0.1 only)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def two_task_store(folder: Path, digits: Task, parity: Task, **settings) -> Path:
    """A store at `folder` with digits and parity evolved on the tiny root (`settings` override
    TINY_SETTINGS), closed: what the serving tests serve."""
    from mupath import System
    system = System.create(folder, **TINY_ROOT)
    system.add_task(digits)
    system.add_task(parity)
    system.evolve(["digits", "parity"], workers=1, **dict(TINY_SETTINGS, **settings))
    system.close()
    return folder


@contextlib.contextmanager
def uvicorn_server(store: Path, config) -> Iterator[str]:
    """`create_app(store, config)` on a real uvicorn server (a thread of this process) at 127.0.0.1 and
    `config.port`; yields "127.0.0.1:PORT" and stops the server after."""
    import uvicorn

    from mupath.serve import create_app
    server = uvicorn.Server(uvicorn.Config(create_app(store, config), host="127.0.0.1", port=config.port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def npy(images: np.ndarray) -> bytes:
    """Images as the bytes of an .npy upload."""
    buf = io.BytesIO()
    np.save(buf, images)
    return buf.getvalue()


blobs_task = quadrant_task     # separable synthetic images: class k is a bright square in quadrant k


@pytest.fixture
def tiny_system(tmp_path):
    from mupath import System
    return System.create(tmp_path / "store", **TINY_ROOT)


# ---- no process of the suite is left behind ------------------------------------------------------------
# Every process the suite starts (pool workers, Ray, `mupath` subprocesses and *their* workers) inherits
# this mark, so one that outlived a killed parent (re-parented, no longer our child) is still found.
SESSION_MARK = "MUPATH_TEST_SESSION"
os.environ[SESSION_MARK] = str(os.getpid())
#: processes that exit on their own once their users have: not leaks
_BENIGN = ("multiprocessing.resource_tracker",)
_orphaned_by: dict[int, str] = {}        #: pid -> the test after which it was first seen orphaned


def _proc(pid: int, name: str) -> str:
    with open(f"/proc/{pid}/{name}", "rb") as f:
        return f.read().decode(errors="replace")


def session_processes() -> dict[int, tuple[int, str]]:
    """{pid: (parent pid, command line)} of the live processes this session started, itself excluded:
    those carrying its mark, and its descendants (a forked child keeps its parent's original environ)."""
    me, mark = os.getpid(), f"{SESSION_MARK}={os.getpid()}"
    table: dict[int, tuple[int, str, bool]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            stat = _proc(int(entry.name), "stat")
            state, ppid = stat.rsplit(")", 1)[1].split()[:2]
            if state in ("Z", "X"):
                continue
            marked = mark in _proc(int(entry.name), "environ").split("\0")
            cmd = _proc(int(entry.name), "cmdline").replace("\0", " ").strip()
        except (OSError, IndexError, ValueError):
            continue                                  # gone meanwhile, or not ours to read
        table[int(entry.name)] = (int(ppid), cmd, marked)

    def ours(pid: int, depth: int = 0) -> bool:
        ppid, _, marked = table[pid]
        return marked or ppid == me or (ppid in table and depth < 64 and ours(ppid, depth + 1))
    return {pid: (ppid, cmd) for pid, (ppid, cmd, _) in table.items()
            if ours(pid) and not any(b in cmd for b in _BENIGN)}


@pytest.fixture(autouse=True)
def _note_orphans(request):
    """After each test, note the session's processes whose parent is gone (re-parented away from the
    session), so that a leftover at the end names the test that left it."""
    yield
    if not sys.platform.startswith("linux"):
        return
    found = session_processes()
    for pid, (ppid, _) in found.items():
        if ppid != os.getpid() and ppid not in found:
            _orphaned_by.setdefault(pid, request.node.nodeid)


def _stop_workers() -> None:
    """What a well-behaved process does at exit, done before the check: the shared pool, Ray."""
    from mupath.runtime.executors import shutdown_workers
    shutdown_workers()
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        ray.shutdown()


def pytest_sessionfinish(session, exitstatus):
    """Fail the run if a process it started outlives it (a pool worker whose parent was killed once
    stayed 13 minutes holding 731 MB): wait a grace period for stragglers (a worker notices its
    parent's death within a second, Ray stops asynchronously), then kill the rest and say who."""
    if not sys.platform.startswith("linux") or os.environ.get(SESSION_MARK) != str(os.getpid()):
        return                                         # not the session that owns the mark
    _stop_workers()
    deadline = time.monotonic() + 20
    left = session_processes()
    while left and time.monotonic() < deadline:
        time.sleep(0.25)
        left = session_processes()
    if not left:
        return
    lines = [f"{len(left)} process(es) of the test session outlived it (killed now):"]
    for pid, (ppid, cmd) in sorted(left.items()):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        lines.append(f"  pid {pid} (parent {ppid}), orphaned after {_orphaned_by.get(pid, 'unknown')}: {cmd[:160]}")
    sys.stderr.write("\n".join(lines) + "\n")
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
