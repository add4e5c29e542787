"""The web UI's settings from the environment: Triton's address and protocol, and how long to wait for it.

Read once, when this module is imported; gradio-free, so ``python -m gradio_frontend --help`` and the checks of a
setting answer before gradio is imported.
"""

from __future__ import annotations

import os

from client.utils import default_url

DEFAULT_PROTOCOL = os.environ.get("TRITON_PROTOCOL", "grpc")
# As the client and the CLI choose it: $TRITON_URL, else localhost on $TRITON_GRPC_PORT / $TRITON_HTTP_PORT. None
# where such a port is not a number: build_app and the command line then say which variable, not this import.
try:
    DEFAULT_TRITON_URL: str | None = default_url("http" if DEFAULT_PROTOCOL == "http" else "grpc")
except ValueError:
    DEFAULT_TRITON_URL = None


# Short: a user waiting on a spinner for a dead server is worse than a clear message now.
def _seconds(name: str, default: str) -> float:
    """A number of seconds from the environment; a value that is not one stops the start with one line."""
    value = os.environ.get(name, default)
    try:
        return float(value)
    except ValueError:
        raise SystemExit(f"error: {name}={value!r} is not a number of seconds") from None


DEFAULT_TIMEOUT_S = _seconds("TRITON_TIMEOUT", "15")

HEALTH_POLL_S = _seconds("GRADIO_HEALTH_POLL", "15")
