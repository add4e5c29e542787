"""The gate (serving/runtime/gate.py) as a supervised child of the launcher: started before nginx, restarted if it
dies, stopped after nginx has drained."""

from __future__ import annotations

import collections
import json
import os
import sys
import threading
from pathlib import Path

from serving.runtime import children, ports, security
from serving.runtime.errors import TritonStartError
from serving.runtime.subproc import stop_process

ROOT = Path(__file__).resolve().parents[2]
#: Seconds the gate may take to listen (imports grpc, aiohttp and protobuf: ~1 s on an idle core).
START_TIMEOUT_S = 30.0
#: How long a stopping gate has to finish the requests it holds (gate.serve: 5 s for gRPC calls still answering, 5 s
#: more for Triton's answers to calls whose callers are gone), with room to exit; SIGKILL after it.
STOP_S = 15.0
#: The gate's environment variable for the headers it adds upstream, and the line it prints once it listens. Here,
#: not in gate.py, so that the launcher starts without importing the gate's grpc and aiohttp (a cold start waits
#: for the launcher's imports before Triton is spawned).
UPSTREAM_HEADERS_ENV = "GATE_UPSTREAM_HEADERS"
#: The public models Triton loads after the ensembles (comma-separated): their requests wait at the gate until ready.
LATER_MODELS_ENV = "GATE_LATER_MODELS"
#: Every model the server serves (comma-separated): readiness asks Triton about each (gate.GrpcGate.not_ready).
SERVED_MODELS_ENV = "GATE_SERVED_MODELS"
#: The line the gate prints when a request starts waiting for one of them: the launcher then loads them at once.
WAITING_LINE = "gate waiting for"
READY_LINE = "gate listening"


def gate_command(
    *, grpc: str, http: str, triton_grpc: str, triton_http: str, edge: bool = False, per_client: int | None = None
) -> list[str]:
    """``python -m serving.runtime.gate`` with its addresses (``host:port``); ``edge``: no nginx in front (edge.py);
    ``per_client``: calls one address may have outstanding at the gate (the door's connections per client)."""
    cmd = [sys.executable, "-m", "serving.runtime.gate", "--grpc", grpc, "--http", http]
    cmd += ["--triton-grpc", triton_grpc, "--triton-http", triton_http, *(["--edge"] if edge else [])]
    return [*cmd, *(["--per-client", str(per_client)] if per_client is not None else [])]


class GateProcess:
    """``python -m serving.runtime.gate`` on two free loopback ports (``grpc`` / ``http`` are ``host:port``)."""

    def __init__(
        self,
        *,
        triton_http: str,
        triton_grpc: str,
        admin_key: str,
        upstream_headers: dict[str, str],
        later_models: tuple[str, ...] = (),
        served_models: tuple[str, ...] = (),
        per_client: int | None = None,
    ):
        # Held from here to stop(): nginx sends the internal key to these ports, and a restarted gate binds them again
        # (ports.Held; the gate's listeners set SO_REUSEPORT).
        self._held = (ports.Held(), ports.Held())
        self.listen_ports = tuple(hold.port for hold in self._held)  # gRPC, HTTP
        self.grpc, self.http = (f"127.0.0.1:{port}" for port in self.listen_ports)
        self.triton_http, self.triton_grpc = triton_http, triton_grpc
        self.admin_key = admin_key
        self.upstream_headers = upstream_headers
        self.later_models = later_models
        self.served_models = served_models
        self.per_client = per_client
        self.log: collections.deque[str] = collections.deque(maxlen=100)
        self.restarts = 0
        self.proc = None
        self.wanted = threading.Event()  # a request waits for a model loaded after the ensembles (WAITING_LINE)
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self.on_start = lambda proc: None  # the launcher tells its reaper about each new process

    def _command(self) -> tuple[list[str], dict[str, str]]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        # Secrets in the environment (owner-only in /proc), never in argv.
        env[security.ADMIN_KEY_ENV] = self.admin_key
        env[UPSTREAM_HEADERS_ENV] = json.dumps(self.upstream_headers)
        env[LATER_MODELS_ENV] = ",".join(self.later_models)
        env[SERVED_MODELS_ENV] = ",".join(self.served_models)
        cmd = gate_command(
            grpc=self.grpc,
            http=self.http,
            triton_grpc=self.triton_grpc,
            triton_http=self.triton_http,
            per_client=self.per_client,
        )
        return cmd, env

    def start(self) -> None:
        """Starts the gate and returns once it listens (nginx must not forward to a closed port). Once: stop()
        gives its ports up."""
        if any(hold.closed for hold in self._held):
            raise RuntimeError("a stopped gate does not start again: its ports are given up; make a new one")
        self._stopping.clear()
        self._spawn()
        if not self._ready.wait(START_TIMEOUT_S) or self.proc.poll() is not None:
            self.stop()
            raise TritonStartError("the gate did not start listening. Its log:\n" + "\n".join(self.log))
        threading.Thread(target=self._supervise, daemon=True).start()

    def _spawn(self) -> None:
        self._ready.clear()
        cmd, env = self._command()
        self.proc = children.spawn(cmd, env=env)
        self.on_start(self.proc)
        ports.hold_for(self.proc.pid, *self.listen_ports)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def _read(self, proc) -> None:
        for line in proc.stdout:
            self.log.append("[gate] " + line.rstrip("\n"))
            if line.startswith(READY_LINE):
                self._ready.set()
            elif line.startswith(WAITING_LINE):
                self.wanted.set()
        self._ready.set()  # exited: start() and the supervisor look at the exit code

    def _supervise(self) -> None:
        # A crashed gate would turn every request into 503: restart it on the same ports (nginx points there).
        while not self._stopping.is_set():
            proc = self.proc
            if proc is None:
                return
            code = proc.wait()
            if self._stopping.is_set():
                return
            self.log.append(f"[gate] {children.describe_exit(code)}; restarting")
            print(self.log[-1], file=sys.stderr, flush=True)
            if self._stopping.wait(0.5):
                return
            self.restarts += 1
            self._spawn()
            self._ready.wait(START_TIMEOUT_S)

    def stop(self, timeout: float = STOP_S) -> None:
        """SIGTERM (the gate lets what is still in flight finish, for up to 10 s: gate.serve), SIGKILL after
        ``timeout``."""
        self._stopping.set()
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            stop_process(proc, timeout=timeout)
        for hold in self._held:
            hold.close()
