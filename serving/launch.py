"""Starts Triton Inference Server on the project's model repository, and stops it cleanly.

    python -m serving.launch [--model-repository model_repository] [--http-port 8000] [--grpc-port 8001]
                             [--metrics-port 8002] [--host 127.0.0.1] [--config-name auto|cpu|default] [--timeout 300]

Inside the NVIDIA container the ``tritonserver`` on PATH is used with its own
backends (TensorFlow included). Elsewhere the binary shipped in the
``nvidia-pytriton`` wheel runs, which only has the Python backend: a backend
folder with the stub for this interpreter is assembled in a temporary folder.
``--config-name auto`` uses the production ``config.pbtxt`` files only with the
container's binary and a visible GPU, else the ``configs/cpu.pbtxt`` variants.
Ports default to env TRITON_HTTP_PORT / TRITON_GRPC_PORT / TRITON_METRICS_PORT,
else 8000 / 8001 / 8002. The server binds 127.0.0.1 unless told otherwise, since
it has no authentication.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import importlib.util
import os
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

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REPOSITORY = ROOT / "model_repository"
#: Python-based Triton backends of this project, one folder each; copied next to the pip binary's `python` backend.
PYTHON_BACKENDS = ROOT / "serving" / "backends"
DEFAULT_PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "triton_python_backend_shm_region_"
# Seconds Triton may spend after SIGTERM draining connections and unloading models before we kill the group.
EXIT_TIMEOUT = 10


class TritonStartError(RuntimeError):
    """Triton exited or did not become ready; the message ends with its last log lines."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (another process may still take it before Triton binds)."""
    with socket.socket() as s:
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
    ):
        self.model_repository = Path(model_repository).resolve()
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
        self.startup_seconds: float | None = None
        # A per-server shm prefix lets stop() check for (and clear) this server's segments only.
        self.shm_prefix = f"{SHM_PREFIX}{uuid.uuid4().hex[:8]}_"
        self._proc: subprocess.Popen | None = None
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._log: collections.deque[str] = collections.deque(maxlen=400)
        self._reader: threading.Thread | None = None
        self._started_at = 0.0

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
        args = [f"--model-repository={self.model_repository}"]
        binary = shutil.which("tritonserver")
        if binary is None:
            binary, backends = self._pip_triton(env)
            args.append(f"--backend-directory={backends}")
        for kind in ("http", "grpc", "metrics"):
            args += [f"--{kind}-address={self.host}", f"--{kind}-port={getattr(self, f'{kind}_port')}"]
        if self.config_name != "default":
            args.append(f"--model-config-name={self.config_name}")
        args += [
            f"--exit-timeout-secs={EXIT_TIMEOUT}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
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
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="triton-backends-")
            backend = Path(self._tmp.name) / "python"
            shutil.copytree(pkg / "backends" / "python", backend, ignore=shutil.ignore_patterns("__pycache__"))
            shutil.copy2(stub / "triton_python_backend_stub", backend)
            # Our Python-based backends (serving/backends/<name>/model.py, selected by `backend: "<name>"`) must
            # sit next to the `python` backend, whose libtriton_python.so runs them.
            for own in PYTHON_BACKENDS.iterdir():
                if (own / "model.py").is_file():
                    shutil.copytree(own, Path(self._tmp.name) / own.name, ignore=shutil.ignore_patterns("__pycache__"))
        libs = [
            str(pkg.parent.parent / "nvidia_pytriton.libs"),
            sysconfig.get_config_var("LIBDIR"),
            env.get("LD_LIBRARY_PATH"),
        ]
        env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, libs))
        # The stub embeds Python and finds its prefix (the venv, with numpy and TF) from the first python on PATH.
        env["PATH"] = os.pathsep.join(filter(None, [str(Path(sys.executable).parent), env.get("PATH")]))
        return str(pkg / "bin" / "tritonserver"), Path(self._tmp.name)

    def start(self) -> TritonServer:
        if self._proc is not None:
            raise RuntimeError("server already started")
        if not self.model_repository.is_dir():
            raise TritonStartError(f"Model repository {self.model_repository} does not exist.")
        cmd, env = self.command()
        self._started_at = time.monotonic()
        self._proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        self._reader = threading.Thread(target=self._read_logs, daemon=True)
        self._reader.start()
        return self

    def _read_logs(self) -> None:
        # Draining the pipe continuously keeps a chatty server from blocking on a full pipe.
        for line in self._proc.stdout:
            self._log.append(line.rstrip("\n"))
            if self.echo:
                print(line, end="", file=sys.stderr, flush=True)

    def poll(self) -> int | None:
        """The server's exit code, or None while it runs (or was never started)."""
        return None if self._proc is None else self._proc.poll()

    def logs(self, last: int | None = None) -> str:
        lines = list(self._log)
        return "\n".join(lines[-last:] if last else lines)

    def is_ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def wait_ready(self, timeout: float = 180) -> float:
        """Blocks until ``/v2/health/ready`` answers 200; returns the seconds since ``start()``."""
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            if self._proc.poll() is not None:
                self._reader.join(timeout=5)
                raise TritonStartError(
                    f"tritonserver exited with code {self._proc.returncode} before it was ready. "
                    f"Last log lines:\n{self.logs(40)}"
                )
            if time.monotonic() > deadline:
                raise TritonStartError(
                    f"tritonserver was not ready after {timeout:.0f} s (is a model failing to "
                    f"load, or a port taken?). Last log lines:\n{self.logs(40)}"
                )
            time.sleep(0.25)
        self.startup_seconds = time.monotonic() - self._started_at
        return self.startup_seconds

    def stop(self) -> None:
        """SIGTERM, then SIGKILL for the whole process group, and removal of leftover shared memory."""
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                # Only Triton gets SIGTERM: it unloads the models and stops its Python stubs itself.
                proc.terminate()
                try:
                    proc.wait(timeout=EXIT_TIMEOUT + 10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # stubs orphaned by a crash or a kill share the group
            if self._reader is not None:
                self._reader.join(timeout=5)
        # Triton removes its segments on a clean exit; a killed one leaves them in RAM-backed /dev/shm.
        for leftover in SHM_DIR.glob(f"{self.shm_prefix}*"):
            leftover.unlink(missing_ok=True)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

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
    p.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
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
        while (code := server.poll()) is None:
            time.sleep(0.5)
        print(f"tritonserver exited with code {code}", file=sys.stderr)
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
