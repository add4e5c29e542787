"""The versions a Triton served, served again after the launcher restarts it from a crash.

A rollback (``python -m serving.ops.rollout --model age --version 20``) loads the model with a config override,
which Triton keeps in memory only. A Triton that crashed and was restarted by the launcher's supervisor
(server.TritonServer) would read the repository again and serve each model's newest version: the version an
operator rolled back from would come back, unasked, at the moment of a crash. So :class:`ServedVersions` reads
Triton's repository index every POLL_S while Triton runs settled, remembers the READY versions of each model, and
after a restart loads each model whose READY versions differ at the remembered ones again, pinned as
serving.ops.rollout pins. The door refuses inference meanwhile (its ``restarting`` flag, server.py), so no caller is
answered by the version rolled back from.

A restarted Triton does not stop on a model that fails to load (server.py): the repository's newest version may be
one published since that never served (a rollout that failed leaves it there). Such a model, and the ensembles that
step through it, are loaded again at the versions served before, with the config each was last served with, which
:class:`ServedVersions` keeps for that (Triton has none to give for a model that did not load); an ensemble is
loaded once the models it steps through are back.

What it cannot keep: a switch whose log line Triton had not written out when it crashed (the version before it comes
back; the index is read as soon as the line arrives, and every POLL_S anyway), and a version gone from the repository
since (reported; the model serves what Triton loaded). A new start (``make
serve`` again, a pod scaled from zero) serves what the repository says: on KServe a rollback is a release
(deploy/kserve/README.md).
"""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
from collections.abc import Callable

#: Seconds between two reads of the repository index (one small admin call to Triton's own port), at most: Triton's
#: log saying a version was loaded or unloaded (:data:`CHANGE_LINES`, :meth:`ServedVersions.notice`) wakes the
#: reader at once.
POLL_S = 2.0
#: What Triton 2.51 logs (at its default INFO level) when a model's version becomes ready, and when one is gone.
CHANGE_LINES = ("\"successfully loaded '", "\"successfully unloaded '")


def ready_versions(index: list[dict]) -> dict[str, tuple[int, ...]]:
    """Each model's READY versions in a repository index (``POST /v2/repository/index``), in order; models with none
    (unloaded, loading, failed) are left out. One version for this repository's configs (``latest 1``); several
    for a config that serves more, or for a moment during a rollout (the new version ready beside the old)."""
    ready: dict[str, set[int]] = {}
    for entry in index:
        version = str(entry.get("version", ""))
        if entry.get("state") == "READY" and version.isdigit():
            ready.setdefault(entry["name"], set()).add(int(version))
    return {name: tuple(sorted(versions)) for name, versions in ready.items()}


class ServedVersions:
    """What one server's Triton serves, kept across its restarts.

    ``triton_http`` is the server's call to Triton's own HTTP port (path, ``post``, ``admin``; returns status and
    body), ``config(model)`` reads a model's config from the running Triton, ``pin(model, versions, config)`` makes
    Triton serve those versions (``config``: the one last served, for a model Triton has none of; raises when it
    cannot), ``report`` the server's event log. ``settled`` is set while the running Triton serves what
    :attr:`served` should record: from the first readiness, cleared by the supervisor the moment Triton dies, set
    again by :meth:`restore`."""

    def __init__(
        self,
        *,
        triton_http: Callable[..., tuple[int, bytes]],
        config: Callable[[str], dict],
        pin: Callable[[str, tuple[int, ...], dict | None], object],
        report: Callable[[str], None],
    ):
        self._triton_http = triton_http
        self._config = config
        self._pin = pin
        self._report = report
        self.served: dict[str, tuple[int, ...]] = {}
        #: Each served model's config as Triton served it, read again whenever its versions change.
        self.configs: dict[str, dict] = {}
        self.settled = threading.Event()
        self.changed = threading.Event()  # set by notice(): read the index now

    def read(self) -> dict[str, tuple[int, ...]] | None:
        """The READY versions of each model now, or None when Triton did not answer (or answered garbage)."""
        try:
            status, body = self._triton_http("/v2/repository/index", post=True, admin=True)
            return ready_versions(json.loads(body)) if status == 200 else None
        except (OSError, ValueError, http.client.HTTPException):  # a Triton dying mid-answer, too
            return None

    def record(self, proc: subprocess.Popen) -> None:
        """Reads what ``proc`` serves, and keeps it if ``proc`` still ran settled when the answer came: a read that
        spans a crash must not record the restarted Triton's newest versions over the ones to restore."""
        if not self.settled.is_set():
            return
        now = self.read()
        if now is None:
            return
        configs = dict(self.configs)
        for model, versions in now.items():
            if versions != self.served.get(model) or model not in configs:
                try:
                    configs[model] = self._config(model)
                except (OSError, ValueError, http.client.HTTPException):  # kept as it was; read at the next change
                    pass
        if self.settled.is_set() and proc.poll() is None:
            self.served, self.configs = now, configs

    def notice(self, line: str) -> None:
        """Reads a line of Triton's log (the server's log reader calls it for each): one that says a version was
        loaded or unloaded wakes :meth:`watch` at once, so a switch is recorded as soon as Triton has made it."""
        if any(mark in line for mark in CHANGE_LINES):
            self.changed.set()

    def watch(self, proc: subprocess.Popen, stopping: threading.Event) -> None:
        """Records what ``proc`` serves when Triton logs a change (:meth:`notice`), and every POLL_S, until it exits or
        the server stops (a thread per Triton)."""
        self.record(proc)
        while not stopping.is_set() and proc.poll() is None:
            self.changed.wait(POLL_S)
            self.changed.clear()
            if stopping.is_set() or proc.poll() is not None:
                return
            self.record(proc)

    def restore(self) -> None:
        """After a restart (every model loaded, or given up on): pins each model whose READY versions are not the
        ones served before the crash (a model that did not load is tried too), then marks the server settled."""
        now = self.read() or {}
        wanted = {model: self.meant(model) for model in self.served}
        todo = [model for model in sorted(wanted) if now.get(model) != wanted[model]]
        # A second round for what failed in the first: an ensemble loads only once the models it steps through are
        # back, and the names do not say which models are ensembles.
        for last in (False, True):
            failed = []
            for model in todo:
                versions = wanted[model]
                had, has = _names(versions), _names(now.get(model, ()))
                try:
                    self._pin(model, versions, self.configs.get(model))
                except Exception as err:  # noqa: BLE001 - any failure leaves what Triton loaded serving: say which
                    failed.append(model)
                    if last:
                        self._report(f"could not serve {model} {had} again after the restart ({err}); it serves {has}")
                else:
                    self._report(f"{model}: {had} served again after the restart (pinned; it had loaded {has})")
            todo = failed
        self.settled.set()

    def meant(self, model: str) -> tuple[int, ...]:
        """The versions of ``model`` its config serves, among the READY ones recorded: in the second or so of a
        switch both the old and the new version are READY, and a crash then would have brought both back, the
        ensembles stepping through the newer, which after a rollback is the one rolled back from. The config read
        when the versions changed (a rollback's ``specific``, a rollout's ``latest``) says which is meant."""
        versions = self.served[model]
        policy = (self.configs.get(model) or {}).get("version_policy") or {}
        if "specific" in policy:
            named = {int(v) for v in (policy["specific"] or {}).get("versions", [])}
            return tuple(v for v in versions if v in named) or versions
        if "latest" in policy:
            newest = int((policy["latest"] or {}).get("num_versions", 1))
            return versions[-newest:] if newest > 0 else versions
        return versions  # "all", or no policy: every READY version


def _names(versions: tuple[int, ...]) -> str:
    return f"version {', '.join(map(str, versions))}" if versions else "no version"
