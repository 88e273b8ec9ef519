"""The suite's own leftover check (tests/conftest.py): a process that a test started and that outlived
its parent is still found, by the mark every process of the session inherits, so the session can kill
it and fail instead of leaving it behind (a pool worker once stayed 13 minutes holding 731 MB)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import SESSION_MARK, session_processes

ORPHAN = ("import subprocess, sys\n"
          "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],\n"
          "                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
          "print(child.pid, flush=True)\n")          # exits at once: its child is re-parented, an orphan


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_an_orphaned_grandchild_is_found_by_the_session_mark():
    assert os.environ[SESSION_MARK] == str(os.getpid())
    out = subprocess.run([sys.executable, "-c", ORPHAN], capture_output=True, text=True, check=True, timeout=60)
    orphan = int(out.stdout.split()[0])
    try:
        deadline = time.monotonic() + 10
        while orphan not in session_processes() and time.monotonic() < deadline:
            time.sleep(0.05)                       # it may still be exec-ing
        found = session_processes()
        assert orphan in found, "an orphan of the session was not found"
        assert found[orphan][0] != os.getpid()     # re-parented away from us: only the mark finds it
    finally:
        os.kill(orphan, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while orphan in session_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert orphan not in session_processes()
