"""The background build of the face detectors (serving/pipeline/background.py)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from serving.pipeline.background import Background, NotReady


def test_builds_once_in_its_own_thread_at_normal_priority_and_get_waits_for_it():
    release, seen = threading.Event(), []

    def factory():
        seen.append((threading.get_ident(), os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))
        release.wait(5)
        return object()

    here = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    built = Background(factory, name="detector")
    assert not built.ready
    with pytest.raises(NotReady, match="detector is still loading"):
        built.get(timeout=0.05)
    release.set()
    value = built.get(timeout=5)
    assert built.ready and built.get() is value and len(seen) == 1
    # Not this thread; and not a lower priority, which the runtime's worker threads would inherit for good.
    assert seen[0][0] != threading.get_ident() and seen[0][1] == here


def test_a_failed_build_fails_each_request_with_its_cause():
    def broken():
        time.sleep(0.01)
        raise FileNotFoundError("face_detection_short_range.tflite")

    built = Background(broken, name="face detector")
    for _ in range(2):
        with pytest.raises(NotReady, match="face detector failed to load: face_detection_short_range.tflite"):
            built.get(timeout=5)
    assert not built.ready
