"""A KServe pod's entry point: Triton and the gate in one container, with only the gate on the public ports.

    python -m serving.runtime.edge --http 0.0.0.0:8080 --grpc 0.0.0.0:9000 \\
        --triton-http 127.0.0.1:8085 --triton-grpc 127.0.0.1:9005 --triton-preload /opt/agegender/lib/argv_secret.so \\
        -- tritonserver --model-repository=/mnt/models --http-address=127.0.0.1 --http-port=8085 \\
           --grpc-address=127.0.0.1 --grpc-port=9005 ...

Locally the launcher puts nginx and the gate in front of Triton (serving/runtime/launch.py). A KServe pod has no nginx
(Knative's queue-proxy bounds concurrency and time), but it needs the gate as much: Triton 25.02 still truncates an
overflowing batch dimension and mixes callers' rows (docs/security.md, "Production"). Why one container and not a
sidecar: Knative routes one port of one container, and only that container gets its drain (a preStop hook that
waits for the queue-proxy). Triton in a container of its own would get SIGTERM while the queue-proxy still sends
requests, and fail them. Here both stop only after the drain, in order.

* **Triton listens on loopback only**: its ``--http-address`` / ``--grpc-address`` must be 127.0.0.1 and its ports
  the gate's upstream ones, or nothing starts (exit 2). Metrics (read-only) may stay on the pod's address.
* **Secrets**: ``TRITON_ADMIN_KEY`` comes from the environment (a Kubernetes Secret). Triton's arguments hold
  placeholders that argv_secret.so fills in (serving/runtime/argv_secret.c); the library is preloaded into Triton
  only (``--triton-preload``): in this process it would wipe the key before Python read it.
* **Stopping**: on SIGTERM (Knative sends it after the drain) the gate stops first, finishing what it holds
  (``GATE_STOP_S``), then Triton (its ``--exit-timeout-secs``, bounded by ``TRITON_STOP_S``).
* **A child that dies**: the gate is started again at once (about a second; Triton keeps its loaded models), up to
  ``GATE_RESTARTS`` times a minute. If Triton exits, or the gate keeps dying, the other is stopped and this process
  exits with the child's code: the kubelet restarts the container. So does a Python stub that dies under a model
  Triton still serves (serving/runtime/stubs.py): Triton is killed, since it would fail that model's every request
  while calling itself ready.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
import urllib.request
import uuid

from serving.runtime import children, command, security, stubs
from serving.runtime.gate_process import SERVED_MODELS_ENV, STOP_S, gate_command
from serving.runtime.reaper import SHM_DIR, remove_segments
from serving.runtime.subproc import stop_process

#: How long the gate has to finish the requests it holds (gate_process.STOP_S).
GATE_STOP_S = STOP_S
#: How long Triton has to unload after the gate stopped (the manifests give it --exit-timeout-secs=30).
TRITON_STOP_S = 40.0
LOOPBACK = "127.0.0.1"
#: Restarts of the gate allowed within a minute before the pod gives up (a gate that cannot start is not transient).
GATE_RESTARTS = 5


class EdgeError(ValueError):
    """The command would expose Triton or could not keep its secrets: nothing was started."""


def check_triton(triton: list[str], *, triton_http: str, triton_grpc: str, preload: str | None) -> None:
    """Raises :class:`EdgeError` unless Triton's HTTP and gRPC listen on loopback, where the gate expects them, and
    any secret placeholder in its arguments has the library that fills it in."""
    if not triton:
        raise EdgeError("give Triton's command after --")
    for protocol, upstream in (("http", triton_http), ("grpc", triton_grpc)):
        host, _, port = upstream.rpartition(":")
        address, given_port = command.flag(triton, f"{protocol}-address"), command.flag(triton, f"{protocol}-port")
        if address != LOOPBACK or host != LOOPBACK:
            raise EdgeError(
                f"Triton's {protocol.upper()} must listen on {LOOPBACK} only (--{protocol}-address={LOOPBACK}) and "
                f"the gate call it there; got --{protocol}-address={address} and --triton-{protocol} {upstream}"
            )
        if given_port != port:
            raise EdgeError(f"--{protocol}-port={given_port} is not the gate's --triton-{protocol} port {port}")
    if any("@" in arg for arg in triton) and not preload:
        raise EdgeError("Triton's arguments hold secret placeholders: give --triton-preload (argv_secret.so)")


def served_models(triton: list[str]) -> tuple[str, ...]:
    """The models the pod serves, for the gate's readiness (gate.GrpcGate.not_ready): those ``--load-model`` names,
    or every model in the local ``--model-repository`` (KServe's storage initializer fills /mnt/models before this
    container starts). Without them the gate would pass on Triton's own readiness, which stays "not ready" from the
    first version that fails to load (a rollout of a broken version) for as long as Triton runs, while the version
    before serves on: the readiness probe would take the pod out of routing for good, and its liveness probe, still
    passing, would never restart it. None for a repository that is not a local folder: Triton's own answer then."""
    repository = command.flag(triton, "model-repository")
    local = repository if repository and os.path.isdir(repository) else None
    return command.served_models(local, command.flag(triton, "model-config-name"), triton)


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    if "--" in argv:
        split = argv.index("--")
        argv, triton = argv[:split], argv[split + 1 :]
    else:
        triton = []
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--http", required=True, help="host:port of the gate's public HTTP side")
    p.add_argument("--grpc", required=True, help="host:port of the gate's public gRPC side")
    p.add_argument("--triton-http", required=True, help=f"{LOOPBACK}:port where Triton's HTTP listens")
    p.add_argument("--triton-grpc", required=True, help=f"{LOOPBACK}:port where Triton's gRPC listens")
    p.add_argument("--triton-preload", help="argv_secret.so, preloaded into Triton only")
    return p.parse_args(argv), triton


def main(argv: list[str] | None = None) -> int:
    args, triton = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        check_triton(triton, triton_http=args.triton_http, triton_grpc=args.triton_grpc, preload=args.triton_preload)
    except EdgeError as err:
        print(f"edge: {err}", file=sys.stderr)
        return 2
    try:  # the pod's Secret, which Triton and the gate get as it is: not a copied example's placeholder
        security.check_admin_key(os.environ.get(security.ADMIN_KEY_ENV, "").strip())
    except ValueError as err:
        print(f"edge: {err}", file=sys.stderr)
        return 2
    if args.triton_preload and not os.path.isfile(args.triton_preload):
        print(f"edge: --triton-preload {args.triton_preload} is not a file", file=sys.stderr)
        return 2
    triton = _with_shm_prefix(triton)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    triton_env = {**env, **({"LD_PRELOAD": args.triton_preload} if args.triton_preload else {})}
    gate_env = {k: v for k, v in env.items() if k not in (security.ARGV_SECRETS_ENV, security.PRELOAD_CHECK_ENV)}
    gate_env[SERVED_MODELS_ENV] = ",".join(served_models(triton))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    # Triton's stubs share its process group and its umask (077: their /dev/shm regions hold uploads).
    server = children.spawn(triton, env=triton_env, private=True, capture=False)
    gate_cmd = gate_command(
        grpc=args.grpc, http=args.http, triton_grpc=args.triton_grpc, triton_http=args.triton_http, edge=True
    )
    gate = children.spawn(gate_cmd, env=gate_env, capture=False)

    def stub_died(message: str) -> None:  # the kubelet restarts the container, as after Triton's own exit
        print(f"edge: {message}; stopping Triton", file=sys.stderr, flush=True)
        children.kill_group(server.pid)

    stubs.StubWatch(server.pid, served=_version_ready(args.triton_http), on_dead=stub_died, stopping=stop).start()
    restarts: list[float] = []
    code = 0
    while not stop.wait(0.2):
        if server.poll() is not None:
            code = _gone("Triton", server.returncode)
            break
        if gate.poll() is not None:
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < 60] + [now]
            if len(restarts) > GATE_RESTARTS:
                code = _gone(f"the gate, for the {len(restarts)}th time in a minute,", gate.returncode)
                break
            print(f"edge: the gate {children.describe_exit(gate.returncode)}; starting it again", file=sys.stderr)
            gate = children.spawn(gate_cmd, env=gate_env, capture=False)
    stop_process(gate, timeout=GATE_STOP_S)
    stop_process(server, timeout=TRITON_STOP_S)
    children.kill_group(server.pid)  # stubs a killed Triton left behind
    # And their shared-memory regions: a /dev/shm that outlives the container (a memory-backed volume) kept 1 MiB per
    # stub of every Triton killed (a dead stub's restart, a crash).
    remove_segments(SHM_DIR, command.shm_prefix(triton))
    return code


def _with_shm_prefix(triton: list[str]) -> list[str]:
    """Triton's arguments with a prefix for its regions of this pod's own, unless they name one (the ServingRuntime's
    do not). The regions removed when Triton ends are the ones of this prefix: the backend's default prefix is every
    Triton's on the machine, and removing by it (a pod whose /dev/shm is not its own, a test beside other servers) took
    other servers' regions."""
    if command.shm_prefix(triton) is not None:
        return triton
    return [*triton, f"--backend-config={command.SHM_PREFIX_SETTING}={command.SHM_PREFIX}pod{uuid.uuid4().hex[:8]}_"]


def _version_ready(triton_http: str):
    """Whether Triton at ``triton_http`` calls a model version ready (health: no key needed)."""

    def ready(model: str, version: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://{triton_http}{stubs.ready_path(model, version)}", timeout=2) as answer:
                return answer.status == 200
        except OSError:  # urllib's HTTPError (not ready) included
            return False

    return ready


def _gone(name: str, returncode: int) -> int:
    print(f"edge: {name} {children.describe_exit(returncode)}; stopping", file=sys.stderr, flush=True)
    return returncode if returncode > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
