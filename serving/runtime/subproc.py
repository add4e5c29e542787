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
    test runs twice left a door worker listening on its ports after its master had exited. Only while the parent
    is unreaped does its pid still name that group (it cannot be reused), so the parent is reaped last, and this
    works on a parent that exited before the call as long as nobody reaped it (check with :func:`running`, not
    ``poll()``).
    """
    if not group:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return
    leads = False
    state = _state(proc)
    if state != "reaped":
        with contextlib.suppress(ProcessLookupError, PermissionError):
            leads = os.getpgid(proc.pid) == proc.pid  # a zombie keeps its group
    if state == "running":
        # Not proc.send_signal(): it polls first, and that reaps a process that has exited by itself (a door master
        # that died before its stop), after which its pid no longer safely names the group its workers are still in.
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
    deadline = time.monotonic() + timeout
    while state == "running" and time.monotonic() < deadline:
        time.sleep(0.02)
        state = _state(proc)
    if leads and state != "reaped":
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers, or everything when the timeout ran out
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()


def running(proc: subprocess.Popen) -> bool:
    """Whether ``proc`` has not exited, asked without reaping it: ``poll()`` reaps a process that has exited, and an
    unreaped one is what keeps its pid naming its process group for :func:`stop_process` (``group=True``)."""
    return _state(proc) == "running"


def _state(proc: subprocess.Popen) -> str:
    """``running``; ``exited``, left a zombie (``WNOWAIT``) so that its pid still names its group; or ``reaped``
    (by an earlier poll, or by someone else's wait), when the pid may name another process already."""
    if proc.returncode is not None:
        return "reaped"
    try:
        return "running" if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None else "exited"
    except ChildProcessError:
        return "reaped"
