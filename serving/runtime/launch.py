"""Starts Triton Inference Server on the project's model repository, and stops it cleanly.

    python -m serving.runtime.launch [--model-repository model_repository] [--http-port 8000] [--grpc-port 8001]
                             [--metrics-port 8002] [--host 127.0.0.1] [--config-name auto|cpu|default] [--timeout 300]
                             [--model-control-mode none|explicit|poll]

``--model-repository`` also takes ``s3://[HOST:PORT/]BUCKET/PREFIX`` (serving/runtime/storage.py).

Inside the NVIDIA container the ``tritonserver`` on PATH is used with its own
backends (TensorFlow included). Elsewhere the binary shipped in the
``nvidia-pytriton`` wheel runs, which only has the Python backend: a backend
folder with the stub for this interpreter is assembled in a temporary folder.
``--config-name auto`` uses the production ``config.pbtxt`` files only with the
container's binary and a visible GPU, else the ``configs/cpu.pbtxt`` variants.
Ports default to env TRITON_HTTP_PORT / TRITON_GRPC_PORT / TRITON_METRICS_PORT,
else 8000 / 8001 / 8002. Everything binds 127.0.0.1 unless told otherwise.

Hardening (README "Security"): nginx (serving/runtime/door.py) owns the public HTTP and gRPC ports and
Triton listens on internal 127.0.0.1 ports behind it; admin APIs need ``admin-key: $TRITON_ADMIN_KEY``
(serving/runtime/security.py; a random key per start when unset); Triton runs with umask 077 so its shared
memory is private; a crashed Triton is restarted with backoff; SIGTERM drains (readiness off, new
requests refused at the door, accepted ones finish); a reaper process (serving/runtime/reaper.py) removes
servers, segments and temp folders if the launcher itself is killed.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import importlib.util
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

from serving.ops.rollout import CONTROL_ARGS
from serving.runtime import door as proxy
from serving.runtime import security, shm_guard, storage
from serving.runtime.subproc import stop_process

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_REPOSITORY = ROOT / "model_repository"
#: Python-based Triton backends of this project, one folder each; copied next to the pip binary's `python` backend.
PYTHON_BACKENDS = ROOT / "serving" / "pipeline" / "backends"
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region_"
# Shutdown bounds, derived from the longest a request may take (proxy.REQUEST_TIMEOUT_S, itself derived from
# the per-request decode budget): the door waits that long for accepted requests (anything slower has already
# been answered 504 by it), then Triton, with nothing in flight any more, gets the same to unload its models.
DRAIN_TIMEOUT = proxy.REQUEST_TIMEOUT_S + 5
EXIT_TIMEOUT = proxy.REQUEST_TIMEOUT_S
# Restart backoff after a crash: doubles from the first value up to the cap; reset after a stable minute.
RESTART_BACKOFF_S = (1.0, 30.0)
STABLE_S = 60.0


class TritonStartError(RuntimeError):
    """Triton exited or did not become ready; the message ends with its last log lines."""


#: Ports handed out by free_port() in this process: never handed out twice (a server's public port, chosen
#: before it starts, is not bound yet when its internal ports are chosen).
_handed_out: set[int] = set()
#: How far below the kernel's ephemeral range free_port() looks.
PORT_SPAN = 10_000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (another process may still take it before the server binds).

    Chosen below the kernel's ephemeral range: outgoing connections take their source ports from that range,
    so a client retrying against a server that is still starting cannot be holding the port it will bind.
    """
    low = _ephemeral_low()
    for _ in range(100):
        port = secrets.randbelow(PORT_SPAN) + max(1024, low - PORT_SPAN)
        if port in _handed_out or port >= low:
            continue
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    with socket.socket() as s:  # a crowded range: the kernel's pick
        s.bind((host, 0))
        return s.getsockname()[1]


def gpu_visible() -> bool:
    return shutil.which("nvidia-smi") is not None and Path("/dev/nvidia0").exists()


def _env_port(kind: str) -> int:
    return int(os.environ.get(f"TRITON_{kind.upper()}_PORT", DEFAULT_PORTS[kind]))


def _pytriton_dir() -> Path | None:
    # find_spec locates the wheel without importing pytriton (and its heavy dependencies).
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "tritonserver"
    return path if (path / "bin" / "tritonserver").exists() else None


try:
    _prctl = ctypes.CDLL(None).prctl  # looked up here: the child between fork and exec should do as little as possible
except (OSError, AttributeError):
    _prctl = None


def _die_with_parent() -> None:
    # Keeps a SIGKILLed launcher (a test run cut short) from leaving Triton running. Linux ties this to the
    # thread that started the server, so start servers from a thread that outlives them.
    if _prctl is not None:
        _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _private_child() -> None:
    # umask 077: the Python backend creates its /dev/shm regions (which hold uploaded images) with the
    # process umask applied, 0644 by default; 077 makes them owner-only (issue 7, row 3).
    os.umask(0o077)
    _die_with_parent()


def _describe_exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by signal {-code} ({signal.Signals(-code).name})"
    return f"exited with code {code}"


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


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
    ):
        # An s3:// URI is kept as given (Triton reads it itself); a folder is made absolute.
        self.model_repository = (
            model_repository if storage.is_s3(model_repository) else Path(model_repository).resolve()
        )
        self.host = host
        self.http_port = http_port or _env_port("http")
        self.grpc_port = grpc_port or _env_port("grpc")
        self.metrics_port = metrics_port or _env_port("metrics")
        if config_name not in ("auto", "cpu", "default"):
            raise ValueError(f"config_name must be auto, cpu or default, got {config_name!r}")
        if config_name == "auto":
            # The production configs need a GPU and the TensorFlow backend, which only the NVIDIA image's
            # tritonserver has; the pip wheel's binary is Python-backend only, GPU or not.
            config_name = "default" if gpu_visible() and shutil.which("tritonserver") else "cpu"
        self.config_name = config_name
        self.echo = echo
        self.extra_args = tuple(extra_args)
        # nginx in front (public ports) and Triton on internal ones; front_door=False serves Triton directly.
        self.front_door = front_door
        self.restart = restart
        self.drain_grace = drain_grace
        if admin_key is None:
            admin_key, generated = security.admin_key()
        else:
            generated = False
        self.admin_key = admin_key
        self.admin_key_generated = generated
        self.triton_http_port = self.http_port
        self.triton_grpc_port = self.grpc_port
        self.restarts = 0
        self.events: list[str] = []  # crashes and restarts, as logged
        self.startup_seconds: float | None = None
        # A per-server shm prefix lets stop() check for (and clear) this server's segments only.
        self.shm_prefix = f"{SHM_PREFIX}{uuid.uuid4().hex[:8]}_"
        self._proc: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self.s3_mount: Path | None = None  # where the running Triton downloaded an s3:// repository
        self._log: collections.deque[str] = collections.deque(maxlen=400)
        self._door_log: collections.deque[str] = collections.deque(maxlen=100)  # nginx's own errors
        self._reader: threading.Thread | None = None
        self._started_at = 0.0
        self._door: proxy.Door | None = None
        self._reaper: subprocess.Popen | None = None
        self._supervisor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._ready_once = False
        self._final_code: int | None = None

    @property
    def _client_host(self) -> str:
        return "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host

    @property
    def http_url(self) -> str:
        return f"{self._client_host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self._client_host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self._client_host}:{self.metrics_port}/metrics"

    def command(self) -> tuple[list[str], dict[str, str]]:
        """The command line and environment ``start()`` uses."""
        env = dict(os.environ)
        # Python models import `serving` and `common` from the project root.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        if storage.is_s3(self.model_repository):
            # Triton copies the models into this folder; it must exist and be empty, so each start (restarts by
            # the supervisor included) gets a fresh one inside the run folder, which stop() and the reaper remove.
            mount = Path(self._run_dir()) / f"s3-{uuid.uuid4().hex[:8]}"
            mount.mkdir(mode=0o700)
            self.s3_mount = mount
            env.update(storage.triton_env(str(mount)))
        args = [f"--model-repository={self.model_repository}"]
        binary = shutil.which("tritonserver")
        if binary is None:
            binary, backends = self._pip_triton(env)
            args.append(f"--backend-directory={backends}")
        # Behind the door Triton only listens on loopback; metrics (read-only) are served directly.
        inner = "127.0.0.1" if self.front_door else self.host
        args += [f"--http-address={inner}", f"--http-port={self.triton_http_port}"]
        args += [f"--grpc-address={inner}", f"--grpc-port={self.triton_grpc_port}"]
        args += [f"--metrics-address={self.host}", f"--metrics-port={self.metrics_port}"]
        if self.config_name != "default":
            args.append(f"--model-config-name={self.config_name}")
        args += [
            f"--exit-timeout-secs={EXIT_TIMEOUT}",
            # Every config is complete; without this the Python backend starts one extra stub process per
            # model just to ask it to complete its config, which doubles the stubs started at cold start.
            "--disable-auto-complete-config",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *security.restricted_args(self.admin_key),
        ]
        return [binary, *args, *self.extra_args], env

    def _pip_triton(self, env: dict[str, str]) -> tuple[str, Path]:
        pkg = _pytriton_dir()
        if pkg is None:
            raise TritonStartError(
                "No `tritonserver` on PATH and no nvidia-pytriton wheel; run `make setup` "
                "or use the nvcr.io/nvidia/tritonserver image."
            )
        stub = pkg / "python_backend_stubs" / f"{sys.version_info.major}.{sys.version_info.minor}"
        if not stub.is_dir():
            raise TritonStartError(f"nvidia-pytriton has no Python backend stub for Python {sys.version.split()[0]}.")
        # The backend expects its stub next to libtriton_python.so, and the wheel keeps one stub per Python version.
        backend = Path(self._run_dir()) / "backends" / "python"
        if not backend.is_dir():
            shutil.copytree(pkg / "backends" / "python", backend, ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copy2(stub / "triton_python_backend_stub", backend)
            # Our Python-based backends (serving/pipeline/backends/<name>/model.py, `backend: "<name>"`) must
            # sit next to the `python` backend, whose libtriton_python.so runs them.
            for own in PYTHON_BACKENDS.iterdir():
                if (own / "model.py").is_file():
                    shutil.copytree(own, backend.parent / own.name, ignore=shutil.ignore_patterns("__pycache__"))
        libs = [
            str(pkg.parent.parent / "nvidia_pytriton.libs"),
            sysconfig.get_config_var("LIBDIR"),
            env.get("LD_LIBRARY_PATH"),
        ]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, libs))
        # The stub embeds Python and finds its prefix (the venv, with numpy and OpenVINO) from the first python on PATH.
        env["PATH"] = os.pathsep.join(filter(None, [str(Path(sys.executable).parent), env.get("PATH")]))
        return str(pkg / "bin" / "tritonserver"), Path(self._run_dir()) / "backends"

    def _run_dir(self) -> str:
        """This server's private temporary folder (backends, nginx prefix); removed by stop() or the reaper."""
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="triton-run-")
            if os.geteuid() == 0:
                # nginx workers run as nobody and must reach their body temp folder (nginx/, itself 0711).
                os.chmod(self._tmp.name, 0o711)
        return self._tmp.name

    def _tell_reaper(self, line: str) -> None:
        if self._reaper is not None and self._reaper.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                self._reaper.stdin.write(line + "\n")
                self._reaper.stdin.flush()

    def start(self) -> TritonServer:
        if self._proc is not None:
            raise RuntimeError("server already started")
        if storage.is_s3(self.model_repository):
            try:
                storage.preflight(self.model_repository)
            except storage.StorageError as err:
                raise TritonStartError(str(err)) from None
        elif not self.model_repository.is_dir():
            raise TritonStartError(f"Model repository {self.model_repository} does not exist.")
        self._stopping.clear()
        self._started_at = time.monotonic()
        self._reaper = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("reaper.py"))],
            stdin=subprocess.PIPE,
            text=True,
            start_new_session=True,  # survives the launcher's process group and its terminal's signals
        )
        self._tell_reaper(f"path {self._run_dir()}")
        self._tell_reaper(f"shm {self.shm_prefix}")
        if self.front_door:
            self.triton_http_port, self.triton_grpc_port = free_port(), free_port()
            self._door = proxy.Door(
                Path(self._run_dir()) / "nginx",
                listen_host=self.host,
                http_port=self.http_port,
                grpc_port=self.grpc_port,
                triton_http=f"127.0.0.1:{self.triton_http_port}",
                triton_grpc=f"127.0.0.1:{self.triton_grpc_port}",
            )
            try:
                door = self._door.start(preexec_fn=_die_with_parent)
            except FileNotFoundError as err:
                raise TritonStartError(str(err)) from err
            self._tell_reaper(f"pid {door.pid}")
            threading.Thread(target=self._read_logs, args=(door, self._door_log, "[nginx] "), daemon=True).start()
        self._spawn_triton()
        self._supervisor = threading.Thread(target=self._supervise, daemon=True)
        self._supervisor.start()
        threading.Thread(target=shm_guard.guard, args=(SHM_DIR, self.shm_prefix, self._stopping), daemon=True).start()
        return self

    def _spawn_triton(self) -> None:
        cmd, env = self.command()
        self._proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
            preexec_fn=_private_child,
        )
        self._tell_reaper(f"pgid {self._proc.pid}")
        self._reader = threading.Thread(target=self._read_logs, args=(self._proc, self._log), daemon=True)
        self._reader.start()

    def _read_logs(self, proc: subprocess.Popen, sink: collections.deque, tag: str = "") -> None:
        # Draining the pipe continuously keeps a chatty server from blocking on a full pipe.
        for line in proc.stdout:
            sink.append(tag + line.rstrip("\n"))
            if self.echo:
                print(tag + line, end="", file=sys.stderr, flush=True)

    def _event(self, message: str) -> None:
        self.events.append(message)
        print(f"[launcher] {message}", file=sys.stderr, flush=True)

    def _supervise(self) -> None:
        """Restarts Triton after a crash (once it has been ready), with exponential backoff."""
        backoff = RESTART_BACKOFF_S[0]
        while not self._stopping.is_set():
            proc = self._proc
            if proc is None:
                return
            born = time.monotonic()
            code = proc.wait()
            if self._stopping.is_set():
                return
            if self._reader is not None:
                self._reader.join(timeout=5)
            if not (self.restart and self._ready_once):
                self._final_code = code
                return
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # its Python stubs
            for leftover in SHM_DIR.glob(f"{self.shm_prefix}*"):
                leftover.unlink(missing_ok=True)
            if time.monotonic() - born > STABLE_S:
                backoff = RESTART_BACKOFF_S[0]
            self._event(
                f"tritonserver {_describe_exit(code)}; restarting in {backoff:.0f} s. Last log lines:\n" + self.logs(15)
            )
            if self._stopping.wait(backoff):
                return
            backoff = min(backoff * 2, RESTART_BACKOFF_S[1])
            self.restarts += 1
            self._spawn_triton()

    def poll(self) -> int | None:
        """Triton's exit code once it has stopped for good, or None while it runs or is being restarted."""
        if self._proc is None:
            return None
        if self._final_code is not None:
            return self._final_code
        code = self._proc.poll()
        if code is not None and not (self.restart and self._ready_once):
            return code
        return None

    def logs(self, last: int | None = None) -> str:
        lines = list(self._log)
        return "\n".join(lines[-last:] if last else lines)

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
        while not self.is_ready():
            if self._proc.poll() is not None and not self._ready_once:
                self._reader.join(timeout=5)
                raise TritonStartError(
                    f"tritonserver exited with code {self._proc.returncode} before it was ready. "
                    f"Last log lines:\n{self.logs(40)}"
                )
            door = self._door.proc if self._door is not None else None
            if door is not None and door.poll() is not None:
                raise TritonStartError(
                    f"the nginx front door exited with code {door.returncode} (a public port taken?). "
                    f"Its log:\n" + "\n".join(self._door_log)
                )
            if time.monotonic() > deadline:
                raise TritonStartError(
                    f"tritonserver was not ready after {timeout:.0f} s (is a model failing to "
                    f"load, or a port taken?). Last log lines:\n{self.logs(40)}\nThe door's log (nginx):\n"
                    + "\n".join(list(self._door_log)[-10:])
                )
            time.sleep(0.25)
        if self.startup_seconds is None:
            self.startup_seconds = time.monotonic() - self._started_at
        self._ready_once = True
        return self.startup_seconds

    def stop(self) -> None:
        """Drains, then stops: readiness off, new requests refused at the door, accepted ones finish
        (up to DRAIN_TIMEOUT), then Triton gets SIGTERM (SIGKILL for its group after EXIT_TIMEOUT + 10 s);
        leftover shared memory and the temporary folder are removed."""
        self._stopping.set()
        door, self._door = self._door, None
        if door is not None:
            if door.proc is not None and door.proc.poll() is None and self._ready_once:
                door.set_flag("unready")  # load balancers stop sending first
                time.sleep(self.drain_grace)
                door.set_flag("draining")  # then new requests get 503 / UNAVAILABLE
            door.stop(timeout=DRAIN_TIMEOUT)
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                # Only Triton gets SIGTERM: it unloads the models and stops its Python stubs itself.
                stop_process(proc, timeout=EXIT_TIMEOUT + 10)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # stubs orphaned by a crash or a kill share the group
            if self._reader is not None:
                self._reader.join(timeout=5)
        # Triton removes its segments on a clean exit; a killed one leaves them in RAM-backed /dev/shm.
        for leftover in SHM_DIR.glob(f"{self.shm_prefix}*"):
            leftover.unlink(missing_ok=True)
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join(timeout=5)
            self._supervisor = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
        self._tell_reaper("clear")
        reaper, self._reaper = self._reaper, None
        if reaper is not None:
            with contextlib.suppress(OSError):
                reaper.stdin.close()
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model-repository", default=str(DEFAULT_REPOSITORY), help="a folder, or s3://[HOST:PORT/]BUCKET/PREFIX"
    )
    p.add_argument("--http-port", type=int, default=_env_port("http"))
    p.add_argument("--grpc-port", type=int, default=_env_port("grpc"))
    p.add_argument("--metrics-port", type=int, default=_env_port("metrics"))
    p.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes the unauthenticated API")
    p.add_argument(
        "--config-name",
        choices=("auto", "cpu", "default"),
        default="auto",
        help="cpu: configs/cpu.pbtxt; default: config.pbtxt; auto: default with a GPU and the NVIDIA image",
    )
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for readiness")
    p.add_argument(
        "--drain-grace", type=float, default=2.0, help="seconds readiness is off before new requests are refused"
    )
    p.add_argument("--no-front-door", action="store_true", help="serve Triton directly, without nginx (debugging)")
    p.add_argument(
        "--model-control-mode",
        choices=("none", "explicit", "poll"),
        default="none",
        help="explicit: versions switch through the repository API (python -m serving.ops.rollout); poll: every 5 s",
    )
    args = p.parse_args(argv)

    # SIGTERM (docker stop, systemd) takes the same clean path as Ctrl-C; SIGINT is re-armed because
    # a shell starts background jobs with it ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    server = TritonServer(
        args.model_repository,
        http_port=args.http_port,
        grpc_port=args.grpc_port,
        metrics_port=args.metrics_port,
        host=args.host,
        config_name=args.config_name,
        echo=True,
        front_door=not args.no_front_door,
        drain_grace=args.drain_grace,
        extra_args=CONTROL_ARGS[args.model_control_mode],
    )
    origin = (
        "generated for this start; set TRITON_ADMIN_KEY to choose it"
        if server.admin_key_generated
        else "from TRITON_ADMIN_KEY"
    )
    print(
        f"Admin APIs ({', '.join(security.RESTRICTED_APIS)}) need header `{security.ADMIN_HEADER}`; "
        f"key {security.fingerprint(server.admin_key)} ({origin}).",
        file=sys.stderr,
        flush=True,
    )
    try:
        server.start()
        seconds = server.wait_ready(args.timeout)
        print(
            f"\nTriton ready in {seconds:.1f} s ({server.config_name} configs): HTTP {server.http_url}, "
            f"gRPC {server.grpc_url}, metrics {server.metrics_url}. Ctrl-C stops it.",
            file=sys.stderr,
            flush=True,
        )
        # A crash is restarted by the server's supervisor; poll() only returns once it gives up.
        while (code := server.poll()) is None:
            time.sleep(0.5)
        print(f"tritonserver {_describe_exit(code)}", file=sys.stderr)
        return code or 1
    except TritonStartError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping Triton...", file=sys.stderr, flush=True)
        return 0
    finally:
        # A second Ctrl-C must not cut the (time-bounded) shutdown short and strand the server.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
