"""The liveness watch (serving/runtime/liveness.py) on real processes: a stopped process that does not answer is
reported hung once, after HUNG_S; one stopped under a debugger is left alone; one that answers is never reported.
The launcher's use of it, on a real Triton stopped with SIGSTOP, is in tests/test_restart.py."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from serving.runtime import liveness

# A child that asks to be traced by its parent (this test) and stops itself: state "t", as under ``gdb -p``.
TRACED = "import ctypes, os, signal; ctypes.CDLL(None).ptrace(0, 0, 0, 0); os.kill(os.getpid(), signal.SIGSTOP)"


@pytest.fixture
def quick(monkeypatch):
    monkeypatch.setattr(liveness, "CHECK_S", 0.05)
    monkeypatch.setattr(liveness, "HUNG_S", 0.25)


def _child(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code])


def _wait_state(pid: int, wanted: str) -> None:
    deadline = time.monotonic() + 10
    while liveness.state(pid) != wanted:
        assert time.monotonic() < deadline, liveness.state(pid)
        time.sleep(0.01)


def _watch(pid: int, *, live, armed=lambda: True):
    reports: list[str] = []
    stopping = threading.Event()
    watch = liveness.LivenessWatch(pid, live=live, on_hung=reports.append, armed=armed, stopping=stopping)
    watch.start()
    return watch, reports, stopping


def _unanswered(timeout: float) -> bool:
    raise TimeoutError("no answer")


def test_a_stopped_process_that_does_not_answer_is_reported_once(quick):
    child = _child("import time; time.sleep(60)")
    try:
        os.kill(child.pid, signal.SIGSTOP)
        _wait_state(child.pid, "T")
        started = time.monotonic()
        watch, reports, _ = _watch(child.pid, live=_unanswered)
        watch.join(timeout=10)
        assert not watch.is_alive()
        assert len(reports) == 1 and "is stopped (SIGSTOP)" in reports[0], reports
        assert time.monotonic() - started >= liveness.HUNG_S
    finally:
        child.kill()
        child.wait()


def test_nothing_is_reported_while_it_answers_before_it_was_ready_or_under_a_debugger(quick):
    child = _child(TRACED)
    try:
        _wait_state(child.pid, "t")
        answering, _, stop1 = _watch(child.pid, live=lambda timeout: True)
        unready, _, stop2 = _watch(child.pid, live=_unanswered, armed=lambda: False)
        debugged, reports, stop3 = _watch(child.pid, live=_unanswered)
        time.sleep(6 * liveness.HUNG_S)
        assert answering.is_alive() and unready.is_alive() and debugged.is_alive() and reports == []
        for stop in (stop1, stop2, stop3):
            stop.set()
    finally:
        child.kill()
        child.wait()


def test_the_watch_ends_when_the_process_is_gone(quick):
    child = _child("pass")
    child.wait()  # reaped: no /proc entry left
    watch, reports, _ = _watch(child.pid, live=_unanswered)
    watch.join(timeout=5)
    assert not watch.is_alive() and reports == []
