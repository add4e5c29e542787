"""The models Triton loads after the ensembles: :class:`LaterLoads` asks for them once the first answer is out.

Under Triton's default model control, from a local or staged folder (command.loads_first), Triton starts with the
ensembles only (command.first_args: both paths a photo takes, with the models they step through). Everything else in
the folder (`faces`, and any other model) loads right after, through the repository API with the admin key: once an
ensemble has answered, a request waits at the gate for one of the later models, or LATER_LOAD_GRACE_S after the
ensembles were ready. Until then such a request waits at the gate (gate_relay.Loading), and readiness (which counts
every model) says not ready. :class:`serving.runtime.server.TritonServer` runs one :class:`LaterLoads` per server,
started again after each restart of a crashed Triton.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable

from common import contract
from serving.runtime import command, narrow_start

#: How long the launcher gives the models loaded after the ensembles (command.loads_first), each; a load that has not
#: finished by then is reported, and its requests get Triton's own error.
LATER_LOAD_TIMEOUT_S = 120.0
#: The later loads wait for the first answer from an ensemble, for a request that waits for one of the later models
#: at the gate, or this long after the ensembles are ready, whichever comes first: a woken server answers the
#: request that woke it before it starts more stubs on the same cores.
LATER_LOAD_GRACE_S = 1.0


def later_models() -> tuple[str, ...]:
    """The public models loaded after the ensembles (their requests wait at the gate until they are ready)."""
    return tuple(m for m in contract.PUBLIC_MODELS if m not in command.FIRST_MODELS)


def triton_up(triton_http: Callable[..., tuple[int, bytes]]) -> bool:
    """Whether Triton answers on its own port (past the door, which may be refusing callers). It opens its ports
    once the models it starts with have loaded, or failed to: a restart after a crash runs on when one fails
    (server.py), and is then up, though its own strict readiness says no for as long as it runs
    (docs/serverless.md)."""
    try:
        return triton_http("/v2/health/live")[0] == 200
    except OSError:
        return False


class LaterLoads:
    """Loads the rest of a Triton's models after the ensembles, in a thread per Triton process (:meth:`start`).

    What it needs from its server comes in at construction, and what the server chooses later as callables read
    when needed: ``triton_http`` (a call to Triton's own HTTP port, with the admin key if ``admin=True``, returning
    status and body), ``metrics_url`` (chosen by the server's start), ``gate_wanted`` (the gate's event that a request
    waits for a later model; None without a gate, which starts after Triton and is gone once stopping), ``stopping``
    (set when the server stops), ``report`` (the server's event log) and ``narrow`` (the view of the repository that
    Triton started on with fewer instances than the configs give, if any: narrow_start.py) with ``config`` (a model's
    config as Triton serves it, raising OSError when Triton gives none). ``done`` is set
    once the later loads have finished or given up, and ``failures`` lists what went wrong, for the server's
    readiness wait."""

    def __init__(
        self,
        *,
        triton_http: Callable[..., tuple[int, bytes]],
        metrics_url: Callable[[], str],
        gate_wanted: Callable[[], threading.Event | None],
        stopping: threading.Event,
        report: Callable[[str], None],
        narrow: Callable[[], narrow_start.NarrowStart | None] = lambda: None,
        config: Callable[[str], dict],
    ):
        self._triton_http = triton_http
        self._narrow = narrow
        self._config = config
        self._metrics_url = metrics_url
        self._gate_wanted = gate_wanted
        self._stopping = stopping
        self._report = report
        self.done = threading.Event()
        self.failures: list[str] = []
        #: Seconds to hold the later loads back: 0, except in tests that need the gap to be long.
        self.delay_s = 0.0

    def start(self, proc: subprocess.Popen) -> None:
        """Loads the rest for ``proc`` in a daemon thread (after every (re)start: a restarted Triton loads the
        ensembles first again)."""
        threading.Thread(target=self.load_the_rest, args=(proc,), daemon=True).start()

    def load_the_rest(self, proc: subprocess.Popen) -> None:
        """Once Triton is up (both paths loaded; after a crash, loaded or failed), asks it to load every model of the
        folder it has not loaded yet.

        Until then a request for one of them waits at the gate (gate_relay.Loading), and readiness (which counts
        every model) says not ready for the moment the loads take. Runs once per Triton process."""
        try:
            while proc.poll() is None and not self._stopping.is_set():
                if triton_up(self._triton_http):
                    break
                time.sleep(0.05)
            else:
                return
            self._await_first_use(proc)
            if self._stopping.wait(self.delay_s):
                return
            # The decoding models' other instances first (both paths' capacity), unless a caller already waits at
            # the gate for a model still to load: then that model first.
            wanted = self._gate_wanted()
            if wanted is None or not wanted.is_set():
                self._widen()
            self._load_the_rest(proc)
            self._widen()  # those not done above: a caller was waiting, or a load failed (tried once more)
        except (OSError, ValueError) as err:
            self._failed(f"loading the rest of the models after the ensembles failed: {err}")
        finally:
            self.done.set()

    def _load_the_rest(self, proc: subprocess.Popen) -> None:
        """Loads every model of the folder Triton has not loaded, one at a time."""
        tried: set[str] = set()
        while proc.poll() is None and not self._stopping.is_set():
            # Listed again after each load: an ensemble's load brings the models it steps through with it.
            status, body = self._triton_http("/v2/repository/index", post=True, admin=True)
            if status != 200:
                self._failed(f"could not list the repository to load the rest: HTTP {status} {body[:200]!r}")
                return
            waiting = [m["name"] for m in json.loads(body) if not m.get("state") and m["name"] not in tried]
            if not waiting:
                return
            model = waiting[0]
            tried.add(model)
            self._load(model, model)

    def _widen(self) -> None:
        """Gives the models started with one instance (narrow_start.py) the rest of theirs, each on its own: one
        that fails is reported and keeps its link narrowed (a restart starts it so again), the others go on."""
        if (narrow := self._narrow()) is None:
            return
        for model, count in narrow.widen().items():
            if self._load_instances(model, count):
                narrow.link(model)

    def _load(self, model: str, what: str, request: dict | None = None) -> bool:
        """Asks Triton to load ``model`` (``request``: the load request's body, else none); whether it did. A refusal
        is reported (``what``: what the load brings)."""
        status, body = self._triton_http(
            f"/v2/repository/models/{urllib.parse.quote(model, safe='')}/load",
            post=True,
            admin=True,
            timeout=LATER_LOAD_TIMEOUT_S,
            **({"body": request} if request is not None else {}),
        )
        if status != 200:
            self._failed(f"loading {what} after the ensembles failed: HTTP {status} {body[:300]!r}")
        return status == 200

    def _load_instances(self, model: str, count: int) -> bool:
        """Loads ``model`` again with the config it serves given ``count`` instances (narrow_start.py); whether
        Triton did."""
        what = f"{model}'s {count} instances"
        try:
            config = self._config(model)
            (group,) = config["instance_group"]  # narrow_start narrows only a config with one group
            group["count"] = count
            return self._load(model, what, {"parameters": {"config": json.dumps(config)}})
        except (OSError, ValueError, KeyError, TypeError) as err:
            self._failed(f"loading {what} after the ensembles failed: {err!r}")
            return False

    def _await_first_use(self, proc: subprocess.Popen) -> None:
        """Returns once an ensemble has answered (Triton's success counters), a request waits at the gate for a
        later model, or LATER_LOAD_GRACE_S has passed since the ensembles were ready."""
        deadline = time.monotonic() + LATER_LOAD_GRACE_S
        wanted = self._gate_wanted()
        if wanted is None:
            wanted = threading.Event()  # no gate (front_door=False): only the first answer or the grace ends the wait
        while time.monotonic() < deadline and proc.poll() is None and not self._stopping.is_set():
            if wanted.is_set() or self._an_ensemble_answered():
                return
            time.sleep(0.02)

    def _an_ensemble_answered(self) -> bool:
        try:
            with urllib.request.urlopen(self._metrics_url(), timeout=1) as answer:
                text = answer.read().decode("utf-8", "replace")
        except OSError:
            return False
        prefixes = tuple(f'nv_inference_request_success{{model="{m}",' for m in command.FIRST_MODELS)
        return any(line.startswith(prefixes) and not line.endswith(" 0") for line in text.splitlines())

    def _failed(self, message: str) -> None:
        self.failures.append(message)
        self._report(message)
