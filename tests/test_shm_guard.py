"""The shared-memory guard puts 0600 back on a region the Python backend made 0644 (issue 7, row 3)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from serving.runtime import shm_guard


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.parametrize("inotify", [True, False], ids=["inotify", "polling"])
def test_guard_makes_matching_regions_owner_only(tmp_path, monkeypatch, inotify):
    if not inotify:
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
        deadline = time.monotonic() + 2
        while _mode(late) != 0o600 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert _mode(early) == 0o600 and _mode(late) == 0o600
        assert _mode(other) == 0o644  # only this server's prefix is touched
        late.chmod(0o644)  # and again, each time
        time.sleep(0.1)
        assert _mode(late) == 0o600
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
