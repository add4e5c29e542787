"""The versions a Triton served, served again after the launcher restarts it from a crash.

A rollback (``python -m serving.ops.rollout --model age --version 20``) loads the model with a config override,
which Triton keeps in memory only. A Triton that crashed and was restarted by the launcher's supervisor
(server.TritonServer) would read the repository again and serve each model's newest version: the version an
operator rolled back from would come back, unasked, at the moment of a crash. So :class:`ServedVersions` reads
Triton's repository index every POLL_S while Triton runs settled, remembers the newest READY version of each model
(the one an ensemble step with ``model_version: -1`` uses), and after a restart loads each model whose newest
READY version differs at the remembered one again, pinned as serving.ops.rollout pins. The door refuses requests
meanwhile (its ``restarting`` flag, server.py), so no caller is answered by the version rolled back from.

What it cannot keep: a switch made less than POLL_S before the crash (the version before it comes back), and a
version gone from the repository since (reported; the model serves what Triton loaded). A new start (``make
serve`` again, a pod scaled from zero) serves what the repository says: on KServe a rollback is a release
(deploy/kserve/README.md).
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable

#: Seconds between two reads of the repository index (one small admin call to Triton's own port).
POLL_S = 2.0


def newest_ready(index: list[dict]) -> dict[str, int]:
    """Each model's newest READY version in a repository index (``POST /v2/repository/index``); models with none
    (unloaded, loading, failed) are left out."""
    newest: dict[str, int] = {}
    for entry in index:
        version = str(entry.get("version", ""))
        if entry.get("state") == "READY" and version.isdigit():
            newest[entry["name"]] = max(newest.get(entry["name"], 0), int(version))
    return newest


class ServedVersions:
    """What one server's Triton serves, kept across its restarts.

    ``triton_http`` is the server's call to Triton's own HTTP port (path, ``post``, ``admin``; returns status and
    body), ``pin(model, version)`` makes Triton serve that version (raises when it cannot), ``report`` the server's
    event log. ``settled`` is set while the running Triton serves what :attr:`served` should record: from the first
    readiness, cleared by the supervisor the moment Triton dies, set again by :meth:`restore`."""

    def __init__(
        self,
        *,
        triton_http: Callable[..., tuple[int, bytes]],
        pin: Callable[[str, int], object],
        report: Callable[[str], None],
    ):
        self._triton_http = triton_http
        self._pin = pin
        self._report = report
        self.served: dict[str, int] = {}
        self.settled = threading.Event()

    def read(self) -> dict[str, int] | None:
        """The newest READY version of each model now, or None when Triton did not answer."""
        try:
            status, body = self._triton_http("/v2/repository/index", post=True, admin=True)
            return newest_ready(json.loads(body)) if status == 200 else None
        except (OSError, ValueError):
            return None

    def record(self, proc: subprocess.Popen) -> None:
        """Reads what ``proc`` serves, and keeps it if ``proc`` still ran settled when the answer came: a read that
        spans a crash must not record the restarted Triton's newest versions over the ones to restore."""
        if not self.settled.is_set():
            return
        now = self.read()
        if now is not None and self.settled.is_set() and proc.poll() is None:
            self.served = now

    def watch(self, proc: subprocess.Popen, stopping: threading.Event) -> None:
        """Records what ``proc`` serves every POLL_S until it exits or the server stops (a thread per Triton)."""
        self.record(proc)
        while not stopping.wait(POLL_S) and proc.poll() is None:
            self.record(proc)

    def restore(self) -> None:
        """After a restart, once every model has loaded: pins each model whose newest READY version is not the one
        served before the crash, then marks the server settled."""
        now = self.read() or {}
        for model, version in sorted(self.served.items()):
            if now.get(model) == version:
                continue
            if model not in now:
                self._report(f"{model} is not loaded after the restart; it served version {version} before")
                continue
            try:
                self._pin(model, version)
            except Exception as err:  # noqa: BLE001 - any failure leaves what Triton loaded serving: say which
                self._report(
                    f"could not serve {model} version {version} again after the restart ({err}); "
                    f"it serves version {now[model]}"
                )
            else:
                self._report(
                    f"{model}: version {version} served again after the restart (pinned; the repository's newest "
                    f"is {now[model]})"
                )
        self.settled.set()
