"""The port reservations folder is this user's alone, and nothing in it is followed (free_port(), hold_for()).

The reservations themselves (who holds a port, when one lapses) are tested in tests/test_launch.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from serving.runtime import ports

NOBODY = 65534


@pytest.fixture
def fresh(monkeypatch):
    """This process as if it had handed out no port yet, nor swept the folder."""
    monkeypatch.setattr(ports, "_handed_out", set())
    monkeypatch.setattr(ports, "_swept", False)


def _use(monkeypatch, folder: Path) -> None:
    monkeypatch.setattr(ports, "RESERVATIONS", folder)


def test_the_folder_is_made_for_this_user_only(tmp_path, monkeypatch, fresh):
    assert ports.RESERVATIONS.name == f"agegender-ports-{os.geteuid()}"  # one a user: none shared with others
    folder = tmp_path / "ports"
    _use(monkeypatch, folder)
    port = ports.free_port()
    assert folder.stat().st_mode & 0o7777 == 0o700
    assert [(p.name, p.stat().st_mode & 0o777) for p in folder.iterdir()] == [(f"{port}.{os.getpid()}", 0o600)]


def _foreign(folder: Path) -> None:
    """A folder made first by another user, who plants the links (as root, the test can make it nobody's)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give a folder to another user")
    folder.mkdir(mode=0o777)
    os.chown(folder, NOBODY, NOBODY)


def _shared(folder: Path) -> None:
    folder.mkdir()
    folder.chmod(0o1777)  # as the old shared folder was: anyone could plant a link beside this user's files


def _linked(folder: Path) -> None:
    (folder.parent / "elsewhere").mkdir(mode=0o700)
    folder.symlink_to(folder.parent / "elsewhere")


def _a_file(folder: Path) -> None:
    folder.touch()


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (_foreign, f"is owned by uid {NOBODY}, not by this process's uid 0"),
        (_shared, "can be written by its group or others (mode 1777)"),
        (_linked, "is a symbolic link"),
        (_a_file, "is not a directory"),
    ],
    ids=["another-users", "world-writable", "symlink", "file"],
)
def test_a_folder_that_is_not_this_users_alone_is_not_used(tmp_path, monkeypatch, capsys, fresh, make, problem):
    # The attack: a local user makes the folder first (after /tmp is cleared) and plants PORT.PID links, so that
    # root's hold_for() creates a file wherever one points (an empty /etc/nologin locks every other user out).
    folder, victim = tmp_path / "ports", tmp_path / "nologin"
    make(folder)
    _use(monkeypatch, folder)
    port = ports.free_port()  # still a free port: the reservations are best effort
    if folder.is_dir():
        (folder / f"{port}.4242").symlink_to(victim)
    ports.hold_for(4242, port)
    ports.free_port()
    assert not victim.exists()
    if folder.is_dir():
        assert [p.name for p in folder.iterdir()] == [f"{port}.4242"]  # only the planted link: nothing made there
    # Said once, naming the folder and what is wrong with it.
    assert capsys.readouterr().err.splitlines() == [
        f"port reservations: not using {folder}: it {problem}; ports are reserved against this process only until"
        " it is removed (it is made again, 0700) or TMPDIR names another folder"
    ]


def test_a_link_planted_under_a_reservations_name_is_not_followed(tmp_path, monkeypatch, fresh):
    folder, victim = tmp_path / "ports", tmp_path / "nologin"
    _use(monkeypatch, folder)
    port = ports.free_port()
    (folder / f"{port}.4242").symlink_to(victim)  # in a folder of this user's: only root or this user could
    ports.hold_for(4242, port)
    assert not victim.exists()
    assert (folder / f"{port}.4242").is_symlink()  # left as it is: its name alone already reserves the port
