"""Triton's command line: :func:`triton_args` is the one function that builds its argument list.

``--config-name auto`` (resolved by :func:`resolve_config_name`) uses the production ``config.pbtxt`` files only
with the container's binary and a visible GPU, else the ``configs/cpu.pbtxt`` variants.
"""

from __future__ import annotations

from pathlib import Path

from common import contract
from serving.runtime import binary, door, security

#: Triton's own shutdown bound (--exit-timeout-secs): by the time it gets SIGTERM the door has drained, so
#: nothing is in flight any more; this is the time it has to unload its models.
EXIT_TIMEOUT = door.REQUEST_TIMEOUT_S
CONFIG_NAMES = ("auto", "cpu", "default")
#: Models Triton loads side by side at start (--model-load-thread-count; its default is 4). The repository has six
#: models with instances (the two ensembles load after them): with four threads the last two waited for a thread
#: while the first four's stubs were still importing (cold-start breakdown, docs/performance.md), so the start
#: ended with one model loading alone. All at once, the two cores are busy from the first second to the last.
MODEL_LOAD_THREADS = 8


#: What a cold start loads first: both paths a photo takes (the ensembles, with the models they step through). The
#: rest (`faces`, with a third face detector, and any other model in the folder) loads right after the first answer
#: (first_load.py, ``LaterLoads.load_the_rest``): fewer stubs starting at once on two cores. Loading the crop path
#: alone first was tried: its first answer came 0.4-1.0 s sooner, but a first detection 1.0 s later, as its
#: detector then started building only after the crop path was up (docs/performance-log.md, cold start, fourth part).
FIRST_MODELS = (contract.CROP_ENSEMBLE, contract.DETECT_ENSEMBLE)


#: `serving.runtime.launch --model-control-mode` maps to these tritonserver arguments.
CONTROL_ARGS = {
    "none": (),
    "explicit": ("--model-control-mode=explicit", "--load-model=*"),
    "poll": ("--model-control-mode=poll", "--repository-poll-secs=5"),
}


def loads_first(model_repository: str | Path, extra_args: tuple[str, ...]) -> bool:
    """Whether Triton starts with :data:`FIRST_MODELS` only: under Triton's default model control (the caller chose
    none), from a local folder that holds them. Anything else loads as the caller's control mode says."""
    if any(arg.startswith(("--model-control-mode", "--load-model")) for arg in extra_args):
        return False
    folder = Path(model_repository)
    return folder.is_dir() and all((folder / m / "config.pbtxt").is_file() for m in FIRST_MODELS)


def served_models(
    folder: str | Path | None, config_name: str | None, args: list[str] | tuple[str, ...]
) -> tuple[str, ...]:
    """The models a Triton started with ``args`` on the local repository ``folder`` serves, for the gate's readiness:
    the ones named by ``--load-model`` unless one is ``*``, else every model folder holding ``config.pbtxt`` or, with
    ``config_name`` (``--model-config-name``), ``configs/<config_name>.pbtxt``; none without a local folder."""
    if named := named_models(args):
        return named
    if folder is None:
        return ()
    configs = ["config.pbtxt", *([f"configs/{config_name}.pbtxt"] if config_name else [])]
    return tuple(sorted(p.name for p in Path(folder).iterdir() if any((p / c).is_file() for c in configs)))


def named_models(args: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """The models ``--load-model`` names in Triton's arguments; none when there is none or one is ``*`` (all)."""
    named = {value for given, value in _flags(args) if given == "--load-model"}
    return () if "*" in named else tuple(sorted(named))


#: The Python backend's own prefix for its /dev/shm regions; each server names a prefix of its own that starts with it
#: (``--backend-config=python,shm-region-prefix-name=PREFIX``: :data:`SHM_PREFIX_SETTING`), so that it can find and
#: remove its own regions.
SHM_PREFIX = "triton_python_backend_shm_region_"
SHM_PREFIX_SETTING = "python,shm-region-prefix-name"


def shm_prefix(args: list[str] | tuple[str, ...]) -> str | None:
    """The region prefix Triton's arguments give the Python backend (the last, as with any flag), or None."""
    named = [
        value.split("=", 1)[1]
        for given, value in _flags(args)
        if given == "--backend-config" and value.startswith(f"{SHM_PREFIX_SETTING}=")
    ]
    return next((prefix for prefix in reversed(named) if prefix), None)


def flag(args: list[str] | tuple[str, ...], name: str) -> str | None:
    """The last value of ``--name=value`` or ``--name value`` in Triton's arguments (its last one wins)."""
    values = [value for given, value in _flags(args) if given == f"--{name}"]
    return values[-1] if values else None


def _flags(args: list[str] | tuple[str, ...]) -> list[tuple[str, str]]:
    """``(--flag, value)`` for each ``--flag=value`` or ``--flag value`` in ``args``."""
    found = []
    for i, arg in enumerate(args):
        if arg.startswith("--") and "=" in arg:
            found.append(tuple(arg.split("=", 1)))
        elif arg.startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--"):
            found.append((arg, args[i + 1]))
    return found


def first_args() -> tuple[str, ...]:
    """Triton's arguments for :func:`loads_first`: explicit control, loading the ensembles (Triton loads the models
    an ensemble steps through with it); the launcher loads the rest through the repository API."""
    return (CONTROL_ARGS["explicit"][0], *(f"--load-model={m}" for m in FIRST_MODELS))


def resolve_config_name(config_name: str) -> str:
    if config_name not in CONFIG_NAMES:
        raise ValueError(f"config_name must be auto, cpu or default, got {config_name!r}")
    if config_name == "auto":
        # The production configs need a GPU and the TensorFlow backend, which only the NVIDIA image's
        # tritonserver has; the pip wheel's binary is Python-backend only, GPU or not.
        return "default" if binary.gpu_visible() and binary.container_binary() else "cpu"
    return config_name


def triton_args(
    *,
    model_repository: str | Path,
    backend_directory: Path | None,
    inner_host: str,
    http_port: int,
    grpc_port: int,
    metrics_host: str,
    metrics_port: int,
    config_name: str,
    shm_prefix: str,
    admin_key: str,
    internal_key: str | None = None,
    reuse_ports: bool = False,
    extra_args: tuple[str, ...] = (),
) -> list[str]:
    """Every ``tritonserver`` argument (not the binary). ``inner_host``: where Triton's HTTP and gRPC listen
    (loopback behind the door); metrics (read-only) are served directly on ``metrics_host``. ``reuse_ports``: bind
    the HTTP and gRPC ports with SO_REUSEPORT, beside the launcher's :class:`serving.runtime.ports.Held` sockets."""
    args = [f"--model-repository={model_repository}"]
    if backend_directory is not None:
        args.append(f"--backend-directory={backend_directory}")
    args += [f"--http-address={inner_host}", f"--http-port={http_port}"]
    args += [f"--grpc-address={inner_host}", f"--grpc-port={grpc_port}"]
    if reuse_ports:
        args += ["--reuse-http-port=true", "--reuse-grpc-port=true"]
    args += [f"--metrics-address={metrics_host}", f"--metrics-port={metrics_port}"]
    if config_name != "default":
        args.append(f"--model-config-name={config_name}")
    args += [
        f"--exit-timeout-secs={EXIT_TIMEOUT}",
        f"--model-load-thread-count={MODEL_LOAD_THREADS}",
        # Every config is complete; without this the Python backend starts one extra stub process per
        # model just to ask it to complete its config, which doubles the stubs started at cold start.
        "--disable-auto-complete-config",
        f"--backend-config={SHM_PREFIX_SETTING}={shm_prefix}",
        *security.restricted_args(admin_key, internal_key),
    ]
    return [*args, *extra_args]
