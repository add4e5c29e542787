"""Stopping a child process: a signal, a bounded wait, then SIGKILL. Standard library only."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def stop_process(proc: subprocess.Popen, *, timeout: float, sig: int = signal.SIGTERM, group: bool = False) -> None:
    """Sends ``sig``, waits up to ``timeout`` seconds for an exit, then kills; the process is reaped either way.

    ``group``: the kill takes the process's whole group too when the process leads one (started in its own
    session), since children such as nginx's workers outlive a killed parent. Only while the parent is unreaped
    does its pid still name that group, so this is done before the parent's ``wait``.
    """
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        if group:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                if os.getpgid(proc.pid) == proc.pid:
                    os.killpg(proc.pid, signal.SIGKILL)
        proc.kill()
        proc.wait()
