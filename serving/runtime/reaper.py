"""Cleans up after a launcher that died without stopping its servers (SIGKILL, OOM kill, power cut of a shell).

Started by ``serving.runtime.server`` in its own session, with a pipe on stdin. The launcher writes what it owns,
one line each: ``pgid N`` (a child's process group: every child runs in its own session, so Triton with its
Python-backend stubs, and nginx with its workers), ``forget N`` (a group that is gone: its number may lead another
group after a pid wrap-around), ``pid N`` (a single process), ``shm PREFIX`` (Python-backend
shared-memory segments), ``path DIR`` (temporary folders). A clean stop writes ``clear``. End of file without
``clear`` means the launcher is gone: the reaper sends SIGTERM to what is listed, SIGKILL after :data:`GRACE_S`,
removes the segments and folders, and exits. Standard library only: it runs as a script, not as part of the
package. :func:`remove_segments` is also how the launcher removes a Triton's segments after a crash and on stop
(server.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from pathlib import Path

GRACE_S = 8.0
#: Where the Python backend's shared-memory segments live (RAM-backed: a killed Triton's stay until removed).
SHM_DIR = Path("/dev/shm")


def _alive(pgids: set[int], pids: set[int]) -> bool:
    for kill, target in [(os.killpg, g) for g in pgids] + [(os.kill, p) for p in pids]:
        try:
            kill(target, 0)
            return True
        except (ProcessLookupError, PermissionError):
            pass
    return False


def _signal(pgids: set[int], pids: set[int], sig: int) -> None:
    for kill, target in [(os.killpg, g) for g in pgids] + [(os.kill, p) for p in pids]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            kill(target, sig)


def remove_segments(directory: Path, prefix: str) -> None:
    """Removes every segment in ``directory`` whose name starts with ``prefix``; gone already is fine. The one
    cleanup of leftover segments: here after a killed launcher, and in TritonServer after a crash and on stop."""
    for leftover in directory.glob(f"{prefix}*"):
        leftover.unlink(missing_ok=True)


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C in the launcher's terminal is the launcher's business
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    pgids: set[int] = set()
    pids: set[int] = set()
    prefixes: set[str] = set()
    paths: set[str] = set()
    for line in sys.stdin:
        kind, _, value = line.strip().partition(" ")
        if kind == "clear":
            return 0
        if kind == "pgid":
            pgids.add(int(value))
        elif kind == "forget":  # a group that is gone (killed after a crash, a child restarted)
            pgids.discard(int(value))
        elif kind == "pid":
            pids.add(int(value))
        elif kind == "shm":
            prefixes.add(value)
        elif kind == "path":
            paths.add(value)
    _signal(pgids, pids, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    while _alive(pgids, pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    _signal(pgids, pids, signal.SIGKILL)
    time.sleep(0.5)
    for prefix in prefixes:
        remove_segments(SHM_DIR, prefix)
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
