"""The stub watch (serving/runtime/stubs.py) on real processes that look like Triton's: a parent with children whose
program is the Python backend's stub and whose arguments name a model file, as Triton starts them. A stub stopped
for STOPPED_S while its version is served is reported once; one whose version is not served, one that runs, and one
stopped under a debugger are not. The launcher's use of it on a real Triton is in tests/test_restart.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from serving.runtime import stubs
from tests.test_liveness import TRACED, _wait_state

# The parent ("Triton") starts one stub per model file given, with the stub's arguments, and waits.
PARENT = """
import subprocess, sys, time
for model_file in sys.argv[1:]:
    instance = model_file.split("/")[-3] + "_0_0"
    stub = "/opt/backends/python/triton_python_backend_stub"
    argv = [stub, model_file, "shm", "1", "2", "3", "/opt", "ipc", instance]
    subprocess.Popen(argv, executable=sys.executable)
time.sleep(60)
"""


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(stubs, "STOPPED_S", 0.5)


def _triton(tmp_path: Path, models: dict[str, str]) -> tuple[subprocess.Popen, dict[str, int]]:
    """A parent with one stub per model, each running its code; the stubs' pids by model, once all are seen."""
    files = []
    for model, code in models.items():
        (tmp_path / model / "1").mkdir(parents=True)
        (tmp_path / model / "1" / "model.py").write_text(code)
        files.append(str(tmp_path / model / "1" / "model.py"))
    parent = subprocess.Popen([sys.executable, "-c", PARENT, *files])
    deadline = time.monotonic() + 10
    while len(found := stubs.stubs_of(parent.pid)) < len(models):
        assert time.monotonic() < deadline, found
        time.sleep(0.01)
    return parent, {stub.model: pid for pid, stub in found.items()}


def _watch(pid: int, served) -> tuple[stubs.StubWatch, list[str], threading.Event]:
    reports: list[str] = []
    stopping = threading.Event()
    watch = stubs.StubWatch(pid, served=served, on_dead=reports.append, stopping=stopping, interval=0.05)
    watch.start()
    return watch, reports, stopping


def test_a_stub_stopped_under_a_served_model_is_reported_once(tmp_path, quick):
    sleep = "import time; time.sleep(60)"
    parent, pids = _triton(tmp_path, {"age": sleep, "gender": sleep})
    try:
        os.kill(pids["age"], signal.SIGSTOP)
        _wait_state(pids["age"], "T")
        started = time.monotonic()
        watch, reports, _ = _watch(parent.pid, served=lambda model, version: True)
        watch.join(timeout=10)
        assert not watch.is_alive()
        assert len(reports) == 1, reports
        assert "stub of age version 1 (age_0_0" in reports[0] and "stopped (SIGSTOP)" in reports[0], reports
        assert time.monotonic() - started >= stubs.STOPPED_S
    finally:
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)
        parent.kill()
        parent.wait()


def test_a_stopped_stub_of_an_unserved_version_a_running_one_and_a_debugged_one_are_not_reported(tmp_path, quick):
    sleep = "import time; time.sleep(60)"
    parent, pids = _triton(tmp_path, {"age": sleep, "gender": sleep, "preprocess": TRACED})
    try:
        os.kill(pids["age"], signal.SIGSTOP)
        _wait_state(pids["age"], "T")
        _wait_state(pids["preprocess"], "t")  # stopped under its tracer, the parent: as under ``gdb -p``
        watch, reports, stopping = _watch(parent.pid, served=lambda model, version: model != "age")
        time.sleep(6 * stubs.STOPPED_S)
        assert watch.is_alive() and reports == []
        stopping.set()
        watch.join(timeout=5)
    finally:
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)
        parent.kill()
        parent.wait()
