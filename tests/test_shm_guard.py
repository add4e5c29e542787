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


@pytest.mark.parametrize("inotify", [True, False], ids=["inotify", "polling"])
def test_guard_leaves_alone_what_others_plant_under_the_prefix(tmp_path, monkeypatch, inotify):
    # The prefix is on Triton's command line: any local user can plant a link under it in /dev/shm, pointing at a
    # file of root's (the guard runs as root), and the guard must not turn that file 0600 (nor any other file).
    if not inotify:
        monkeypatch.setattr(shm_guard, "_watch", lambda directory: None)
    watched, elsewhere = tmp_path / "shm", tmp_path / "elsewhere"
    watched.mkdir()
    elsewhere.mkdir()
    targets = [elsewhere / name for name in ("early", "late", "hard")]
    for target in targets:
        target.touch()
        target.chmod(0o644)
    (watched / "region_x_early_link").symlink_to(targets[0])  # planted before the guard starts
    if os.geteuid() == 0:
        # Nobody's file, not the guard's to change (made before the guard starts: it is root's until the chown).
        foreign = watched / "region_x_foreign"
        foreign.touch()
        foreign.chmod(0o644)
        os.chown(foreign, 65534, 65534)
        targets.append(foreign)
    stop = threading.Event()
    thread = threading.Thread(target=shm_guard.guard, args=(watched, "region_x_", stop), daemon=True)
    thread.start()
    try:
        time.sleep(0.1)
        (watched / "region_x_late_link").symlink_to(targets[1])
        os.link(targets[2], watched / "region_x_hard")  # a second name for a file of the guard's user
        os.mkfifo(watched / "region_x_fifo", 0o644)  # opened, it must not block the guard
        region = watched / "region_x_real"  # a real region after them: once it is 0600, the guard saw them all
        region.touch()
        region.chmod(0o644)
        assert _until_owner_only(region) == 0o600
        time.sleep(0.1)  # a polling pass more
        assert [_mode(target) for target in targets] == [0o644] * len(targets)
        assert _mode(watched / "region_x_fifo") == 0o644
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
