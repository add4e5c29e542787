"""A private folder for everything Gradio writes (uploads, webcam shots, result images), emptied as we go.

Face photos are personal data, and Gradio keeps every upload under the system temp folder after the demo
stops. :func:`activate` points ``GRADIO_TEMP_DIR`` at a fresh 0700 folder before gradio is imported (gradio
reads it at import); the app reads and deletes each upload as it answers it (:func:`take`), a sweeper deletes
anything older than :data:`MAX_AGE_S`, and the folder goes on exit (normal exit, SIGTERM and Ctrl-C end in
:func:`remove`). What is kept, where and for how long: docs/privacy.md.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import math
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: Longest a file may stay in the folder; the issue's bound is one minute.
MAX_AGE_S = 60.0
#: How often the sweeper looks; a file is deleted at most MAX_AGE_S + SWEEP_EVERY_S after it was written.
SWEEP_EVERY_S = 10.0
#: Folder names (then the owner's pid, for people reading the temp folder). The owner holds an flock on its folder
#: for as long as it lives, so a later start can tell the folder of a killed (SIGKILL) UI: its lock is free.
PREFIX = "agegender-ui-"
#: The whole name of such a folder: mkdtemp adds eight of ``[a-z0-9_]``.
_FOLDER_NAME = re.compile(re.escape(PREFIX) + r"[0-9]+-[a-z0-9_]{8}")

_folder: Path | None = None
#: The open descriptor of our folder, flock-ed for this process's life (closed by the kernel when it dies).
_lock_fd: int | None = None
_stop = threading.Event()
#: The cached copies of the app's examples (resolved paths): Gradio copies each once at start and hands that same file
#: to every click, so they stay. By path, not by content: an upload whose bytes equal an example's is still someone's
#: upload (under their own file name), and it went on being served until the UI stopped (red-team probe).
_public: set[Path] = set()
#: The bytes of uploads :func:`take` deleted, by path, with when it deleted them; kept MAX_AGE_S after that. Gradio
#: stores an upload at ``<hash of its bytes>/<its name>`` (the hash keyed by a secret seed), so two sessions that
#: upload the same photo under the same name get the same path, and the first one answered deleted the file the
#: other still needed ("The photo is no longer stored"). Only a session that uploaded those very bytes learns the
#: path, so answering it from here gives nobody a photo they did not send.
_held: dict[str, tuple[float, bytes]] = {}
_held_lock = threading.Lock()


def mark_public(path: str | os.PathLike) -> None:
    """Keeps this one file (Gradio's cached copy of an example shipped with the app) out of :func:`forget` and
    :func:`sweep`; no other file, whatever its bytes."""
    _public.add(Path(path).resolve())


def _is_public(path: Path) -> bool:
    # An upload Gradio stores at this very path is the example itself: the same bytes (the folder is their hash)
    # under the example's name.
    return path.resolve() in _public


def folder() -> Path | None:
    """The private folder, once :func:`activate` has made it."""
    return _folder


def activate(max_age_s: float = MAX_AGE_S, every_s: float = SWEEP_EVERY_S) -> Path:
    """Creates the private folder, points ``GRADIO_TEMP_DIR`` at it and starts the sweeper; call before gradio."""
    global _folder
    if _folder is not None:
        return _folder
    parent = Path(os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    _remove_orphans(parent)
    _folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent))  # mkdtemp: mode 0700
    global _lock_fd
    _lock_fd = os.open(_folder, os.O_RDONLY | os.O_DIRECTORY)  # not inherited by children (Triton, with --serve-triton)
    fcntl.flock(_lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.environ["GRADIO_TEMP_DIR"] = str(_folder)
    atexit.register(remove)
    threading.Thread(target=_sweep_loop, args=(max_age_s, every_s), name="upload-sweeper", daemon=True).start()
    return _folder


def take(path: str | os.PathLike) -> bytes | None:
    """The bytes of a file Gradio stored, deleted from disk at once (:func:`forget`); None when it is not there.

    A file this deletes is answered from memory for :data:`MAX_AGE_S` more (:func:`held`): another session may have
    uploaded the same bytes to the same path.
    """
    try:
        data = Path(path).read_bytes()
    except OSError:  # gone (deleted when another session was answered), or not a file
        return None
    if forget(path):
        with _held_lock:
            _held[_key(path)] = (time.monotonic(), data)
    return data


def held(path: str | os.PathLike) -> bytes | None:
    """The bytes :func:`take` read from ``path`` and deleted less than :data:`MAX_AGE_S` ago, else None."""
    with _held_lock:
        deleted, data = _held.get(_key(path), (-math.inf, None))
    return data if time.monotonic() - deleted < MAX_AGE_S else None


def _key(path: str | os.PathLike) -> str:
    return str(Path(path).resolve())


def forget(path: str | os.PathLike | None) -> bool:
    """Deletes one file Gradio stored (an upload that has been answered), and its folder when that is empty; returns
    whether it deleted the file."""
    if path is None or _folder is None:
        return False
    file = Path(path).resolve()
    if not file.is_relative_to(_folder.resolve()):
        return False  # an example shipped with the app, or a file that is not ours to delete
    try:
        if _is_public(file):
            return False
        file.unlink()
    except FileNotFoundError:
        return False
    with contextlib.suppress(OSError):  # not empty, or already gone
        if file.parent != _folder.resolve():
            file.parent.rmdir()
    return True


def sweep(max_age_s: float = MAX_AGE_S) -> int:
    """Deletes every file older than ``max_age_s`` seconds in the folder, and emptied subfolders; returns how many.

    Drops the bytes :func:`take` holds in memory after the same time.
    """
    now = time.monotonic()
    with _held_lock:
        for key in [key for key, (deleted, _) in _held.items() if now - deleted >= max_age_s]:
            del _held[key]
    if _folder is None:
        return 0
    cutoff = time.time() - max_age_s
    removed = 0
    for root, dirs, files in os.walk(_folder, topdown=False):
        for name in files:
            path = Path(root, name)
            with contextlib.suppress(FileNotFoundError):
                if path.lstat().st_mtime < cutoff and not _is_public(path):
                    path.unlink()
                    removed += 1
        for name in dirs:
            with contextlib.suppress(OSError):
                Path(root, name).rmdir()
    return removed


def remove() -> None:
    """Stops the sweeper, drops the held bytes and deletes the folder with everything in it."""
    _stop.set()
    with _held_lock:
        _held.clear()
    if _folder is not None:
        shutil.rmtree(_folder, ignore_errors=True)


def _sweep_loop(max_age_s: float, every_s: float) -> None:
    while not _stop.wait(every_s):
        try:
            sweep(max_age_s)
        except OSError:
            log.warning("sweeping the upload folder failed", exc_info=True)


def _is_ours(path: Path) -> bool:
    """Whether ``path`` is a folder :func:`activate` made: our name to the letter (the prefix, a pid, mkdtemp's eight
    characters), our user, mode 0700, no link. A folder of the user's that merely starts with the prefix (the red-team
    probe found ``agegender-ui-screenshots`` deleted) is none."""
    if _FOLDER_NAME.fullmatch(path.name) is None:
        return False
    info = path.lstat()
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o700


def _remove_orphans(parent: Path) -> None:
    """Deletes folders left by UIs that were killed before they could clean up: nobody holds their lock any more.

    Not the pid in the name: pids are reused, and a UI restarted in the same container (PID 1 again) would have
    kept its killed predecessor's photos for good.
    """
    for path in parent.glob(f"{PREFIX}*"):
        try:
            if not _is_ours(path):
                continue
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # its UI is alive
        finally:
            os.close(fd)
        shutil.rmtree(path, ignore_errors=True)
