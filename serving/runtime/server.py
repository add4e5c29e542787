"""TritonServer: starts Triton (behind the nginx front door), supervises it, waits for readiness, stops it.

Hardening (docs/security.md): nginx (serving/runtime/door.py) owns the public HTTP and gRPC ports and
Triton listens on internal 127.0.0.1 ports behind it; admin APIs need ``admin-key: $TRITON_ADMIN_KEY``
(serving/runtime/security.py; a random key per start when unset); Triton runs with umask 077 so its shared
memory is private; a crashed Triton is restarted with backoff, serving the versions it served (pins.py), and so is a
door whose nginx master died (door.Door.keep_running); :meth:`TritonServer.stop` drains (readiness off,
new requests refused at the door, accepted ones finish, then Triton stops); a reaper process
(serving/runtime/reaper.py) removes servers, segments and temp folders if the launcher itself is killed. With the
ensembles loaded first (command.loads_first), the rest load after the first answer (serving/runtime/first_load.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

from serving.pipeline.backends.openvino_savedmodel import ov_runtime
from serving.runtime import (
    binary,
    children,
    command,
    door,
    first_load,
    liveness,
    narrow_start,
    pins,
    ports,
    security,
    shm_guard,
    storage,
    stubs,
)
from serving.runtime.child_log import ChildLog
from serving.runtime.errors import TritonStartError
from serving.runtime.gate_process import GateProcess
from serving.runtime.reaper import SHM_DIR, remove_segments
from serving.runtime.subproc import stop_process

DEFAULT_REPOSITORY = binary.DEFAULT_REPOSITORY
SHM_PREFIX = command.SHM_PREFIX
# Shutdown bounds, derived from the longest a request may take (door.REQUEST_TIMEOUT_S, itself derived from
# the per-request decode budget): the door waits that long for accepted requests (anything slower has already
# been answered 504 by it), then Triton, with nothing in flight any more, gets command.EXIT_TIMEOUT to unload.
DRAIN_TIMEOUT = door.REQUEST_TIMEOUT_S + 5
EXIT_TIMEOUT = command.EXIT_TIMEOUT
#: Sets of free ports start() tries for public ports asked for as 0, before it gives up.
PORT_ATTEMPTS = 3


#: Seconds readiness is off before new requests are refused, when stopping (``make serve``, ``make demo``): long
#: enough for a load balancer polling readiness every second or so to stop sending new work here.
DRAIN_GRACE_S = 2.0
#: How long a restarted Triton may take to load every model before the door opens again anyway (and the versions
#: served before the crash are pinned again on what loaded).
RESTORE_WAIT_S = 120.0
#: How long a restarted Triton may answer on its port without being live before it is restarted again. A Triton that
#: could not read its s3:// repository at the start (the store down for a moment) answers /v2/health/live with 400 for
#: as long as it runs, serving nothing; it was left so, the door open on it, until an operator restarted everything.
NOT_LIVE_S = 10.0
#: How many times a Triton killed by a signal before its first readiness is started again. Triton 2.51 (and 25.02,
#: upstream server#8882) now and then aborts while its Python stubs load (boost::interprocess::lock_exception), once
#: in six fresh-clone test runs here (2026-12-08); a start that then failed for good served nothing. An exit with a
#: code (a model that does not load, a port taken) is not tried again: that start fails for the operator to read why.
START_RETRIES = 1
#: The folder, inside the run folder, that a staged s3:// repository is copied to (loadtest.bench.coldstart finds
#: it on Triton's command line).
STAGE_FOLDER = "s3-stage"


def default_ov_cache() -> Path:
    """Where this user's compiled models are cached: ``$XDG_CACHE_HOME/agegender/openvino`` (``~/.cache``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "agegender" / "openvino"


class TritonServer:
    """A ``tritonserver`` child process.

    Use as a context manager (``with TritonServer(repo) as server:``), which starts it,
    waits until it is ready and stops it on exit. ``http_url`` and ``grpc_url`` are
    ``host:port`` strings, as ``tritonclient`` expects them (no scheme).
    """

    def __init__(
        self,
        model_repository: str | Path = DEFAULT_REPOSITORY,
        *,
        http_port: int | None = None,
        grpc_port: int | None = None,
        metrics_port: int | None = None,
        host: str = "127.0.0.1",
        config_name: str = "auto",
        echo: bool = False,
        extra_args: tuple[str, ...] = (),
        front_door: bool = True,
        restart: bool = True,
        admin_key: str | None = None,
        drain_grace: float = 0.0,
        door_limits: door.ClientLimits | None = None,
        s3_read: str = "auto",
    ):
        # An s3:// URI is kept as given (Triton reads it itself); a folder is made absolute.
        self.model_repository = (
            model_repository if storage.is_s3(model_repository) else Path(model_repository).resolve()
        )
        self.s3_read = storage.read_mode(s3_read, extra_args)  # "stage" or "triton"
        self.staged: storage.Staged | None = None  # the local copy an s3:// repository is served from
        self.host = host
        # None: the environment's port (ports.env_port); 0: a free one, chosen by start() and chosen again there if
        # another process binds it first (tests and benchmarks, which run beside each other's servers).
        given = {"http": http_port, "grpc": grpc_port, "metrics": metrics_port}
        self._any_port = tuple(kind for kind, port in given.items() if port == 0)
        self.http_port, self.grpc_port, self.metrics_port = (
            ports.env_port(kind) if port is None else port for kind, port in given.items()
        )
        self.config_name = command.resolve_config_name(config_name)
        self.echo = echo
        self.extra_args = tuple(extra_args)
        # nginx in front (public ports) and Triton on internal ones; front_door=False serves Triton directly.
        self.front_door = front_door
        # Per client address at the door (docs/security.md "Fair sharing at the door"); env DOOR_CLIENT_*.
        self.door_limits = door_limits or door.ClientLimits.from_env()
        self.restart = restart
        self.drain_grace = drain_grace
        if admin_key is None:
            admin_key, generated = security.admin_key()
        else:
            generated = False
        self.admin_key = admin_key
        self.admin_key_generated = generated
        # Triton's own HTTP and gRPC ports behind the door, chosen by start() (triton_http_port, triton_grpc_port).
        self._inner_ports: tuple[int, int] | None = None
        # Triton's HTTP and gRPC ports held by this process from start() to stop(), so that no other account can
        # listen there while Triton loads or restarts and receive the keys sent to it (ports.Held).
        self._held: list[ports.Held] = []
        self.restarts = 0
        self.events: list[str] = []  # crashes and restarts, as logged
        self.startup_seconds: float | None = None
        # A per-server shm prefix lets stop() check for (and clear) this server's segments only.
        self.shm_prefix = f"{SHM_PREFIX}{uuid.uuid4().hex[:8]}_"
        self._proc: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.s3_mount: Path | None = None  # where the running Triton downloaded an s3:// repository
        self._log = ChildLog(400, echo=lambda: self.echo)
        self._door_log = ChildLog(100, "[nginx] ", echo=lambda: self.echo)  # nginx's own errors
        self._reader: threading.Thread | None = None
        self._started_at = 0.0
        self._door: door.Door | None = None
        self._gate: GateProcess | None = None  # between the door and Triton (serving/runtime/gate.py)
        self._reaper: subprocess.Popen | None = None
        self._supervisor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._ready_once = False
        self._bucket_models: tuple[str, ...] = ()  # an s3:// repository Triton reads itself: its models at start
        self._final_code: int | None = None
        self._start_retries = 0  # starts again after a signal before the first readiness (START_RETRIES)
        # The ensembles first, the rest right after (command.loads_first); decided at start(), when the folder is known.
        self.loads_first = False
        self._later = first_load.LaterLoads(
            triton_http=self._triton_http,
            metrics_url=lambda: self.metrics_url,  # a port asked for as 0 is chosen by start()
            gate_wanted=lambda: self._gate.wanted if self._gate is not None else None,  # the gate starts after Triton
            stopping=self._stopping,
            report=self._event,
            narrow=lambda: self._narrow,
            config=self._model_config,
        )
        # Where the ensembles load first, Triton starts on a view with one instance of each decoding model and gets
        # the others after the first answer (narrow_start.py); set by start().
        self._narrow: narrow_start.NarrowStart | None = None
        # The versions Triton serves, served again after a crash restart (a rollback must not undo itself then).
        self._served = pins.ServedVersions(
            triton_http=self._triton_http, config=self._model_config, pin=self._pin, report=self._event
        )
        self._crashes = 0  # of Triton; with the door's `restarting` flag under _crash_lock
        self._crash_lock = threading.Lock()
        self._pgids: dict[str, int] = {}  # the current group of the door and the gate, for the reaper

    @property
    def later_load_delay_s(self) -> float:
        """Seconds to hold the later loads back: 0, except in tests that need the gap to be long."""
        return self._later.delay_s

    @later_load_delay_s.setter
    def later_load_delay_s(self, seconds: float) -> None:
        self._later.delay_s = seconds

    @property
    def _client_host(self) -> str:
        """Where this process reaches the public ports: loopback for a wildcard address, an IPv6 one in brackets
        (``http://::1:8000`` is no URL, and readiness asked there never succeeded)."""
        host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"[{host}]" if ":" in host else host

    @property
    def http_url(self) -> str:
        return f"{self._client_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    @property
    def triton_http_port(self) -> int | None:
        """Where Triton's HTTP listens: an internal port behind the door (None until start()), else the public one."""
        return (self._inner_ports or (None, None))[0] if self.front_door else self.http_port

    @property
    def triton_grpc_port(self) -> int | None:
        return (self._inner_ports or (None, None))[1] if self.front_door else self.grpc_port

    @property
    def internal_grpc_url(self) -> str:
        """Triton's own gRPC port, behind the door and the gate: the only way to the internal models (the CNNs,
        pre/postprocess), for tests and benchmarks in this process; send :meth:`internal_headers` with each call."""
        return f"127.0.0.1:{self.triton_grpc_port}" if self.front_door else self.grpc_url

    @property
    def internal_http_url(self) -> str:
        return f"127.0.0.1:{self.triton_http_port}" if self.front_door else self.http_url

    def internal_headers(self) -> dict[str, str]:
        """What Triton's own ports want for inference behind the door (HTTP header and gRPC metadata)."""
        return security.internal_headers(security.internal_key()) if self.front_door else {}

    def public_ports(self) -> dict[str, int]:
        """The ports this server listens on for callers, keyed by the environment variable that sets each."""
        return {ports.env_name(kind): getattr(self, f"{kind}_port") for kind in ports.DEFAULT_PORTS}

    def command(self) -> tuple[list[str], dict[str, str]]:
        """The command line and environment ``start()`` uses."""
        env = dict(os.environ)
        # Python models import `serving` and `common` from the project root. The 2.51 wheel's stub runs its Python
        # isolated (sys.flags.isolated 1, checked 2026-12-06), so it ignores PYTHONPATH and finds them through the
        # editable install (`make setup`) and its working directory (sys.path's ''), Triton's, which is ours; a stub
        # that reads the environment finds them here.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(binary.ROOT), env.get("PYTHONPATH")]))
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        # Compiled models are cached per machine and loaded on later starts (ov_runtime.py); an operator's own
        # AGEGENDER_OV_CACHE wins, and an empty one turns the cache off.
        env.setdefault(ov_runtime.ENV, str(default_ov_cache()))
        repository = self.model_repository
        if self._narrow is not None:
            repository = self._narrow.view  # links to the folder below, all of them once the first answer is out
        elif self.staged is not None:
            repository = self.staged.folder  # kept across restarts: a crashed Triton reloads from disk
        elif storage.is_s3(self.model_repository):
            # Triton copies the models into this folder; it must exist and be empty, so each start (restarts by
            # the supervisor included) gets a fresh one inside the run folder, which stop() and the reaper remove;
            # a restart removes the one before (a crash loop kept a full copy of the repository per restart).
            if self.s3_mount is not None:  # the copy of the Triton before (this is a restart): gone with it
                shutil.rmtree(self.s3_mount, ignore_errors=True)
            mount = Path(self._run_dir()) / f"s3-{uuid.uuid4().hex[:8]}"
            mount.mkdir(mode=0o700)
            self.s3_mount = mount
            env.update(storage.triton_env(str(mount)))
        executable, backends = binary.container_binary(), None
        if executable is None:
            executable, backends = binary.pip_triton(Path(self._run_dir()), env)
        extra_args = (*self.extra_args, *command.first_args()) if self.loads_first else self.extra_args
        # Keys travel in the environment; Triton's argv holds placeholders (serving/runtime/argv_secret.c). Behind
        # the door, Triton's own ports also want the internal key for inference, which only the door presents.
        keys = {security.ADMIN_KEY_ENV: self.admin_key}
        if self.front_door:
            keys[security.INTERNAL_KEY_ENV] = security.internal_key()
        try:
            # A first start fails when a model fails to load: the operator is there to read why. A restart after a
            # crash must not: a version published since (a rollout that failed, one never rolled out) is what
            # Triton loads now, and a Triton exiting on it was restarted again and again, serving nothing. It runs
            # on, and the versions served before the crash are loaded again (pins.py).
            hidden = security.hide_in_env(env, keys, exit_on_error=not self._ready_once)
        except FileNotFoundError as err:
            raise TritonStartError(str(err)) from None
        args = command.triton_args(
            model_repository=repository,
            backend_directory=backends,
            # Behind the door Triton only listens on loopback.
            inner_host="127.0.0.1" if self.front_door else self.host,
            http_port=self.triton_http_port,
            grpc_port=self.triton_grpc_port,
            metrics_host=self.host,
            metrics_port=self.metrics_port,
            config_name=self.config_name,
            shm_prefix=self.shm_prefix,
            admin_key=hidden[security.ADMIN_KEY_ENV],
            internal_key=hidden.get(security.INTERNAL_KEY_ENV),
            reuse_ports=True,  # beside this launcher's ports.Held
            extra_args=extra_args,
        )
        return [executable, *args, hidden[security.PRELOAD_CHECK_ENV]], env

    def _run_dir(self) -> str:
        """This server's private temporary folder (backends, nginx prefix); removed by stop() or the reaper."""
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="triton-run-")
            if os.geteuid() == 0:
                # nginx workers run as door.WORKER_USER and must reach their body temp folder (nginx/, itself 0711).
                os.chmod(self._tmp.name, 0o711)
        return self._tmp.name

    def _tell_reaper(self, line: str) -> None:
        if self._reaper is not None and self._reaper.stdin is not None:
            try:
                self._reaper.stdin.write(line + "\n")
                self._reaper.stdin.flush()
            except (OSError, ValueError):
                pass

    def start(self) -> TritonServer:
        if self._proc is not None:
            raise RuntimeError("server already started")
        self._claim_ports()
        if storage.is_s3(self.model_repository):
            # Staging (below) lists the bucket once with the same checks; Triton reading it itself reports a wrong
            # key or an empty prefix only as load errors in its log, so ask first.
            if self.s3_read == "triton":
                try:
                    self._bucket_models = tuple(storage.preflight(self.model_repository))
                except storage.StorageError as err:
                    raise TritonStartError(str(err)) from None
        elif not self.model_repository.is_dir():
            raise TritonStartError(f"Model repository {self.model_repository} does not exist.")
        self._stopping.clear()
        self._started_at = time.monotonic()
        # In its own session, without a death signal: it survives the launcher's group signals and the launcher.
        self._reaper = children.spawn(
            [sys.executable, str(Path(__file__).with_name("reaper.py"))],
            env=security.without_keys(),  # it outlives the launcher and needs no key
            stdin=subprocess.PIPE,
            outlive=True,
            capture=False,
        )
        self._tell_reaper(f"path {self._run_dir()}")
        self._tell_reaper(f"shm {self.shm_prefix}")
        # Held before staging, which can take minutes: without the door these are the public ports, just checked.
        try:
            if self.front_door:
                self._held = [ports.Held(), ports.Held()]
                self._inner_ports = (self._held[0].port, self._held[1].port)
            else:
                self._held = [ports.Held(self.host, self.http_port), ports.Held(self.host, self.grpc_port)]
        except (OSError, ports.PortInUseError) as err:
            self.stop()
            raise TritonStartError(f"cannot hold Triton's ports: {err}") from None
        if storage.is_s3(self.model_repository) and self.s3_read == "stage":
            self._stage()
        if self.staged is not None or not storage.is_s3(self.model_repository):
            folder = self.staged.folder if self.staged is not None else self.model_repository
            self.loads_first = command.loads_first(folder, self.extra_args)
            if self.loads_first:
                view = Path(self._run_dir()) / narrow_start.VIEW_FOLDER
                self._narrow = narrow_start.NarrowStart(Path(folder), view, self.config_name)
                try:
                    self._narrow.build()
                except (OSError, UnicodeDecodeError) as err:
                    self.stop()
                    raise TritonStartError(f"cannot make the repository's view in the run folder: {err}") from None
        # Triton first: loading its models is the longest part of a start, and the gate's and nginx's own starts
        # (the gate is a Python process that imports grpc and aiohttp) now happen meanwhile instead of before it.
        # Nothing can reach Triton before the door listens, and readiness is asked through the door.
        try:
            self._spawn_triton()  # may refuse (no binary, no argv_secret.so) after the reaper and run folder exist
            if self.front_door:
                self._start_door()
        except BaseException:
            self.stop()
            raise
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()
        threading.Thread(target=shm_guard.guard, args=(SHM_DIR, self.shm_prefix, self._stopping), daemon=True).start()
        return self

    def _claim_ports(self) -> None:
        """Checks the public ports before anything starts: a taken one would otherwise make the readiness probe reach
        the *other* server ("ready in 0.0 s") while this one fails behind it. Ports asked for as 0 are chosen here,
        and chosen again if one is taken by then: free_port()'s reservations bind only this project's processes, and
        a port can be taken between the choice and the check (seen in make test, holder unknown at the time)."""
        chosen = {ports.env_name(kind) for kind in self._any_port}
        ports.check_free(self.host, {k: v for k, v in self.public_ports().items() if k not in chosen})
        for attempt in range(PORT_ATTEMPTS if chosen else 0):
            for kind in self._any_port:
                setattr(self, f"{kind}_port", ports.free_port(self.host))
            try:
                ports.check_free(self.host, {k: v for k, v in self.public_ports().items() if k in chosen})
                break
            except ports.PortInUseError as err:
                if attempt == PORT_ATTEMPTS - 1:
                    raise
                self._event(f"{err}: choosing free ports again")

    def _stage(self) -> None:
        """Copies the s3:// repository into the run folder (removed by stop() and the reaper) before Triton starts."""
        try:
            self.staged = storage.stage(str(self.model_repository), Path(self._run_dir()) / STAGE_FOLDER)
        except storage.StorageError as err:
            self.stop()
            raise TritonStartError(str(err)) from None
        self.s3_mount = self.staged.folder
        if self.echo:
            print(
                f"staged {self.staged.objects} objects ({self.staged.bytes / 1e6:.1f} MB) from {self.model_repository} "
                f"in {self.staged.seconds:.2f} s",
                file=sys.stderr,
                flush=True,
            )

    def _start_door(self) -> None:
        # The gate listens before nginx forwards to it; nginx routes gRPC and HTTP inference through it.
        self._gate = GateProcess(
            triton_http=f"127.0.0.1:{self.triton_http_port}",
            triton_grpc=f"127.0.0.1:{self.triton_grpc_port}",
            admin_key=self.admin_key,
            upstream_headers=security.internal_headers(security.internal_key()),
            later_models=self.later_models(),
            served_models=self.served_models(),
            per_client=self.door_limits.connections,  # the door's own per-address bound, over abandoned calls too
        )
        self._gate.on_start = lambda proc: self._new_group("gate", proc.pid)
        self._gate.start()
        self._door = door.Door(
            Path(self._run_dir()) / "nginx",
            listen_host=self.host,
            http_port=self.http_port,
            grpc_port=self.grpc_port,
            triton_http=f"127.0.0.1:{self.triton_http_port}",
            triton_grpc=f"127.0.0.1:{self.triton_grpc_port}",
            gate_http=self._gate.http,
            gate_grpc=self._gate.grpc,
            limits=self.door_limits,
            internal_key=security.internal_key(),  # the forwarder next to Triton presents it
        )
        try:
            nginx = self._door.start()  # in its own session and group (Door.start's default): stop() needs it
        except FileNotFoundError as err:
            raise TritonStartError(str(err)) from err
        self._door_started(nginx)

    def _new_group(self, name: str, pgid: int) -> None:
        """Tells the reaper about a child's new process group, and to forget the one it replaces (killed by then):
        after a pid wrap-around that number may lead another group, which a reaper acting on a stale list would
        kill."""
        old = self._pgids.get(name)
        self._pgids[name] = pgid
        self._tell_reaper(f"pgid {pgid}")
        if old is not None:
            self._tell_reaper(f"forget {old}")

    def _door_started(self, nginx: subprocess.Popen) -> None:
        """What each nginx master the door starts needs here: at start, and after a restart (Door.keep_running)."""
        self._new_group("door", nginx.pid)  # its own group: the master and its workers
        ports.hold_for(nginx.pid, self.http_port, self.grpc_port)
        threading.Thread(target=self._door_log.follow, args=(nginx,), daemon=True).start()

    def _spawn_triton(self) -> None:
        cmd, env = self.command()
        self._later.done.clear()
        self._proc = children.spawn(cmd, env=env, private=True)
        self._log.started(self._proc)  # errors() reads this run's lines only
        self._tell_reaper(f"pgid {self._proc.pid}")
        # Triton binds them after loading its models (without the door its own ports are the public ones).
        ports.hold_for(self._proc.pid, self.triton_http_port, self.triton_grpc_port, self.metrics_port)
        self._reader = threading.Thread(target=self._log.follow, args=(self._proc, self._served.notice), daemon=True)
        self._reader.start()
        if self.loads_first:  # after every (re)start: a restarted Triton loads the ensembles first again
            self._later.start(self._proc)
        else:
            self._later.done.set()
        if self.restart:
            # A dead or stopped stub breaks its model until Triton restarts (stubs.py): it is restarted as after a
            # crash ...
            stubs.StubWatch(
                self._proc.pid, served=self._version_ready, on_dead=self._broken, stopping=self._stopping
            ).start()
            # ... and so does a Triton that runs but no longer answers (liveness.py): a deadlock, a SIGSTOP.
            liveness.LivenessWatch(
                self._proc.pid,
                live=lambda timeout: self._live_status(timeout) == 200,
                on_hung=self._broken,
                armed=lambda: self._ready_once,
                stopping=self._stopping,
            ).start()

    def _version_ready(self, model: str, version: str) -> bool:
        return self._triton_http(stubs.ready_path(model, version))[0] == 200

    def _broken(self, message: str) -> None:
        """Triton runs but cannot serve: a stub of a served model died or stopped (stubs.StubWatch), or Triton stopped
        answering (liveness.LivenessWatch). Triton is killed, and the supervisor restarts it as after a crash, serving
        the versions served before. Before its first readiness this kill (a signal's) is started again once
        (START_RETRIES), and a second fails that start, with this said."""
        proc = self._proc
        if proc is None or self._stopping.is_set():
            return
        self._event(f"{message}: restarting Triton")
        children.kill_group(proc.pid)

    def _triton_http(
        self,
        path: str,
        *,
        post: bool = False,
        admin: bool = False,
        internal: bool = False,
        timeout: float = 2.0,
        body: dict | None = None,
    ) -> tuple[int, bytes]:
        """A call to Triton's own HTTP port (not through the door); ``admin``: with the admin key, which only the
        repository API needs (health needs no key at all); ``internal``: with the internal key, which a model's
        config needs behind the door; ``post``: a POST of ``body`` (JSON; an empty object by default)."""
        headers = self._own_port_headers(admin=admin, internal=internal)
        data = json.dumps(body if body is not None else {}).encode() if post else None
        request = urllib.request.Request(f"http://{self.internal_http_url}{path}", data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as err:
            return err.code, err.read()

    def _own_port_headers(self, *, admin: bool = True, internal: bool = True) -> dict[str, str]:
        """What Triton's own port wants: the admin key for the repository API, the internal key for a model's config
        (and inference) behind the door."""
        headers = dict(self.internal_headers()) if internal else {}
        if admin and self.admin_key:
            headers[security.ADMIN_HEADER] = self.admin_key
        return headers

    def _model_config(self, model: str) -> dict:
        """``model``'s config as the running Triton serves it (pins.py keeps it for a restart)."""
        path = f"/v2/models/{urllib.parse.quote(model, safe='')}/config"
        status, body = self._triton_http(path, admin=True, internal=True)
        if status != 200:  # an OSError, as a refused connection: pins.record keeps the config it had
            raise OSError(f"Triton answered HTTP {status} for the config of {model}: {body[:200]!r}")
        return json.loads(body)

    def _pin(self, model: str, versions: tuple[int, ...], config: dict | None = None) -> None:
        """Makes the running Triton serve ``versions`` of ``model``, as ``serving.ops.rollout --version`` does;
        ``config``: the one it was last served with, for a model Triton has none of (it failed to load)."""
        from serving.ops import rollout  # tritonclient: only when a restart has a version to pin again

        url, timeout = self.internal_http_url, first_load.LATER_LOAD_TIMEOUT_S
        rollout.switch(url, model, versions, timeout=timeout, headers=self._own_port_headers(), known_config=config)

    def _after_restart(self, proc: subprocess.Popen, crash: int) -> None:
        """Once the restarted ``proc`` has loaded every model, or failed to (or RESTORE_WAIT_S has passed: a model
        that does not finish loading must not keep the door shut): the versions served before the crash again
        (pins.py), then the door lets requests in, and what it serves is watched from then on. ``crash``: the crash
        this restart follows."""
        deadline = time.monotonic() + RESTORE_WAIT_S
        not_live_since = None
        while not (self._later.done.is_set() and first_load.triton_up(self._triton_http)):
            if proc.poll() is not None or self._stopping.wait(0.1):
                return
            if self._answers_not_live():
                not_live_since = not_live_since or time.monotonic()
                if time.monotonic() - not_live_since > NOT_LIVE_S:
                    # It will not come good by itself: restarted again, with the supervisor's backoff, until it does.
                    self._event(
                        f"Triton answers but has not been live for {NOT_LIVE_S:.0f} s after its restart (could it "
                        f"read its repository {self.model_repository}?); restarting it again"
                    )
                    children.kill_group(proc.pid)
                    return
            else:
                not_live_since = None
            if time.monotonic() > deadline:
                self._event(f"Triton was not ready {RESTORE_WAIT_S:.0f} s after its restart; serving what loaded")
                break
        try:
            self._served.restore()
        except Exception as err:  # noqa: BLE001 - whatever happens, the door must open again
            self._event(f"could not serve the versions served before the restart again: {err!r}")
            self._served.settled.set()
        finally:
            with self._crash_lock:  # not over the flag of a crash that came meanwhile
                front = self._door
                if front is not None and crash == self._crashes and not self._stopping.is_set():
                    with contextlib.suppress(OSError):
                        front.clear_flag("restarting")
        self._served.watch(proc, self._stopping)

    def _answers_not_live(self) -> bool:
        """Whether Triton's own port answers /v2/health/live, with anything but 200 (not while it is not listening)."""
        try:
            return self._live_status() != 200
        except OSError:
            return False

    def _live_status(self, timeout: float = 2.0) -> int:
        """The status Triton's own port answers /v2/health/live with; OSError when it does not answer."""
        return self._triton_http("/v2/health/live", timeout=timeout)[0]

    def served_models(self) -> tuple[str, ...]:
        """The models this server serves, for the gate's readiness: the ones named by ``--load-model``, else every
        model (a folder with a config) of the local or staged repository, or of the s3:// repository Triton reads
        itself as listed at the start."""
        if self.staged is None and storage.is_s3(self.model_repository):
            return command.named_models(self.extra_args) or self._bucket_models
        folder = Path(self.staged.folder if self.staged is not None else self.model_repository)
        return command.served_models(folder, self.config_name, self.extra_args)

    def later_models(self) -> tuple[str, ...]:
        """The public models loaded after the ensembles (their requests wait at the gate until they are ready)."""
        return first_load.later_models() if self.loads_first else ()

    def _event(self, message: str) -> None:
        self.events.append(message)
        print(f"[launcher] {message}", file=sys.stderr, flush=True)

    def _supervise(self) -> None:
        """Restarts Triton after a crash (once it has been ready), with exponential backoff; before its first
        readiness, starts it once more when a signal killed it (:meth:`_starts_again`)."""
        backoff = children.Backoff()
        while not self._stopping.is_set():
            proc = self._proc
            if proc is None:
                return
            born = time.monotonic()
            code = proc.wait()
            self._served.settled.clear()  # first: what this Triton served is what a restart must serve again
            if self._stopping.is_set():
                return
            if self._reader is not None:
                self._reader.join(timeout=5)
            if not (self.restart and self._ready_once):
                if self._starts_again(code):
                    try:
                        self._start_again(proc, code)
                        continue
                    except Exception as err:  # noqa: BLE001 - then the start fails, as it would have without it
                        self._event(f"could not start Triton again: {err}")
                        if self._proc is not proc:  # spawned before the failure: not left running unsupervised
                            children.kill_group(self._proc.pid)
                        self._start_retries = START_RETRIES  # before the code: waiters read it as final
                self._final_code = code
                return
            with self._crash_lock:
                self._crashes += 1
                front = self._door
                if front is not None:  # a clear 503 / UNAVAILABLE until it serves what it served (pins.py)
                    with contextlib.suppress(OSError):  # the door's prefix gone: still restart Triton
                        front.set_flag("restarting")
            self._clear_dead(proc)
            backoff.died(time.monotonic() - born)
            self._event(
                f"tritonserver {children.describe_exit(code)}; restarting in {backoff.wait:.0f} s. {self.errors()}"
                f"Last log lines:\n{self.logs(15)}"
            )
            if self._stopping.wait(backoff.wait):
                return
            backoff.waited()
            self.restarts += 1
            self._spawn_triton()
            threading.Thread(target=self._after_restart, args=(self._proc, self._crashes), daemon=True).start()

    def _starts_again(self, code: int) -> bool:
        """Whether a Triton that exited with ``code`` before its first readiness is started again (START_RETRIES).
        Until the supervisor has started it, :meth:`poll` and :meth:`wait_ready` read the same answer, not the exit."""
        return (
            self.restart
            and not self._ready_once
            and code < 0
            and self._start_retries < START_RETRIES
            and not self._stopping.is_set()
        )

    def _start_again(self, proc: subprocess.Popen, code: int) -> None:
        """Starts Triton again after ``proc`` died by a signal before its first readiness: its stubs and segments
        removed, nothing to pin again (nothing was served), the door left as it was (not ready yet)."""
        self._clear_dead(proc)
        self._event(
            f"tritonserver {children.describe_exit(code)} before it was ready; starting it again "
            f"({self._start_retries + 1} of {START_RETRIES}). {self.errors()}Last log lines:\n{self.logs(15)}"
        )
        # What the dead Triton's later loads reported is about that Triton (wait_ready does not read them meanwhile).
        self._later.failures.clear()
        if self._stopping.is_set():
            return  # the supervisor returns next: stop() is stopping what there is
        self._spawn_triton()
        self._start_retries += 1  # after the new process is in place: until then _starts_again still says yes
        if self._stopping.is_set():  # stop() may have taken the dead one meanwhile: this one must not outlive it
            self._clear_dead(self._proc)

    def _clear_dead(self, proc: subprocess.Popen) -> None:
        """What a Triton that died leaves: its Python stubs (its process group), the reaper's note of the group and
        its shared-memory segments."""
        children.kill_group(proc.pid)
        self._tell_reaper(f"forget {proc.pid}")  # the group is gone: its number may name another one later
        remove_segments(SHM_DIR, self.shm_prefix)

    def _exit(self) -> tuple[int | None, bool]:
        """The running Triton's exit code (None while it runs), and whether that exit stands before the first
        readiness: not while the supervisor starts it again (:meth:`_starts_again`), nor once it has (``_proc`` is
        read again last: a Triton started meanwhile is not this exit's)."""
        proc = self._proc
        code = proc.poll()
        return code, code is not None and not self._starts_again(code) and proc is self._proc

    def poll(self) -> int | None:
        """Triton's exit code once it has stopped for good, or None while it runs or is being restarted."""
        if self._proc is None:
            return None
        if self._final_code is not None:
            return self._final_code
        code, stands = self._exit()
        return code if stands and not (self.restart and self._ready_once) else None

    def logs(self, last: int | None = None) -> str:
        return self._log.last(last)

    def errors(self) -> str:
        """Triton's error lines of its last run, as a paragraph to put first in a message (child_log.py)."""
        return self._log.errors()

    def is_ready(self) -> bool:
        """Whether clients can be served: asked through the door, as clients ask."""
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 180) -> float:
        """Blocks until ``/v2/health/ready`` answers 200; returns the seconds since ``start()``."""
        deadline = time.monotonic() + timeout
        # Ready means every model: with the ensembles loaded first, also the ones loaded after them.
        while not (self._later.done.is_set() and self.is_ready()):
            code, stands = self._exit()
            if code is not None and not stands and not self._ready_once and time.monotonic() < deadline:
                time.sleep(0.25)  # the supervisor starts it again; what its later loads reported is forgotten then
                continue
            if self._later.failures and not self._ready_once:
                raise TritonStartError("; ".join(self._later.failures) + f"\nLast log lines:\n{self.logs(40)}")
            if stands and not self._ready_once:
                self._reader.join(timeout=5)
                raise TritonStartError(
                    f"tritonserver exited with code {self._proc.returncode} before it was ready. {self.errors()}"
                    f"Last log lines:\n{self.logs(40)}"
                )
            front = self._door
            if front is not None and front.proc is not None and not front.running():  # not poll(): stop needs it
                raise TritonStartError(
                    "the nginx front door exited (a public port taken?). Its log:\n" + self._door_log.last()
                )
            if time.monotonic() > deadline:
                raise TritonStartError(
                    f"tritonserver was not ready after {timeout:.0f} s (is a model failing to "
                    f"load, or a port taken?). {self.errors()}Last log lines:\n{self.logs(40)}\nThe door's log "
                    "(nginx):\n" + self._door_log.last(10)
                )
            time.sleep(0.25)
        if self.startup_seconds is None:
            self.startup_seconds = time.monotonic() - self._started_at
        if not self._ready_once:  # from the first readiness on, what it serves is kept across restarts (pins.py)
            self._served.settled.set()
            threading.Thread(target=self._served.watch, args=(self._proc, self._stopping), daemon=True).start()
            if self._door is not None and self.restart:  # and a door whose master dies starts again
                self._door.keep_running(self._event, self._door_started)
        self._ready_once = True
        return self.startup_seconds

    def stop(self) -> None:
        """Drains, then stops: readiness off (``drain_grace`` s), new requests refused at the door (``drain_grace``
        s), the door stops listening and accepted requests finish (up to DRAIN_TIMEOUT), then Triton gets SIGTERM
        (SIGKILL for its group after EXIT_TIMEOUT + 10 s); leftover shared memory and the temporary folder are
        removed."""
        self._stopping.set()
        front, self._door = self._door, None
        if front is not None:
            if front.running() and self._ready_once:
                front.set_flag("unready")  # load balancers stop sending first
                time.sleep(self.drain_grace)
                front.set_flag("draining")  # then new requests get 503 / UNAVAILABLE
                # ... for as long again while the front still listens: closing its listeners resets connections
                # still in the accept queue, and a graceful nginx stop closes accepted ones whose request has not
                # arrived yet; callers that got their 503 have stopped sending by then.
                time.sleep(self.drain_grace)
            front.stop(timeout=DRAIN_TIMEOUT)  # listeners close; accepted requests finish, then nginx exits
        gate, self._gate = self._gate, None
        if gate is not None:
            gate.stop()  # after the door: nothing new reaches it, and what it still forwards finishes
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                # Only Triton gets SIGTERM: it unloads the models and stops its Python stubs itself.
                stop_process(proc, timeout=EXIT_TIMEOUT + 10)
            children.kill_group(proc.pid)  # stubs orphaned by a crash or a kill share the group
            if self._reader is not None:
                self._reader.join(timeout=5)
        # Triton removes its segments on a clean exit; a killed one leaves them in RAM-backed /dev/shm.
        remove_segments(SHM_DIR, self.shm_prefix)
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout=5)
            self._supervisor = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        held, self._held = self._held, []
        for hold in held:
            hold.close()
        self._tell_reaper("clear")
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            try:
                reaper.stdin.close()
            except OSError:
                pass
            reaper.wait(timeout=10)

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
