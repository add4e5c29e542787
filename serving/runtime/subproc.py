"""Stopping a child process: a signal, a bounded wait, then SIGKILL. Standard library only."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time


def stop_process(proc: subprocess.Popen, *, timeout: float, sig: int = signal.SIGTERM, group: bool = False) -> None:
    """Sends ``sig``, waits up to ``timeout`` seconds for an exit, then kills; the process is reaped either way.

    ``group``: whatever is left in the process's group once it has exited or been killed is killed too, when the
    process leads one (started in its own session): children such as nginx's workers outlive a killed parent, and
    a test run once left a door worker listening on its ports after its master had exited. Only while the parent
    is unreaped does its pid still name that group (it cannot be reused), so the parent is reaped last.
    """
    proc.send_signal(sig)
    if not group:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return
    leads = False
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            leads = os.getpgid(proc.pid) == proc.pid
    deadline = time.monotonic() + timeout
    state = _state(proc)
    while state == "running" and time.monotonic() < deadline:
        time.sleep(0.02)
        state = _state(proc)
    if leads and state != "reaped":
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers, or everything when the timeout ran out
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()


def _state(proc: subprocess.Popen) -> str:
    """``running``; ``exited``, left a zombie (``WNOWAIT``) so that its pid still names its group; or ``reaped``
    (by an earlier poll, or by someone else's wait), when the pid may name another process already."""
    if proc.returncode is not None:
        return "reaped"
    try:
        return "running" if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None else "exited"
    except ChildProcessError:
        return "reaped"
