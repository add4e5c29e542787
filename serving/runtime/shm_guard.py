"""Keeps one Triton's Python-backend shared-memory regions owner-only (0600).

The regions hold uploaded images. Triton 2.51's Python backend creates each with boost.interprocess, which
fchmods it to 0644 right after creating it, whatever the umask. This watcher puts 0600 back: on Linux through
inotify (IN_CREATE / IN_ATTRIB on the folder, so the chmod follows the backend's within microseconds), else
by polling every 20 ms. A local user who opens a region inside that window keeps it open: docs/security.md
states that residual risk.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import struct
import threading
from pathlib import Path

IN_ATTRIB = 0x00000004
IN_CREATE = 0x00000100
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000
_EVENT = struct.Struct("iIII")  # struct inotify_event without its name: wd, mask, cookie, len
POLL_S = 0.02


def guard(directory: Path, prefix: str, stop: threading.Event) -> None:
    """Runs until ``stop`` is set, making every file in ``directory`` whose name starts with ``prefix`` 0600."""
    fd = _watch(directory)
    _fix_all(directory, prefix)  # regions made before the watch began
    if fd is None:
        while not stop.wait(POLL_S):
            _fix_all(directory, prefix)
        return
    try:
        while not stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                continue
            try:
                data = os.read(fd, 64 * 1024)
            except BlockingIOError:
                continue
            for name in _names(data):
                if name.startswith(prefix):
                    _fix(directory / name)
    finally:
        os.close(fd)


def _watch(directory: Path) -> int | None:
    """An inotify descriptor watching ``directory`` for new files and mode changes, or None without inotify."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
    except (OSError, AttributeError):
        return None
    if fd < 0:
        return None
    if libc.inotify_add_watch(fd, os.fsencode(directory), IN_CREATE | IN_ATTRIB) < 0:
        os.close(fd)
        return None
    return fd


def _names(data: bytes) -> list[str]:
    names, offset = [], 0
    while offset + _EVENT.size <= len(data):
        _, _, _, length = _EVENT.unpack_from(data, offset)
        start = offset + _EVENT.size
        names.append(os.fsdecode(data[start : start + length].rstrip(b"\0")))
        offset = start + length
    return names


def _fix_all(directory: Path, prefix: str) -> None:
    for path in directory.glob(f"{prefix}*"):
        _fix(path)


def _fix(path: Path) -> None:
    with contextlib.suppress(OSError):  # gone already, or not ours
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
