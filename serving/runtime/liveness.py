"""Watching Triton's liveness: a Triton that runs but no longer answers is killed, so that its supervisor restarts it.

A crash ends the process and the launcher restarts it (server.py); a dead stub is seen by stubs.py. A Triton that
hangs does neither: a deadlock, a process stopped by SIGSTOP, a machine so short of memory that Triton never gets
scheduled. Its port still accepts connections (the kernel does that), so the door and the gate wait on it until their
deadlines and answer 504 to every caller, and readiness fails closed, for as long as it hangs. Checked 2026-12-07:
a Triton stopped with SIGSTOP stayed so for good; no part of the launcher noticed.

:class:`LivenessWatch` asks ``/v2/health/live`` every :data:`CHECK_S`, each time waiting up to :data:`ANSWER_S`.
When no 200 has come for :data:`HUNG_S`, it calls ``on_hung`` once (the launcher kills Triton's group, and the
supervisor restarts it as after a crash, serving the versions served before). A KServe pod needs no such watch: the
gate relays the kubelet's liveness probe to Triton, and the kubelet restarts the container.

Why these bounds: Triton answers liveness from its HTTP threads, which inference does not hold. Under 64 callers of
the crop path through the door, both cores busy, 147 answers took 0.8 ms (median) and 21 ms at most (Zen 4 VM,
2026-12-07): 30 s of silence is no load peak. A Triton being looked at in a debugger (``gdb -p``,
state ``t``) is left alone: whoever attached wants it as it is.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from common import pids

#: Seconds between liveness questions.
CHECK_S = 2.0
#: Seconds each question waits for its answer.
ANSWER_S = 5.0
#: Seconds without a live answer after which Triton counts as hung.
HUNG_S = 30.0


def state(pid: int) -> str | None:
    """The process's state letter from /proc (``R``, ``S``, ``T`` stopped, ``t`` stopped by a tracer, ...), or None
    once it is gone."""
    fields = pids.stat_fields(pid)
    return None if fields is None else fields[0]


class LivenessWatch(threading.Thread):
    """Calls ``on_hung(message)`` once when Triton ``pid`` has not answered ``live()`` with True for :data:`HUNG_S`
    while ``armed()`` (it has been ready once: before that, its start's own deadline applies); ends then, when
    Triton is gone, or when ``stopping`` is set (a stop makes Triton unlive on purpose). ``live`` may raise
    (no answer): that counts as not live."""

    def __init__(
        self,
        pid: int,
        *,
        live: Callable[[float], bool],
        on_hung: Callable[[str], None],
        armed: Callable[[], bool],
        stopping: threading.Event,
    ) -> None:
        super().__init__(name=f"liveness-{pid}", daemon=True)
        self.pid, self._live, self._on_hung, self._armed, self._stopping = pid, live, on_hung, armed, stopping

    def run(self) -> None:
        last_live = time.monotonic()
        while not self._stopping.wait(CHECK_S):
            now_state = state(self.pid)
            if now_state in (None, "Z", "X"):  # gone: the supervisor's business
                return
            try:
                alive = self._live(ANSWER_S)
            except Exception:  # noqa: BLE001 - no answer at all (timeout, reset) is the case this watch is for
                alive = False
            now = time.monotonic()
            if alive or not self._armed() or state(self.pid) == "t":
                last_live = now
                continue
            if now - last_live >= HUNG_S and not self._stopping.is_set():
                how = "is stopped (SIGSTOP)" if now_state == "T" else "runs"
                self._on_hung(
                    f"Triton (pid {self.pid}) {how} but has not answered its liveness for {now - last_live:.0f} s"
                )
                return
