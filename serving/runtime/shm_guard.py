"""Keeps one Triton's Python-backend shared-memory regions owner-only (0600).

The regions hold uploaded images. Triton 2.51's Python backend creates each with boost.interprocess, which
fchmods it to 0644 right after creating it, whatever the umask. This watcher puts 0600 back: on Linux through
inotify (IN_CREATE / IN_ATTRIB on the folder, so the chmod follows the backend's within microseconds), else
by polling every 20 ms. A local user who opens a region inside that window keeps it open: docs/security.md
states that residual risk.

The prefix it watches is on Triton's command line, so any local user can plant a name under it: the guard acts only
on a regular file of its own user with one link, through a descriptor opened without following a symbolic link, so
that a planted link or hard link never turns it, running as root, against another file.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import stat
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
    """Makes ``path`` 0600 if it is one of this user's regions; anything else under the prefix is left alone."""
    try:
        # O_NOFOLLOW: a link is refused (ELOOP), not followed to its target. O_NONBLOCK: a FIFO does not wait for a
        # writer. Read-only is enough for fchmod, and the backend makes its regions readable by their owner.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError:
        return  # gone already, a link, or not ours to open
    try:
        with contextlib.suppress(OSError):  # refused (a read-only mount, say): left as it is, as before
            if _ours(os.fstat(fd)):
                os.fchmod(fd, 0o600)  # the inode just checked, whatever the name points at by now
    finally:
        os.close(fd)


def _ours(st: os.stat_result) -> bool:
    """Whether a file is a region to make owner-only: regular, this user's, with some bit for the group or others,
    and one link (a second one: a name planted for another file of this user's, where fs.protected_hardlinks is 0)."""
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_nlink == 1 and bool(st.st_mode & 0o077)
