"""Watching Triton's Python stubs: a stub that dies while its model is served breaks that model until Triton restarts.

Each Python model instance runs in a stub process Triton starts (``triton_python_backend_stub``). When one dies
(the kernel's OOM killer, a crash in native code, a stray ``kill -9``), Triton 2.51 does not start it again: every
request for the model, and every ensemble request through it, fails with "Stub process 'age_0_0' is not healthy",
while Triton's readiness and the model's stay READY, so probes and load balancers keep sending traffic. A reload
through the repository API does not help either: Triton skips a version whose files did not change, and unloading
waits on the dead stub. Measured 2026-12-07 with the committed models: a killed ``gender`` stub failed every crop
request for as long as it was watched (90 s), and nothing in Triton's log said so.

:class:`StubWatch` looks at Triton's stubs every :data:`CHECK_S`. A stub that is gone while Triton still calls its
model version ready, with no new stub of the same instance in its place (a reload starts the new one first), is a
dead model: the watch calls ``on_dead`` once, and its owner restarts Triton (the launcher: its crash restart, which
serves the versions served before; a KServe pod: the container's exit, which the kubelet restarts). A stub that ends
because its model is unloaded (a rollout, a stop) is not one: Triton calls the version unavailable first. A stub
that dies within a second of its start can be missed (it was never seen alive); one that fails its model's load is
no concern of this watch anyway.

A stub stopped by SIGSTOP (state ``T``) is as dead to its model's callers: measured 2026-12-07 under ``make serve``,
each crop request failed after 1 s with "Stub process 'age_0_0' is not healthy" while the ``age`` stub stayed
stopped, readiness stayed 200 and Triton answered its liveness, so neither the liveness watch nor a KServe probe saw
it. Nor does such a stub come back: continued after Triton has called it unhealthy, it exits (checked the same
day). So a stub stopped for :data:`STOPPED_S` while its version is served is reported as a dead one is: the crop
path answered again 13.4 s after the stop (those 5 s, a backoff of 2 s, as Triton had been restarted once before in
that run, then the models' load). One stopped under a debugger (state ``t``) is left alone.
"""

from __future__ import annotations

import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from common import pids
from serving.runtime import liveness

#: The Python backend's stub program.
STUB = "triton_python_backend_stub"
#: Seconds between looks at the stubs: a dead model fails requests for about this long before the restart begins.
CHECK_S = 1.0
#: Seconds a served model's stub may stay stopped (SIGSTOP) before it counts as dead: long enough for a look at it
#: with ``kill -STOP``/``-CONT`` that no request meets, no longer, since every request meanwhile fails.
STOPPED_S = 5.0


def ready_path(model: str, version: str) -> str:
    """Triton's HTTP path that answers 200 when ``version`` of ``model`` is ready (health: no key needed)."""
    return f"/v2/models/{urllib.parse.quote(model, safe='')}/versions/{urllib.parse.quote(version, safe='')}/ready"


class Stub(NamedTuple):
    """One stub: the model version it runs and its instance's name (``age_0_0``)."""

    model: str
    version: str
    instance: str


def _children(pid: int) -> set[int]:
    """The processes whose parent is ``pid``, from every /proc/N/stat. Not /proc/PID/task/TID/children: it lists
    what each thread started, and a stub started by a loader thread that has ended was missing from it (the kernel
    calls that file unreliable for re-parented children), so a dead stub went unseen."""
    found = set()
    for entry in Path("/proc").iterdir():
        # None: ended meanwhile; fields[1] is the parent.
        if entry.name.isdigit() and (fields := pids.stat_fields(entry.name)) is not None and fields[1] == str(pid):
            found.add(int(entry.name))
    return found


def stubs_of(pid: int) -> dict[int, Stub]:
    """Triton ``pid``'s live Python stubs by process id, from /proc: its children whose program is :data:`STUB`; the
    model and version from the model file's path (``.../MODEL/VERSION/model.py``), the instance from its
    arguments. Empty once Triton is gone."""
    if not Path(f"/proc/{pid}").exists():
        return {}
    children = _children(pid)
    found = {}
    for child in children:
        try:
            argv = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # The stub's arguments: model.py, shm region, sizes, parent pid, backend folder, IPC handle, instance name.
        if len(argv) < 9 or Path(argv[0].decode(errors="replace")).name != STUB:
            continue
        model_file = Path(argv[1].decode(errors="replace"))
        found[child] = Stub(model_file.parent.parent.name, model_file.parent.name, argv[8].decode(errors="replace"))
    return found


class StubWatch(threading.Thread):
    """Calls ``on_dead(message)`` once when a stub of Triton ``pid`` dies while Triton serves its model version
    (``served(model, version)``, Triton's own readiness of that version); ends then, when Triton is gone, or when
    ``stopping`` is set (a stop unloads the models and ends their stubs)."""

    def __init__(
        self,
        pid: int,
        *,
        served: Callable[[str, str], bool],
        on_dead: Callable[[str], None],
        stopping: threading.Event,
        interval: float = CHECK_S,
    ) -> None:
        super().__init__(name=f"stub-watch-{pid}", daemon=True)
        self.pid, self._served, self._on_dead = pid, served, on_dead
        self._stopping, self._interval = stopping, interval

    def run(self) -> None:
        known = stubs_of(self.pid)
        stopped_since: dict[int, float] = {}  # stubs in state T, since when
        while not self._stopping.wait(self._interval):
            if not Path(f"/proc/{self.pid}").exists():
                return
            now = stubs_of(self.pid)
            replaced = set(now.values())
            for pid, stub in known.items():
                if pid in now or stub in replaced:
                    continue
                if self._report(
                    stub,
                    f"({stub.instance}, pid {pid}) died while Triton serves it; Triton does not start it again "
                    "and fails every request for it",
                ):
                    return
            clock = time.monotonic()
            stopped_since = {pid: stopped_since.get(pid, clock) for pid in now if liveness.state(pid) == "T"}
            for pid, since in stopped_since.items():
                if clock - since >= STOPPED_S and self._report(
                    now[pid],
                    f"({now[pid].instance}, pid {pid}) has been stopped (SIGSTOP) for {clock - since:.0f} s "
                    "while Triton serves it; Triton fails every request for it",
                ):
                    return
            known = now

    def _report(self, stub: Stub, what: str) -> bool:
        """Calls ``on_dead`` about ``stub`` if Triton still serves its version; whether it did."""
        try:
            ready = self._served(stub.model, stub.version)
        except Exception:  # noqa: BLE001 - Triton not answering is its own supervisor's business
            ready = False
        if not ready or self._stopping.is_set():
            return False
        self._on_dead(f"the Python stub of {stub.model} version {stub.version} {what}")
        return True
