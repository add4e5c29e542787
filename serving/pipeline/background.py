"""Builds a model's face detector in a low-priority thread, so that the detector does not hold the server's start.

Triton answers nothing until every model's ``initialize()`` has returned, and on two cores the three stubs that
each build BlazeFace (both ``preprocess`` instances and ``faces``) competed with the CNNs' load and warm-up for the
whole start, though the crop path needs no detector. So those models hand the build to a :class:`Background` and
return at once; the thread runs at the lowest CPU priority (nice 19, this thread only), so it takes the cores the
rest of the start leaves idle, and the first detection request waits for it (:meth:`Background.get`, bounded). A
failed build fails every request that needs it with the cause, not the stub. The build also runs the detector once
on two small pictures (``decode.sample_pictures``), so the first request does not pay for first uses: about
0.1 CPU-s in all, where the build on OpenVINO took 0.45 and left the compile to the first detection.

Threads inherit their creator's priority. So what is built here must not start the threads that later serve
requests: the detectors run on LiteRT with one thread, where XNNPACK runs each inference in the calling thread and
starts no thread (serving/pipeline/detector_runtime.py; ``tests/test_background.py`` checks where the detections'
CPU goes). On OpenVINO, which starts its inference threads where a model compiles, a compile here made every later
detection run at nice 19 (measured: docs/performance-log.md, cold start, third part).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

#: How long a request waits for a detector that is still being built (a cold start on a busy node takes seconds;
#: anything near this means the build is stuck, and the request gets an error instead of hanging).
WAIT_S = 60.0
#: Linux nice value of the building thread: the lowest priority, so any other runnable work goes first.
NICE = 19


class NotReady(RuntimeError):
    """The object could not be built in time, or its build failed (the message says which and why)."""


class Background(Generic[T]):
    """``factory()`` run once in a daemon thread at the lowest CPU priority; :meth:`get` returns its result."""

    def __init__(self, factory: Callable[[], T], *, name: str, nice: int = NICE):
        self.name = name
        self._done = threading.Event()
        self._value: T | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._build, args=(factory, nice), name=f"build-{name}", daemon=True)
        self._thread.start()

    def _build(self, factory: Callable[[], T], nice: int) -> None:
        try:
            # On Linux a thread id is a process id for setpriority: this lowers this thread (and threads it starts),
            # not the stub's request thread.
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)
        except (OSError, AttributeError):
            pass  # not Linux, or not permitted: build at normal priority
        try:
            self._value = factory()
        except BaseException as err:  # noqa: BLE001 - reported to every caller of get()
            self._error = err
        finally:
            self._done.set()

    @property
    def ready(self) -> bool:
        return self._done.is_set() and self._error is None

    def get(self, timeout: float = WAIT_S) -> T:
        """The built object; waits up to ``timeout`` s for the build. Raises :class:`NotReady` otherwise."""
        if not self._done.wait(timeout):
            raise NotReady(f"the {self.name} is still loading after {timeout:.0f} s; retry shortly")
        if self._error is not None:
            raise NotReady(f"the {self.name} failed to load: {self._error}") from self._error
        return self._value  # type: ignore[return-value]
