"""Stopping a child process: a signal, a bounded wait, then SIGKILL. Standard library only."""

from __future__ import annotations

import signal
import subprocess


def stop_process(proc: subprocess.Popen, *, timeout: float, sig: int = signal.SIGTERM) -> None:
    """Sends ``sig``, waits up to ``timeout`` seconds for an exit, then kills; the process is reaped either way."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
