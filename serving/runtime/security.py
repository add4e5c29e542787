"""Who may call what on Triton: the admin secret and the restricted API groups, defined once.

Every way this project starts Triton (``serving.runtime.launch``, ``docker-compose.yml``, the KServe manifests)
passes exactly :func:`restricted_args`. Triton 2.51 / 25.02 know these API groups (``tritonserver --help``):
health, metadata, inference, shared-memory, model-config, model-repository, statistics, trace, logging.

Open: health, metadata, inference, model-config (the client reads ``max_batch_size`` from it) and the
metrics port (read-only Prometheus counters). Restricted to callers presenting the secret, as HTTP header
``admin-key: <secret>`` or gRPC metadata ``triton-grpc-protocol-admin-key: <secret>``: the groups in
:data:`RESTRICTED_APIS`:

* ``shared-memory``: registering a region makes Triton read inputs from and write outputs into any
  ``/dev/shm`` key it can open (system and CUDA shared memory share the group);
* ``model-repository``: loading, unloading and rewriting models (arbitrary Python code via the Python backend);
* ``logging``, ``trace``: reconfiguring the server's log and trace files and verbosity;
* ``statistics``: per-model request counts and timings of every caller.

In a Kubernetes manifest, write the arguments with a placeholder, never ``$(TRITON_ADMIN_KEY)`` (the kubelet would
expand it into the process's command line): ``...:admin-key=@TRITON_ADMIN_KEY@``, with ``argv_secret.so``
preloaded into Triton to put the key from the environment in its place (deploy/kserve/base/servingruntime.yaml).

Locally (docs/security.md "Secrets and ports") no secret is ever on a command line: :func:`hide_in_env` puts the
values and the preload into Triton's environment and gives the placeholders that :func:`restricted_args` then writes
in the arguments, and ``argv_secret.so`` (serving/runtime/argv_secret.c, built by ``make setup``), preloaded into
tritonserver, swaps in the values from the environment before its ``main`` runs. Behind the front door, Triton's own
loopback ports also refuse :data:`INTERNAL_APIS` (inference and model config) without a second, internal key that
only the forwarders (nginx and the gate) present, so another local user cannot skip the door's limits.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import sys
from pathlib import Path

#: Environment variable holding the admin secret.
ADMIN_KEY_ENV = "TRITON_ADMIN_KEY"
#: HTTP header the secret is presented under (the key given to Triton's flags).
ADMIN_HEADER = "admin-key"
#: gRPC metadata key for the same secret: Triton prefixes the flag's key with ``triton-grpc-protocol-``.
GRPC_ADMIN_METADATA = "triton-grpc-protocol-" + ADMIN_HEADER
#: Triton API groups refused without the secret (the same names for HTTP APIs and gRPC protocols).
RESTRICTED_APIS = ("shared-memory", "model-repository", "statistics", "trace", "logging")
# Every other group (health, metadata, inference, model-config) is open to every caller; behind the front door,
# the :data:`INTERNAL_APIS` of them only through the door.

#: The internal key: Triton's own ports refuse these groups without it; the front door adds it to every request
#: it forwards. Random per launcher process unless :data:`INTERNAL_KEY_ENV` is set (a separately started gate).
INTERNAL_APIS = ("inference", "model-config")
INTERNAL_KEY_ENV = "TRITON_INTERNAL_KEY"
INTERNAL_HEADER = "internal-key"
GRPC_INTERNAL_METADATA = "triton-grpc-protocol-" + INTERNAL_HEADER
_internal_key: str | None = None

#: The preload library that swaps placeholders for secrets in tritonserver's argv (``make setup`` builds it).
ARGV_SECRET_LIB = Path(sys.prefix) / "lib" / "argv_secret.so"
#: Environment variable naming (comma-separated) the variables whose ``@NAME@`` placeholders the library replaces.
ARGV_SECRETS_ENV = "ARGV_SECRETS"
#: Fail closed: the program gets one more argument, this variable's placeholder on its own, which the library turns
#: into a flag tritonserver already defaults to. Were the library not loaded, Triton would stop at the stray argument
#: ("Unexpected argument") instead of running with a placeholder, known from this source, as its admin key. Being
#: Triton's last argument it wins over an earlier --exit-on-error: a start that wants the other value asks
#: :func:`hide_in_env` for it.
PRELOAD_CHECK_ENV = "ARGV_SECRET_CHECK"
PRELOAD_CHECK_VALUE = "--exit-on-error=true"


#: Shortest admin key accepted, as for the internal key: ``secrets.token_urlsafe(12)`` is 16 characters (96 bits).
ADMIN_KEY_MIN_CHARS = 16
#: How the example manifests (deploy/kserve/secrets/*.example.yaml) mark a value to replace: such a key is public.
PLACEHOLDER_PREFIX = "REPLACE_WITH_"
#: What every refusal of a chosen key tells the operator to do instead.
MAKE_A_KEY = 'make one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'


def admin_key(environ: dict[str, str] | None = None) -> tuple[str, bool]:
    """Returns ``(secret, generated)``: ``$TRITON_ADMIN_KEY``, else a fresh random one for this start.

    Raises:
        ValueError: the key is one Triton's flags cannot carry, or one a caller could guess (:func:`check_admin_key`).
    """
    value = (os.environ if environ is None else environ).get(ADMIN_KEY_ENV, "").strip()
    if value:
        check_admin_key(value)
        return value, False
    return secrets.token_urlsafe(32), True


def check_admin_key(value: str) -> None:
    """Raises ValueError naming what is wrong with ``value`` as the admin key, never the value itself (logs)."""
    if any(c in value for c in ",:= \t"):
        raise ValueError(f"{ADMIN_KEY_ENV} must not contain ',', ':', '=' or whitespace (Triton's flag syntax)")
    # The admin key lets its holder load models, which run arbitrary Python: 'a' or an example's placeholder, left
    # in a copied Secret, would be the first guesses.
    if value.upper().startswith(PLACEHOLDER_PREFIX):
        raise ValueError(
            f"{ADMIN_KEY_ENV} must be a random secret, not a {PLACEHOLDER_PREFIX}... placeholder; {MAKE_A_KEY}"
        )
    if len(value) < ADMIN_KEY_MIN_CHARS:
        raise ValueError(f"{ADMIN_KEY_ENV} must be at least {ADMIN_KEY_MIN_CHARS} characters; {MAKE_A_KEY}")


def fingerprint(secret: str) -> str:
    """A short, non-reversible tag of the secret, safe to print in logs (never print the secret itself)."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:8]


def internal_key(environ: dict[str, str] | None = None) -> str:
    """``$TRITON_INTERNAL_KEY``, else one random key for this process (the door and Triton it starts share it)."""
    global _internal_key
    value = (os.environ if environ is None else environ).get(INTERNAL_KEY_ENV, "").strip()
    if value:
        # It is written into nginx.conf and Triton's flag syntax: URL-safe characters only.
        if not re.fullmatch(r"[A-Za-z0-9._~-]{16,}", value):
            raise ValueError(f"{INTERNAL_KEY_ENV} must be at least 16 of A-Z a-z 0-9 . _ ~ -")
        return value
    if _internal_key is None:
        _internal_key = secrets.token_urlsafe(32)
    return _internal_key


def restricted_args(secret: str, internal: str | None = None) -> list[str]:
    """The ``tritonserver`` arguments that close :data:`RESTRICTED_APIS` on HTTP and gRPC behind ``secret``,
    and with ``internal`` also :data:`INTERNAL_APIS` behind that key (Triton takes one flag per key)."""
    pairs = [(RESTRICTED_APIS, ADMIN_HEADER, secret)]
    if internal is not None:
        pairs.append((INTERNAL_APIS, INTERNAL_HEADER, internal))
    args = []
    for groups, header, value in pairs:
        args += [
            f"--http-restricted-api={','.join(groups)}:{header}={value}",
            f"--grpc-restricted-protocol={','.join(groups)}:{header}={value}",
        ]
    return args


def placeholder(env_name: str) -> str:
    """What stands on the command line for the value of ``env_name`` (argv_secret.c replaces it)."""
    return f"@{env_name}@"


def hide_in_env(env: dict[str, str], values: dict[str, str], *, exit_on_error: bool = True) -> dict[str, str]:
    """Moves secrets off the command line: puts ``values`` (env name -> secret) and the preload into ``env`` (the
    child's environment, readable by its owner only) and returns env name -> placeholder to write in the arguments
    instead, and under :data:`PRELOAD_CHECK_ENV` the argument to append (see there), which sets Triton's
    --exit-on-error to ``exit_on_error``. Only for a real ELF binary started directly (a wrapper script would exec
    with the values in argv)."""
    if not ARGV_SECRET_LIB.is_file():
        raise FileNotFoundError(
            f"{ARGV_SECRET_LIB} is missing: it keeps the admin key off Triton's command line. "
            "Run `make setup` (it compiles serving/runtime/argv_secret.c with gcc)."
        )
    check = PRELOAD_CHECK_VALUE if exit_on_error else "--exit-on-error=false"
    values = {**values, PRELOAD_CHECK_ENV: check}
    env.update(values)
    env[ARGV_SECRETS_ENV] = ",".join(values)
    env["LD_PRELOAD"] = " ".join(filter(None, [str(ARGV_SECRET_LIB), env.get("LD_PRELOAD")]))
    return {name: placeholder(name) for name in values}


#: The environment variables that may hold our keys: children that need neither (nginx, the reaper) start without them.
KEY_ENVS = (ADMIN_KEY_ENV, INTERNAL_KEY_ENV)


def without_keys(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this process's) less :data:`KEY_ENVS`: what a child that holds no key inherits."""
    return {k: v for k, v in (os.environ if env is None else env).items() if k not in KEY_ENVS}


def internal_headers(key: str) -> dict[str, str]:
    """What a forwarder (the door, or the gate) adds to every call to Triton: the HTTP header and the gRPC metadata
    (each side ignores the other's name)."""
    return {INTERNAL_HEADER: key, GRPC_INTERNAL_METADATA: key}
