"""What the load tools' command lines share: argparse types that refuse values a run cannot use (an argparse error
naming the option, not a traceback from deep in the run; common/argtypes.py, shared with training/), a clean stop on
SIGTERM, and saying where a report went.

Standard library only at import: every tool reads its arguments before its heavy imports are needed.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from common.argtypes import non_negative_float, non_negative_int, positive_float, positive_int, positive_ints

__all__ = [
    "non_negative_float",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "positive_ints",
]


def stop_cleanly_on_signals() -> dict:
    """SIGTERM and a background job's SIGINT stop a tool as Ctrl-C does, the way ``make serve`` stops
    (serving/runtime/children.py ``interrupt_on_signals``, imported here only when a tool needs it)."""
    from serving.runtime.children import interrupt_on_signals

    return interrupt_on_signals()


def ignore_signals() -> None:
    """Past this point a second Ctrl-C or SIGTERM must not cut a (time-bounded) cleanup short and strand a server."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def restore_signals(previous: dict) -> None:
    """Puts back the handlers :func:`stop_cleanly_on_signals` replaced (a tool's main() called in-process)."""
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def committed(path: Path) -> bool:
    """Whether git tracks ``path``: in this repository, a report committed under loadtest/results/ and cited by
    the docs. False outside a git checkout or without git."""
    try:
        done = subprocess.run(
            ["git", "ls-files", "--error-unmatch", "--", path.name],
            cwd=path.parent,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def replacing_note(paths: list[Path]) -> str:
    """A line naming the committed reports among ``paths`` that a run will replace (empty when none is)."""
    tracked = [p for p in paths if p.parent.is_dir() and committed(p)]
    if not tracked:
        return ""
    names = " ".join(str(p) for p in tracked)
    return (
        f"note: this replaces the committed report{'s' if len(tracked) > 1 else ''} {names} (cited by the docs); "
        f"`git diff -- {names}` shows what changed, `git checkout -- {names}` puts the committed one back, "
        "--out writes elsewhere"
    )


def warn_if_replacing(paths: list[Path], file=None) -> None:
    """Says at the start of a run, while stopping it costs nothing, that it will replace committed reports."""
    if note := replacing_note(paths):
        print(note, file=file or sys.stderr, flush=True)


def report_written(paths: list[Path], file=None) -> None:
    """Says where a run wrote, and loudly when that replaced a committed report: the defaults of several tools are
    the committed loadtest/results/ (the make targets and the docs rely on them), so a short trial run would
    otherwise replace a cited report without a word."""
    file = file or sys.stderr
    print("wrote " + ", ".join(str(p) for p in paths), file=file, flush=True)
    if note := replacing_note(paths):
        print(note, file=file, flush=True)
