"""Starts Triton Inference Server on the project's model repository, and stops it cleanly.

    python -m serving.runtime.launch [--model-repository model_repository] [--http-port 8000] [--grpc-port 8001]
                             [--metrics-port 8002] [--host 127.0.0.1] [--config-name auto|cpu|default] [--timeout 300]
                             [--model-control-mode none|explicit|poll]

``--model-repository`` also takes ``s3://[HOST:PORT/]BUCKET/PREFIX`` (serving/runtime/storage.py).
Ports default to env TRITON_HTTP_PORT / TRITON_GRPC_PORT / TRITON_METRICS_PORT, else 8000 / 8001 / 8002; a
port already taken ends the launcher at once with exit code 2, naming the process that holds it; port 0 asks for a
free one, printed when ready. Everything binds 127.0.0.1 unless told otherwise.

This file is the command line only. The parts: ports.py (defaults, free ports, in-use check), binary.py (which
tritonserver, the pip wheel's backend folder), command.py (Triton's argument list), children.py (how every child
process is started: its own session), server.py (TritonServer: start, supervise, ready, drain and stop), first_load.py
(the models loaded after the ensembles), door.py (nginx), reaper.py (cleanup after a killed launcher). Stopping:
docs/operations.md.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from common.ports import port_number
from serving.runtime import door, ports, security, storage
from serving.runtime.binary import DEFAULT_REPOSITORY
from serving.runtime.children import describe_exit, interrupt_on_signals
from serving.runtime.command import CONTROL_ARGS
from serving.runtime.errors import TritonStartError
from serving.runtime.ports import PortInUseError, free_port
from serving.runtime.server import DRAIN_GRACE_S, SHM_DIR, SHM_PREFIX, TritonServer

# Re-exported: tests and tools import these from the launcher.
__all__ = ["DEFAULT_REPOSITORY", "SHM_DIR", "SHM_PREFIX", "TritonServer", "TritonStartError", "free_port", "main"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model-repository", default=str(DEFAULT_REPOSITORY), help="a folder, or s3://[HOST:PORT/]BUCKET/PREFIX"
    )
    try:
        defaults = {kind: ports.env_port(kind) for kind in ("http", "grpc", "metrics")}
    except ValueError as err:  # a TRITON_<KIND>_PORT that is not a port: one line naming it, not a traceback
        p.error(str(err))
    p.add_argument("--http-port", type=_port, default=defaults["http"])
    p.add_argument("--grpc-port", type=_port, default=defaults["grpc"])
    p.add_argument("--metrics-port", type=_port, default=defaults["metrics"])
    p.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes the unauthenticated API")
    p.add_argument(
        "--config-name",
        choices=("auto", "cpu", "default"),
        default="auto",
        help="cpu: configs/cpu.pbtxt; default: config.pbtxt; auto: default with a GPU and the NVIDIA image",
    )
    p.add_argument("--timeout", type=float, default=300, help="seconds to wait for readiness")
    p.add_argument(
        "--drain-grace",
        type=float,
        default=DRAIN_GRACE_S,
        help="seconds readiness is off before new requests are refused",
    )
    p.add_argument("--no-front-door", action="store_true", help="serve Triton directly, without nginx (debugging)")
    p.add_argument(
        "--model-control-mode",
        choices=("none", "explicit", "poll"),
        default="none",
        help="explicit: versions switch through the repository API (python -m serving.ops.rollout); poll: every 5 s",
    )
    p.add_argument(
        "--s3-read",
        choices=storage.READ_MODES,
        default="auto",
        help="s3:// repositories only. stage: copy it to a private local folder first (one listing, parallel "
        "reads), then serve that; triton: Triton reads the bucket itself (slower start, but rollout and polling "
        "see versions published after the start); auto: triton under explicit or poll model control, else stage",
    )
    # Fair sharing at the door (docs/security.md): per client address; defaults from door.ClientLimits / env.
    for name, env in door.ClientLimits.ENV.items():
        p.add_argument(f"--door-client-{name}", type=int, metavar="N", help=f"per client address (env {env})")
    args = p.parse_args(argv)
    try:
        args.door_limits = door.ClientLimits.from_env(
            connections=args.door_client_connections, rate=args.door_client_rate, burst=args.door_client_burst
        )
    except ValueError as err:
        p.error(str(err))
    given = [(f"--{kind}-port", getattr(args, f"{kind}_port")) for kind in ("http", "grpc", "metrics")]
    for k, (name, port) in enumerate(given):
        twin = next((other for other, taken in given[k + 1 :] if port and taken == port), None)
        if twin:  # the readiness probe then met the gRPC listener and died on a traceback
            p.error(f"{name} and {twin} are both {port}: each needs its own port (0: a free one)")
    return args


def _port(text: str) -> int:
    """A port number; 0 asks for a free one."""
    if (port := port_number(text)) is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535; 0: a free one)")
    return port


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:  # keys Triton's flag syntax cannot carry, or guessable: one line naming the variable, before anything starts
        security.admin_key()
        security.internal_key()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    # SIGTERM (docker stop, systemd, kill of the whole `make serve` group) takes the same clean path as Ctrl-C. The
    # children run in their own sessions (children.py), so only this process gets the signal and server.stop() runs
    # the drain.
    interrupt_on_signals()
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
        door_limits=args.door_limits,
        extra_args=CONTROL_ARGS[args.model_control_mode],
        s3_read=args.s3_read,
    )
    try:
        server.start()
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
        print(f"tritonserver {describe_exit(code)}", file=sys.stderr)
        return code or 1
    except PortInUseError as err:
        print(f"error: {err}", file=sys.stderr)  # one line, nothing was started
        return 2
    except TritonStartError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping Triton (draining: accepted requests are answered first)...", file=sys.stderr, flush=True)
        return 0
    finally:
        # A second Ctrl-C must not cut the (time-bounded) shutdown short and strand the server.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        server.stop()


if __name__ == "__main__":
    sys.exit(main())
