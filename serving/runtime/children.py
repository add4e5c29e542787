"""The one place the launcher starts child processes (Triton, the reaper; nginx through ``Door.start``).

Every child runs in its own session, so it has its own process group: a signal to the launcher's group
(``kill -TERM -PGID``, Ctrl-C in the terminal, a supervisor stopping ``make serve``) reaches the launcher
alone, which then stops the children in order (readiness off, drain, stop: serving/runtime/server.py). Children
sharing the group would each take their own fast shutdown at the same moment and cut accepted requests.
A launcher that is SIGKILLed cannot run that sequence: PR_SET_PDEATHSIG and the reaper (reaper.py) stop the
children instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Callable

from common.grpc_fork import disable_grpc_fork_handlers

# Before anything here imports gRPC: a child forked by a process with gRPC's fork handlers on can die before its exec.
disable_grpc_fork_handlers()

try:
    _prctl = ctypes.CDLL(None).prctl  # looked up here: the child between fork and exec should do as little as possible
except (OSError, AttributeError):
    _prctl = None


def die_with_parent() -> None:
    # Keeps a SIGKILLed launcher (a test run cut short) from leaving a child running. Linux ties this to the
    # thread that started the child, so start children from a thread that outlives them.
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def private_child() -> None:
    # umask 077: the Python backend creates its /dev/shm regions (which hold uploaded images) with the
    # process umask applied, 0644 by default; 077 makes them owner-only (issue 7, row 3).
    os.umask(0o077)
    die_with_parent()


def own_session_child() -> None:
    """For children started elsewhere with only a ``preexec_fn`` hook (``Door.start``): what :func:`spawn` does."""
    os.setsid()
    die_with_parent()


def spawn(
    cmd: list[str],
    *,
    env: dict[str, str] | None = None,
    private: bool = False,
    outlive: bool = False,
    stdin: int | None = None,
    capture: bool = True,
) -> subprocess.Popen:
    """Starts ``cmd`` in its own session. ``private``: umask 077 (Triton's shared memory); ``outlive``: no
    death signal (the reaper, whose job starts when the launcher dies); ``capture``: stdout and stderr come
    back as one text pipe (read it continuously, or the child blocks)."""
    preexec: Callable[[], None] | None = None if outlive else (private_child if private else die_with_parent)
    out = subprocess.PIPE if capture else None
    return subprocess.Popen(
        cmd,
        env=env,
        stdin=stdin,
        stdout=out,
        stderr=subprocess.STDOUT if capture else None,
        text=True,
        errors="replace",
        start_new_session=True,
        preexec_fn=preexec,
    )


#: Restart backoff of a child that died (Triton after a crash, the door's nginx): doubles from the first value up to
#: the cap; back to the first once the child has run STABLE_S.
RESTART_BACKOFF_S = (1.0, 30.0)
STABLE_S = 60.0


class Backoff:
    """The waits before starting a child again that keeps dying, one object per supervised child (Triton's
    supervisor in server.py, the door's watcher): :attr:`wait` before this start, :attr:`after` before the next."""

    def __init__(self):
        self.first, self.cap = RESTART_BACKOFF_S
        self.wait = self.first

    def died(self, ran_s: float) -> None:
        """The child died after running ``ran_s``: a child that ran STABLE_S is waited for as if it never died."""
        if ran_s > STABLE_S:
            self.wait = self.first

    @property
    def after(self) -> float:
        """The wait before the start after this one, should this one fail too."""
        return min(self.wait * 2, self.cap)

    def waited(self) -> None:
        """This start's wait is over: the next one waits :attr:`after`."""
        self.wait = self.after


def interrupt_on_signals() -> dict:
    """SIGTERM (docker stop, systemd, a CI job's timeout, kill of a whole group) takes the same clean path as Ctrl-C:
    a KeyboardInterrupt, so ``with`` blocks and ``finally`` clauses stop their servers and remove their files instead
    of the process dying where it stands. SIGINT is re-armed because a shell starts background jobs with it ignored.
    SIGHUP (the terminal of a `make serve` closed, an ssh session dropped) too, unless it is ignored: under
    ``nohup`` the process is meant to outlive its terminal. Returns the handlers replaced, for a caller that puts
    them back."""
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if previous[signal.SIGHUP] is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, _interrupt)
    return previous


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def kill_group(pgid: int) -> None:
    """SIGKILL for a child's whole group (Triton's orphaned Python stubs share it); gone already is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by signal {-code} ({signal.Signals(-code).name})"
    return f"exited with code {code}"
