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

In a Kubernetes manifest, write the arguments with the secret from the environment, e.g.
``--http-restricted-api=shared-memory,model-repository,statistics,trace,logging:admin-key=$(TRITON_ADMIN_KEY)``
(see :func:`restricted_args` with ``secret="$(TRITON_ADMIN_KEY)"``).
"""

from __future__ import annotations

import hashlib
import os
import secrets

#: Environment variable holding the admin secret.
ADMIN_KEY_ENV = "TRITON_ADMIN_KEY"
#: HTTP header the secret is presented under (the key given to Triton's flags).
ADMIN_HEADER = "admin-key"
#: gRPC metadata key for the same secret: Triton prefixes the flag's key with ``triton-grpc-protocol-``.
GRPC_ADMIN_METADATA = "triton-grpc-protocol-" + ADMIN_HEADER
#: Triton API groups refused without the secret (the same names for HTTP APIs and gRPC protocols).
RESTRICTED_APIS = ("shared-memory", "model-repository", "statistics", "trace", "logging")
#: Groups every caller may use.
OPEN_APIS = ("health", "metadata", "inference", "model-config")


def admin_key(environ: dict[str, str] | None = None) -> tuple[str, bool]:
    """Returns ``(secret, generated)``: ``$TRITON_ADMIN_KEY``, else a fresh random one for this start."""
    value = (os.environ if environ is None else environ).get(ADMIN_KEY_ENV, "").strip()
    if value:
        if any(c in value for c in ",:= \t"):
            raise ValueError(f"{ADMIN_KEY_ENV} must not contain ',', ':', '=' or whitespace (Triton's flag syntax)")
        return value, False
    return secrets.token_urlsafe(32), True


def fingerprint(secret: str) -> str:
    """A short, non-reversible tag of the secret, safe to print in logs (never print the secret itself)."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:8]


def restricted_args(secret: str) -> list[str]:
    """The ``tritonserver`` arguments that close :data:`RESTRICTED_APIS` on HTTP and gRPC behind ``secret``."""
    groups = ",".join(RESTRICTED_APIS)
    return [
        f"--http-restricted-api={groups}:{ADMIN_HEADER}={secret}",
        f"--grpc-restricted-protocol={groups}:{ADMIN_HEADER}={secret}",
    ]
