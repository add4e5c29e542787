"""Whether a process still runs, for files named after the process that made them (the launcher's port
reservations, the training decode cache's temporary files): a dead one's may be removed, a live one's never; and a
process's /proc/PID/stat, for the watches on Triton (serving/runtime/stubs.py, liveness.py) and the load tools."""

from __future__ import annotations

import os
from pathlib import Path


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists; one of another user, which this process may not signal, counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stat_fields(pid: int | str) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name, from ``state`` on (so ``ppid`` is [1], ``pgrp`` [2],
    ``utime``/``stime`` [11]/[12], ``starttime`` [19]); None if the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(errors="replace")
    except OSError:
        return None
    return fields_after_name(stat)


def fields_after_name(stat: str) -> list[str]:
    """A /proc/PID/stat line's fields after the command name: the name is in parentheses and may contain spaces and
    parentheses itself, so the split is after the last ")"."""
    return stat[stat.rindex(")") + 2 :].split()
