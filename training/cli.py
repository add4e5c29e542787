"""Argument types and checks shared by the training scripts' command lines.

An operator's mistake (a missing archive, ``--epochs 0``, a version that does not exist) should end in one line
that says what to do, before anything is written, not in a traceback after half of the work: each check here
either returns the parsed value or fails the way argparse does (``error: ...``, exit status 2) or with a
``SystemExit`` of one line.
"""

from __future__ import annotations

import argparse
import os
import tarfile
from pathlib import Path

from common.argtypes import non_negative_int, positive_float, positive_int, positive_ints

__all__ = ["non_negative_int", "positive_float", "positive_int", "positive_ints"]

#: The repository every script reads and writes unless told otherwise (``make serve`` may point elsewhere).
DEFAULT_REPO = "model_repository"


def local_repo(text: str) -> Path:
    """An argparse type: a model repository on this machine.

    ``MODEL_REPOSITORY`` may be an ``s3://`` URL for ``make serve``, and make passes it to every recipe; the
    training scripts only write and read local folders, and ``Path("s3://b/p")`` is a folder named ``s3:``. The
    default is parsed through this type too (argparse does that for string defaults), so the environment
    variable is checked as well.
    """
    if "://" in text:
        raise argparse.ArgumentTypeError(
            f"{text!r} is a URL: the training scripts read and write a local repository; give --repo FOLDER (or "
            "unset MODEL_REPOSITORY), then upload with `make publish`"
        )
    return Path(text)


def add_repo(p: argparse.ArgumentParser, help: str = "the Triton model repository ($MODEL_REPOSITORY)") -> None:
    """``--repo``, local only (:func:`local_repo`), default ``$MODEL_REPOSITORY`` or ``model_repository``."""
    p.add_argument("--repo", type=local_repo, default=os.environ.get("MODEL_REPOSITORY", DEFAULT_REPO), help=help)


def data_source(text: str) -> Path:
    """An argparse type: a UTKFace-format archive (a tar file, gzipped or not) or a folder that exists.

    Only what can be told cheaply: a truncated archive or one without images fails when it is read
    (``training.data.load`` raises ``DataError``; :func:`load` turns that into one line)."""
    path = Path(text)
    if path.is_dir():
        return path
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{path} does not exist: give the UTKFace archive or folder")
    try:
        ok = tarfile.is_tarfile(path)
    except OSError as err:
        raise argparse.ArgumentTypeError(f"{path}: {err.strerror or err}") from None
    if not ok:
        raise argparse.ArgumentTypeError(f"{path} is neither a folder nor a tar archive (UTKFace.tar.gz)")
    return path


def load(path: Path, **kwargs):
    """``training.data.load`` for a command line: an unreadable or empty source ends in one line."""
    from training import data as utk

    try:
        return utk.load(path, **kwargs)
    except (utk.DataError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None


def version_folder(repo: Path, task: str, version: int | None) -> Path:
    """``<repo>/<task>/<version>``, or the newest when ``version`` is None; one line when there is none."""
    from training.export import latest, versions

    if version is None:
        try:
            return latest(repo, task)
        except FileNotFoundError as err:
            raise SystemExit(f"error: {err}") from None
    folder = Path(repo) / task / str(version)
    if not folder.is_dir():
        have = ", ".join(map(str, versions(Path(repo) / task))) or "none"
        raise SystemExit(f"error: no {task} version {version} in {repo} (versions there: {have})")
    return folder


def tasks(text: str) -> list[str]:
    """An argparse type: comma-separated tasks, each ``age`` or ``gender``, no repeats."""
    from training.model import TASKS

    names = [t.strip() for t in text.split(",") if t.strip()]
    if not names or any(t not in TASKS for t in names):
        raise argparse.ArgumentTypeError(f"{text!r}: comma-separated tasks from {', '.join(TASKS)}")
    if len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(f"{text!r} names a task twice")
    return names


def widths(text: str) -> str:
    """An argparse type: ``--widths`` as the run records it ("16,32,64"), each a whole number >= 1."""
    return ",".join(map(str, positive_ints(text)))
