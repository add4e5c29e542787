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
#: builder, at nice 19, may still be exiting on a busy machine). Builds the detector in the background as the models
#: do, runs it on the portrait, and prints the CPU ticks the detections took, summed by the threads' nice value, and
#: the nice value of every thread but the builder's.
_PRIORITY_PROBE = """
import json, sys
from pathlib import Path
from PIL import Image
from serving.pipeline.background import Background
from serving.pipeline.detect import FaceCropper

built = Background(FaceCropper, name="face detector")
cropper = built.get(timeout=60)
picture = Image.open(sys.argv[1]).convert("RGB")

def threads():
    out = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[task.name] = (int(fields[16]), int(fields[11]) + int(fields[12]))
    return out

before = threads()
for _ in range(40):
    assert cropper(picture) is not None
after = threads()
by_nice = {}
for task, (nice, cpu) in after.items():
    by_nice[nice] = by_nice.get(nice, 0) + cpu - before.get(task, (nice, 0))[1]
builder = built._thread.native_id  # serves nothing; it may not have exited yet
nices = {task: nice for task, (nice, _) in after.items() if task != str(builder)}
print(json.dumps({"ticks_by_nice": by_nice, "nices": nices}))
"""


def test_detectors_built_in_the_background_serve_at_normal_priority():
    """Threads keep the priority of the thread that starts them, and the detectors are built at nice 19: no thread
    that serves a detection may have been started there. On LiteRT with one thread, XNNPACK runs each inference in
    the calling thread, so all the detections' CPU must be the caller's (with two, XNNPACK's worker threads, started
    at the build, ran part of each detection at nice 19: 5 of 40 ticks, measured)."""
    portrait = str(ROOT / "gradio_frontend" / "examples" / "grace_hopper.jpg")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(
        [sys.executable, "-c", _PRIORITY_PROBE, portrait], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    normal = os.getpriority(os.PRIO_PROCESS, 0)
    assert probe["ticks_by_nice"].get(str(normal), 0) >= 5, probe  # 40 detections: about 0.1-0.3 CPU-s
    assert probe["ticks_by_nice"].get("19", 0) <= 1, probe
    assert set(probe["nices"].values()) == {normal}, probe


def test_a_failed_build_fails_each_request_with_its_cause():
    def broken():
        time.sleep(0.01)
        raise FileNotFoundError("face_detection_short_range.tflite")

    built = Background(broken, name="face detector")
    for _ in range(2):
        with pytest.raises(NotReady, match="face detector failed to load: face_detection_short_range.tflite"):
            built.get(timeout=5)
    assert not built.ready
