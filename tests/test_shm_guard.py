"""The shared-memory guard puts 0600 back on a region the Python backend made 0644 (issue 7, row 3)."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from serving.runtime import shm_guard


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def _until_owner_only(path: Path, seconds: float = 2.0) -> int:
    deadline = time.monotonic() + seconds
    while _mode(path) != 0o600 and time.monotonic() < deadline:
        time.sleep(0.005)
    return _mode(path)


@pytest.mark.parametrize("inotify", [True, False], ids=["inotify", "polling"])
def test_guard_makes_matching_regions_owner_only(tmp_path, monkeypatch, inotify):
    if inotify:
        fd = shm_guard._watch(tmp_path)  # the inotify path really is the one taken, not the polling fallback
        assert fd is not None
        os.close(fd)
    else:
        monkeypatch.setattr(shm_guard, "_watch", lambda directory: None)
    early = tmp_path / "region_x_early"
    early.touch(mode=0o644)
    early.chmod(0o644)
    stop = threading.Event()
    thread = threading.Thread(target=shm_guard.guard, args=(tmp_path, "region_x_", stop), daemon=True)
    thread.start()
    try:
        time.sleep(0.1)
        late, other = tmp_path / "region_x_late", tmp_path / "someone_elses"
        for path in (late, other):
            path.touch()
            path.chmod(0o644)  # what boost.interprocess does right after creating a region
        assert _until_owner_only(late) == 0o600 and _mode(early) == 0o600
        assert _mode(other) == 0o644  # only this server's prefix is touched
        late.chmod(0o644)  # and again, each time
        assert _until_owner_only(late) == 0o600
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
