"""The output of a child the launcher runs (Triton, the door's nginx), kept for its messages: the last lines, and
Triton's error lines of the run that failed, put first (a broken model's own error used to be cut off above 40 lines
of Triton's option and model tables)."""

from __future__ import annotations

import collections
import re
import subprocess
import sys
from collections.abc import Callable

#: What the launcher writes into the log when it starts the child again: :meth:`ChildLog.errors` reads the last run.
STARTED = "[launcher] started"
#: Triton's error lines: glog's ("E1206 12:00:00.000000 ...") and the binary's own ("error: ..."), each cut to
#: ERROR_CHARS (Python tracebacks come inside them, on one line).
ERROR_LINE = re.compile(r"E\d{4} |error: ")
ERROR_CHARS = 400
#: An error line Triton writes at every start on a machine without a GPU: no cause of anything.
NO_GPU_NOISE = "CudaDriverHelper has not been initialized"


class ChildLog:
    """The last ``keep`` lines of a child's output, read by :meth:`follow` (a thread per child process)."""

    def __init__(self, keep: int, tag: str = "", echo: Callable[[], bool] = lambda: False):
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self.tag = tag
        self.echo = echo  # read at each line: whether to copy it to stderr

    def started(self, proc: subprocess.Popen) -> None:
        self.lines.append(f"{STARTED} (pid {proc.pid})")

    def follow(self, proc: subprocess.Popen, notice: Callable[[str], None] | None = None) -> None:
        """Reads ``proc``'s output to its end, continuously, so that a chatty child never blocks on a full pipe;
        ``notice`` sees each line (pins.ServedVersions.notice)."""
        for line in proc.stdout:
            self.lines.append(self.tag + line.rstrip("\n"))
            if notice is not None:
                notice(line)
            if self.echo():
                print(self.tag + line, end="", file=sys.stderr, flush=True)

    def last(self, count: int | None = None) -> str:
        lines = list(self.lines)
        return "\n".join(lines[-count:] if count else lines)

    def errors(self, most: int = 6) -> str:
        """The error lines of the last run, shortened, as a paragraph to put before its last lines; empty when it
        logged none."""
        lines = list(self.lines)
        starts = [i for i, line in enumerate(lines) if line.startswith(STARTED)]
        found = [
            " ".join(line.replace("\\n", " ").split())[:ERROR_CHARS]
            for line in lines[starts[-1] if starts else 0 :]
            if ERROR_LINE.match(line) and NO_GPU_NOISE not in line
        ]
        return "Triton's errors:\n" + "\n".join(found[-most:]) + "\n" if found else ""
