"""Whether a process still runs, for files named after the process that made them (the launcher's port
reservations, the training decode cache's temporary files): a dead one's may be removed, a live one's never."""

from __future__ import annotations

import os


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists; one of another user, which this process may not signal, counts as alive."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
