"""Shared Triton fixtures: real ``tritonserver`` processes on free ports, one per test session.

``triton_tiny`` serves a temporary copy of the committed repository in which ``age``
and ``gender`` are tiny untrained Keras models exported with ``training.export``;
``triton_committed`` serves ``model_repository/`` itself and is skipped until a
model has been exported there. Tests that use them are marked ``integration``
(deselect with ``-m "not integration"``); they still run in ``make test``.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from serving.runtime.launch import TritonServer
from tests import utk_fixture

ROOT = Path(__file__).resolve().parents[1]
REPOSITORY = ROOT / "model_repository"
TASKS = ("age", "gender")
#: The tiny models' random start (:func:`tiny_repo`).
TINY_SEED = 7


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: starts a real tritonserver (tens of seconds, several GB RAM)")
    # TensorFlow's kernels on one thread in the tests (training runs, exports, SavedModel checks, and the processes
    # they start): make test runs three workers on two cores, and a training test then takes one core, not both, from
    # the servers that the other workers' timing-bound tests wait on. pytest took 5:04 this way against 5:28 with
    # TensorFlow on both cores (fresh clones, the 2-core Intel VM, 2026-12-06). Read when TensorFlow starts its pools.
    os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
    # Gradio copies the examples a page shows into $GRADIO_TEMP_DIR (default /tmp/gradio, which outlives the
    # tests; some of gradio's modules read it at import, so it is set here, before any test module imports gradio):
    # the tests' copies go to a folder of their own, removed at the end. Tests that look into the UI's upload
    # folder set the variable themselves.
    if "GRADIO_TEMP_DIR" not in os.environ:
        config.gradio_temp_dir = tempfile.mkdtemp(prefix="agegender-tests-gradio-")
        os.environ["GRADIO_TEMP_DIR"] = config.gradio_temp_dir


def pytest_unconfigure(config):
    if folder := getattr(config, "gradio_temp_dir", None):
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def archive(tmp_path_factory) -> Path:
    """A small UTKFace-format archive (tests/utk_fixture.py), written once and only read by the tests."""
    return utk_fixture.write_archive(tmp_path_factory.mktemp("archive"))


@pytest.fixture
def small_repo(tmp_path) -> Path:
    """Just the postprocess model: a Python-backend model that starts in seconds (no TensorFlow)."""
    shutil.copytree(REPOSITORY / "postprocess", tmp_path / "postprocess", ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def selected(request, names) -> list[pytest.Item]:
    """The items this session selected (``-k``, ``-m``, node ids) of the tests named ``names`` in the requesting
    module, every parametrized case: what a module fixture starts ahead for them, side by side."""
    return [
        item
        for item in request.session.items
        if getattr(item, "module", None) is request.module and getattr(item, "originalname", None) in names
    ]


def exported(repo: Path, task: str) -> bool:
    return any((v / "model.savedmodel").is_dir() for v in (repo / task).glob("[0-9]*"))


def _build_tiny_repo(repo: Path) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras

    from training.export import export_model
    from training.model import build

    # Version folders of the real models are left out; symlinks (preprocess_crop's model.py) stay links.
    shutil.copytree(
        REPOSITORY,
        repo,
        symlinks=True,
        ignore=lambda d, names: [n for n in names if n == "__pycache__" or (Path(d).name in TASKS and n.isdigit())],
    )
    # Seeded: every run serves the same tiny models, so a test that depends on their answers (the victims'
    # references, loadtest/abuse/victims.py) passes or fails the same way each time. This seeds Python's, NumPy's
    # and TensorFlow's global generators for the rest of the building worker too; no test relies on them being
    # seeded or unseeded.
    keras.utils.set_random_seed(TINY_SEED)
    for task in TASKS:
        export_model(build(task, widths=(4, 8)), task, repo)


@pytest.fixture(scope="session")
def tiny_repo(tmp_path_factory, request) -> Path:
    """The committed repository with tiny exported ``age``/``gender`` models in place of the trained ones.

    Built once per ``make test`` run, not once per xdist worker (two exports with their OpenVINO IRs: about 5
    CPU-seconds, on two cores shared by three workers): the first worker to need it builds it in the run's shared
    temporary folder under a lock, and each worker then serves its own copy, so no server or test of one worker
    ever writes into another's.
    """
    base = tmp_path_factory.getbasetemp()
    # An xdist worker's folder is <run>/popen-gwN; without xdist the run's own folder is the shared one.
    shared = base.parent if hasattr(request.config, "workerinput") else base
    built = shared / "tiny_model_repository"
    with open(shared / "tiny_model_repository.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if the build fails
        if not built.is_dir():
            partial = Path(tempfile.mkdtemp(prefix="tiny-", dir=shared))
            _build_tiny_repo(partial / "model_repository")
            # Whole or not at all: a failed build leaves the next worker to try again.
            (partial / "model_repository").rename(built)
            partial.rmdir()
    repo = tmp_path_factory.mktemp("repo") / "model_repository"
    shutil.copytree(built, repo, symlinks=True)
    return repo


def start_launcher(
    repo: Path, *args: str, start_new_session: bool = False, cwd: Path = ROOT
) -> tuple[subprocess.Popen, str, str]:
    """Runs the launcher CLI (``python -m serving.runtime.launch``) on ``repo`` and returns once Triton is ready.

    Returns the process, whose stderr is still an open text pipe (read or drain it), and its HTTP and gRPC
    ``host:port``.
    ``args`` are extra launcher options; ``start_new_session`` gives it a process group of its own (as a shell
    gives `make serve`), which a test may signal as a whole. ``cwd`` is the launcher's and so Triton's working
    directory, where the Python models import from first.
    """
    proc = subprocess.Popen(
        [sys.executable, "-m", "serving.runtime.launch", "--model-repository", str(repo), "--timeout", "120"]
        + ["--http-port", "0", "--grpc-port", "0", "--metrics-port", "0", *args],  # free ports, printed when ready
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=start_new_session,
    )
    # The launcher exits by itself (--timeout) if the server never gets ready, so readline cannot hang for long.
    seen = []
    while not any("Triton ready in" in line for line in seen[-1:]):
        seen.append(proc.stderr.readline())
        assert seen[-1], "launcher exited before ready:\n" + "".join(seen[-30:])
    http, grpc = re.search(r"HTTP (\S+), gRPC (\S+),", seen[-1]).groups()
    return proc, http, grpc


#: The account the port tests bind as: another local user, as an attacker on the same machine would be.
OTHER_UID = 65534


def binds_as(port: int, *, uid: int | None = None, reuse_port: bool = True) -> bool:
    """Whether a socket of user ``uid`` (None: this process's) can bind and listen on 127.0.0.1:``port``, asking for
    SO_REUSEADDR and SO_REUSEPORT as a squatter would. In a forked child, which drops to ``uid`` before binding."""
    pid = os.fork()
    if pid == 0:  # the child: nothing but the socket calls, then _exit (no pytest teardown runs here)
        code = 1
        try:
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen()
            code = 0
        except OSError:
            pass
        finally:
            os._exit(code)
    return os.waitpid(pid, 0)[1] == 0


def _serve(repo: Path):
    # Ports 0: chosen by start(), and chosen again there if another program binds one before the check.
    server = TritonServer(repo, http_port=0, grpc_port=0, metrics_port=0)
    server.start()
    try:
        server.wait_ready()
        print(f"\n[triton] {repo} ready in {server.startup_seconds:.1f} s")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def triton_tiny(tiny_repo):
    """A running server over ``tiny_repo``; ``.http_url`` / ``.grpc_url`` are ``host:port``."""
    yield from _serve(tiny_repo)


@pytest.fixture(scope="session")
def triton_committed():
    """A running server over the committed ``model_repository/``, once models have been exported into it."""
    missing = [t for t in TASKS if not exported(REPOSITORY, t)]
    if missing:
        pytest.skip(f"no exported version of {', '.join(missing)} in {REPOSITORY}; run `make export`")
    yield from _serve(REPOSITORY)
