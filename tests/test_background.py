"""The background build of the face detectors (serving/pipeline/background.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from serving.pipeline.background import Background, NotReady

ROOT = Path(__file__).resolve().parents[1]


def test_builds_once_at_the_lowest_priority_and_get_waits_for_it():
    release, seen = threading.Event(), []

    def factory():
        seen.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
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
    assert seen == [19]  # the building thread only...
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == here  # ...not the caller's


#: Run in a fresh interpreter, as a stub is: the pytest worker carries threads from earlier tests (the first test's
#: builder, at nice 19, may still be exiting on a busy machine), and a thread pool another test started would hide a
#: compile moved into the builder. Prints the nice value of every thread but the builder's.
_PRIORITY_PROBE = """
import json, os, threading
from pathlib import Path
from PIL import Image
from serving.pipeline.background import Background
from serving.pipeline.detect import FaceCropper

built = Background(FaceCropper, name="face detector")
cropper = built.get(timeout=60)
assert cropper(Image.open(%r).convert("RGB")) is not None
builder = str(built._thread.native_id)  # serves nothing; it may not have exited yet
nices = {}
for task in Path("/proc/self/task").iterdir():
    if task.name != builder:
        try:
            nices[task.name] = int((task / "stat").read_text().rsplit(")", 1)[1].split()[16])
        except OSError:
            pass
print(json.dumps(nices))
"""


def test_detectors_built_in_the_background_serve_at_normal_priority():
    """OpenVINO's inference threads keep the priority of the thread that compiles: the detectors compile on first
    use, in the caller's thread, so no thread that serves a detection runs at the builder's nice 19."""
    portrait = str(ROOT / "gradio_frontend" / "examples" / "grace_hopper.jpg")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(
        [sys.executable, "-c", _PRIORITY_PROBE % portrait], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    nices = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(nices) > 1 and set(nices.values()) == {os.getpriority(os.PRIO_PROCESS, 0)}, nices


def test_a_failed_build_fails_each_request_with_its_cause():
    def broken():
        time.sleep(0.01)
        raise FileNotFoundError("face_detection_short_range.tflite")

    built = Background(broken, name="face detector")
    for _ in range(2):
        with pytest.raises(NotReady, match="face detector failed to load: face_detection_short_range.tflite"):
            built.get(timeout=5)
    assert not built.ready
